"""Train state and the trainable/frozen split of parameters.

Parameters live as a plain nested dict (``nnx.to_pure_dict``), so that the
state is an ordinary pytree for jit, sharding and orbax; the model's graph
definition is kept aside and merged back inside the jit'd functions.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Batches consumed (skipped non-finite steps included).
  params: Params  # Every parameter, trainable and frozen.
  opt_state: Any  # Optimizer state of the trainable parameters only.
  rng: jax.Array  # Raw PRNG key; split every step and handed to the objective.
  skipped_steps: jax.Array  # Non-finite updates skipped so far.
  consecutive_skips: jax.Array  # Non-finite updates in a row (reset by a good one).
  # The objective's frozen extra state (e.g. a DPO reference), sharded like the parameters; no optimizer state.
  extra: Any = None


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


def keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
  """Selects ``new`` where ``ok`` else ``old``, leaf by leaf (the NaN guard)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
