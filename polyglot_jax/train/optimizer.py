"""The optimizer: AdamW with warmup + schedule, clipping and the weight-decay mask.

Optional extras, all off by default (the default optimizer is the plain
clip + AdamW chain): sparing the embedding table and LM head from weight
decay, float32 first moments, and a float32 master copy of low-precision
parameters kept in the optimizer state.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from polyglot_jax.errors import ConfigError
from polyglot_jax.train.state import Params, path_names

# Top-level parameter names of the token table and the untied output head.
EMBEDDING_NAMES = ("embedding", "lm_head")


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


def decay_mask(params: Params, decay_embeddings: bool = True) -> Params:
  """Which parameters get weight decay: matrices only, norm scales and biases never.

  Args:
    params: the (trainable) parameter tree, a nested dict.
    decay_embeddings: whether the embedding table and the untied LM head
      (top-level ``embedding`` / ``lm_head``) are decayed too.

  Returns:
    A tree of bools shaped like ``params``; True where weight decay applies.
  """
  def decayed(path, _):
    names = path_names(path)
    if any(n == "scale" or n.endswith("bias") for n in names):
      return False
    return decay_embeddings or not names or names[0] not in EMBEDDING_NAMES
  return jax.tree_util.tree_map_with_path(decayed, params)


def _dtype_option(opt: ConfigDict, key: str, allowed: tuple[str, ...] | None = None) -> jnp.dtype | None:
  """Parses a dtype-name option of ``config.optimizer``; None when empty."""
  name = opt.get(key, "") or ""
  if not name:
    return None
  try:
    dtype = jnp.dtype(name)
  except TypeError:
    dtype = None
  ok = dtype is not None and jnp.issubdtype(dtype, jnp.floating)
  if ok and allowed is not None:
    ok = dtype.name in allowed
  if not ok:
    use = " or ".join(allowed) if allowed else "a float dtype such as float32 or bfloat16"
    raise ConfigError(f"config.optimizer.{key}='{name}'; use '' or {use}")
  return dtype


class MasterWeightsState(NamedTuple):
  """The master copy (params-shaped, so optax.tree_map_params maps it) and the inner state."""
  master: Params
  inner_state: Any


def with_master_weights(inner: optax.GradientTransformation,
                        dtype: Any = jnp.float32) -> optax.GradientTransformation:
  """Runs ``inner`` against a higher-precision master copy of the parameters.

  The master copy lives in the optimizer state. Each update casts the
  gradients to ``dtype``, runs ``inner`` against the master copy, adds its
  update to the master copy in ``dtype``, and hands back (in ``dtype``) the
  difference between the master rounded to each parameter's dtype and the
  parameter, so that ``optax.apply_updates(params, updates)`` gives the
  rounded master. Small updates that would be lost to bf16 rounding thus
  accumulate in the master copy instead.

  That hand-back is exact (``apply_updates`` gives exactly
  ``master.astype(param dtype)``) whenever the old and new bf16 values are
  within a factor of about 2^15 of each other (or either is zero), which is
  every normal step. A parameter that shrinks by more than that in one step
  (e.g. lands almost exactly on zero) gets, in the float32 sum inside
  ``apply_updates``, an absolute error of at most about one float32 ulp of
  its old value; the master copy itself is unaffected and the next step
  re-derives the parameter from it. Leaves already stored in ``dtype`` get
  ``inner``'s update unchanged, so they stay bit-identical to their master.

  Args:
    inner: the transformation to run against the master copy (its state is
      initialised from the master copy, so moments default to ``dtype``).
    dtype: the master dtype.

  Returns:
    An optax.GradientTransformation whose update requires ``params``.
  """
  cast = lambda tree: jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)

  def init_fn(params):
    master = cast(params)
    return MasterWeightsState(master=master, inner_state=inner.init(master))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("with_master_weights needs params in update()")
    inner_updates, inner_state = inner.update(cast(updates), state.inner_state, state.master)
    master = optax.apply_updates(state.master, inner_updates)

    def hand_back(p, m, u):
      if p.dtype == m.dtype:
        return u
      # Both terms are values of p.dtype, so their float32 difference is exact
      # unless their magnitudes are ~2^15 apart (see the docstring).
      return m.astype(p.dtype).astype(dtype) - p.astype(dtype)

    out = jax.tree.map(hand_back, params, master, inner_updates)
    return out, MasterWeightsState(master=master, inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(opt: ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup + schedule and global-norm clipping.

  The gradient norm is clipped here; the trainer reports the norm before
  clipping. With the default config this is exactly clip + AdamW on the
  parameters; ``decay_embeddings``, ``mu_dtype`` and ``master_dtype`` (see
  configs.py) change the mask, the first-moment dtype and add a master copy.

  Args:
    opt: ``config.optimizer``.
    total_steps: the training length in optimizer steps (for the schedule).

  Returns:
    The optax.GradientTransformation; its update needs the parameters.

  Raises:
    ConfigError: ``mu_dtype`` or ``master_dtype`` names no usable dtype.
  """
  mu_dtype = _dtype_option(opt, "mu_dtype")
  master_dtype = _dtype_option(opt, "master_dtype", allowed=("float32",))
  schedule = learning_rate_schedule(opt, total_steps)
  # The plain function when embeddings are decayed keeps the default chain
  # exactly what it was before the option existed.
  mask = decay_mask if opt.get("decay_embeddings", True) else functools.partial(decay_mask, decay_embeddings=False)
  parts = []
  if opt.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.clip_norm))
  parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=mask, mu_dtype=mu_dtype))
  chain = optax.chain(*parts)
  if master_dtype is not None:
    chain = with_master_weights(chain, master_dtype)
  return chain
