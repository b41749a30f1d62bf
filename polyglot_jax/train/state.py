"""Train state, optimizer and the trainable/frozen split of parameters.

Parameters live as a plain nested dict (``nnx.to_pure_dict``), so that the
state is an ordinary pytree for jit, sharding and orbax; the model's graph
definition is kept aside and merged back inside the jit'd functions.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Batches consumed (skipped non-finite steps included).
  params: Params  # Every parameter, trainable and frozen.
  opt_state: Any  # Optimizer state of the trainable parameters only.
  rng: jax.Array  # Raw PRNG key; split every step and handed to the objective.
  skipped_steps: jax.Array  # Non-finite updates skipped so far.
  consecutive_skips: jax.Array  # Non-finite updates in a row (reset by a good one).


def path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def split_params(params: Params, trainable: Callable[[tuple[str, ...]], bool]) -> tuple[Params, Params]:
  """Partitions a nested dict into (trainable, frozen) nested dicts."""
  train: Params = {}
  frozen: Params = {}
  for key, value in params.items():
    if isinstance(value, dict):
      t, f = split_params(value, lambda p, key=key: trainable((key,) + p))
      if t:
        train[key] = t
      if f:
        frozen[key] = f
    elif trainable((key,)):
      train[key] = value
    else:
      frozen[key] = value
  return train, frozen


def join_params(a: Params, b: Params) -> Params:
  """Deep union of two disjoint nested dicts."""
  out = dict(a)
  for key, value in b.items():
    if key in out:
      out[key] = join_params(out[key], value)
    else:
      out[key] = value
  return out


def learning_rate_schedule(opt: ConfigDict, total_steps: int) -> optax.Schedule:
  peak, warmup = opt.learning_rate, min(opt.warmup_steps, max(total_steps - 1, 0))
  end = peak * opt.end_lr_ratio
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end)
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if opt.schedule == "linear":
    after = optax.linear_schedule(peak, end, max(total_steps - warmup, 1))
  else:
    after = optax.constant_schedule(peak)
  return optax.join_schedules([warm, after], [warmup])


def decay_mask(params: Params) -> Params:
  """Weight decay on matrices only: norm scales and biases are not decayed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: not any(n in ("scale",) or n.endswith("bias") for n in path_names(path)), params)


def make_optimizer(opt: ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup + schedule and global-norm clipping.

  The gradient norm is clipped here; the trainer reports the norm before
  clipping.
  """
  schedule = learning_rate_schedule(opt, total_steps)
  parts = []
  if opt.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.clip_norm))
  parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=decay_mask))
  return optax.chain(*parts)


def keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
  """Selects ``new`` where ``ok`` else ``old``, leaf by leaf (the NaN guard)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
