"""Causal language modelling: next-token cross-entropy (+ optional z-loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polyglot_jax.objectives.base import Objective, per_language_sums, register


def token_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array):
  """Per-token cross-entropy and log-partition, both float32 [B, L]."""
  logits = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return log_z_BxL - target_logit_BxL, log_z_BxL


@register("lm")
class LanguageModelling(Objective):
  batch_fields = ("inputs", "targets", "loss_weights", "segment_ids", "positions", "lang_ids")

  def loss_sums(self, model, batch, rng):
    del rng  # Deterministic.
    logits = model(batch["inputs"], batch["segment_ids"], batch["positions"])
    ce_BxL, log_z_BxL = token_cross_entropy(logits, batch["targets"])
    weights_BxL = batch["loss_weights"].astype(jnp.float32)
    ce_sum = jnp.sum(ce_BxL * weights_BxL)
    z_sum = jnp.sum(jnp.square(log_z_BxL) * weights_BxL)
    loss_sum = ce_sum + self.config.optimizer.z_loss * z_sum
    lang_loss, lang_weight = per_language_sums(ce_BxL, weights_BxL, batch["lang_ids"], self.num_languages)
    metrics = {"ce_sum": ce_sum, "z_sum": z_sum, "lang_loss_sum": lang_loss, "lang_weight": lang_weight}
    return loss_sum, jnp.sum(weights_BxL), metrics
