"""Causal language modelling: next-token cross-entropy (+ optional z-loss).

Metrics (names other code reads): ``loss`` (token-weighted cross-entropy),
``z_loss`` (mean log(Z)^2), ``tokens`` (weighted target tokens),
``loss/<lang>`` and, on held-out data, ``ppl/<lang>``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polyglot_jax.objectives.base import TEXT_FIELDS, FieldSpec, Metric, Objective, per_language_sums, register


def token_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array):
  """Per-token cross-entropy and log-partition, both float32 [B, L]."""
  logits = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return log_z_BxL - target_logit_BxL, log_z_BxL


def lm_sums(logits_BxLxV, batch, num_languages: int, z_loss: float):
  """LM loss sum, its token normaliser and the LM metric outputs of one text batch."""
  ce_BxL, log_z_BxL = token_cross_entropy(logits_BxLxV, batch["targets"])
  weights_BxL = batch["loss_weights"].astype(jnp.float32)
  ce_sum = jnp.sum(ce_BxL * weights_BxL)
  z_sum = jnp.sum(jnp.square(log_z_BxL) * weights_BxL)
  loss_sum = ce_sum + z_loss * z_sum
  lang_loss, lang_weight = per_language_sums(ce_BxL, weights_BxL, batch["lang_ids"], num_languages)
  outputs = {"ce_sum": ce_sum, "z_sum": z_sum, "lang_loss_sum": lang_loss, "lang_weight": lang_weight}
  return loss_sum, jnp.sum(weights_BxL), outputs


LM_METRICS = {
    "loss": Metric("ce_sum", "weight"),
    "z_loss": Metric("z_sum", "weight"),
    "tokens": Metric("weight"),
    "loss/{lang}": Metric("lang_loss_sum", "lang_weight", per_language=True, exp_name="ppl/{lang}"),
}


@register("lm")
class LanguageModelling(Objective):
  data_kind = "text"
  metrics = LM_METRICS
  summary_metric = "loss/{lang}"

  def batch_spec(self):
    return {k: FieldSpec((self.config.data.seq_len,)) for k in TEXT_FIELDS}

  def loss_sums(self, model, batch, ctx):
    del ctx  # Deterministic, no schedule.
    logits = model(batch["inputs"], batch["segment_ids"], batch["positions"])
    loss_sum, weight, outputs = lm_sums(logits, batch, self.num_languages, self.config.optimizer.z_loss)
    outputs["weight"] = weight
    return loss_sum, weight, outputs
