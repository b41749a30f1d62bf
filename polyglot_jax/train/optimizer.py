"""The optimizer: AdamW with warmup + schedule, clipping and the weight-decay mask."""

from __future__ import annotations

import jax
import optax
from ml_collections import ConfigDict

from polyglot_jax.train.state import Params, path_names


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
