"""Causal language modelling: next-token cross-entropy (+ optional z-loss, + MoE router losses).

The loss runs over token chunks without the full float32 logits when
``config.model.ce_chunk_size`` says so (``decoder_outputs``, models/chunked_ce.py).

Metrics (names other code reads): ``loss`` (token-weighted cross-entropy),
``z_loss`` (mean log(Z)^2), ``tokens`` (weighted target tokens),
``loss/<lang>`` and, on held-out data, ``ppl/<lang>``. A model with MoE
layers (``config.model.num_experts > 0``) also trains on the router losses
and reports ``moe/balance_loss``, ``moe/z_loss``,
``moe/expert_load/layer_<i>/expert_<j>`` and, in capacity dispatch,
``moe/dropped_fraction`` (see ``moe_sums``; docs/moe.md).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.models import chunked_ce
from polyglot_jax.models import moe as moe_lib
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.objectives.base import TEXT_FIELDS, FieldSpec, Metric, Objective, per_language_sums, register

# The decoder outputs an MoE model's LM loss reads (models/decoder.py AUX_OUTPUTS).
MOE_AUX = ("router_logits", "expert_load", "dropped_fraction")


def token_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array):
  """Per-token cross-entropy and log-partition, both float32 [B, L]."""
  logits = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return log_z_BxL - target_logit_BxL, log_z_BxL


class HeadInputs(NamedTuple):
  """What the chunked cross-entropy reads in place of the logits (models/chunked_ce.py)."""
  hidden_BxLxE: jax.Array  # Final-norm hidden states.
  head_ExV: jax.Array  # The output head in the compute dtype (Decoder.head()).
  chunk_size: int  # Tokens per chunk (> 0).


def chunk_size_for(model, tokens: int) -> int:
  """The chunk size the chunked cross-entropy uses for ``tokens`` tokens on this model, 0 for the plain path.

  Auto mode sizes chunks by one device's share: the tokens are split over the
  mesh axes of the logical "batch" axis (``mesh.logical_axis_size``), and the
  bound per chunk is the platform's (``chunked_ce.max_chunk_bytes``).
  """
  from polyglot_jax.models.attention import attention_platform
  cfg = model.cfg
  return chunked_ce.resolve_chunk_size(tokens, cfg.vocab_size, cfg.ce_chunk_size, cfg.ce_chunk_threshold_bytes,
                                       shards=mesh_lib.logical_axis_size("batch"),
                                       max_bytes=chunked_ce.max_chunk_bytes(attention_platform()))


def decoder_outputs(model, inputs_BxL, segment_ids_BxL, positions_BxL, return_aux: tuple[str, ...] = ()):
  """The decoder's outputs for a token loss, with or without the full logits.

  Args:
    model: the Decoder.
    inputs_BxL, segment_ids_BxL, positions_BxL: as ``Decoder.__call__`` takes them.
    return_aux: names from ``decoder.AUX_OUTPUTS``; empty: none.

  Returns:
    (out, aux): ``out`` is ``HeadInputs`` (hidden states and head, no logits) when
    ``config.model.ce_chunk_size`` chunks this micro-batch (``chunk_size_for``), else the
    float32 logits; ``token_losses`` and ``lm_sums`` take either. ``aux`` is None when
    ``return_aux`` is empty.
  """
  args = (inputs_BxL, segment_ids_BxL, positions_BxL)
  chunk_size = chunk_size_for(model, inputs_BxL.size)
  if chunk_size:
    h, aux = model.features(*args, return_aux=return_aux)
    return HeadInputs(h, model.head(), chunk_size), (aux if return_aux else None)
  if not return_aux:
    return model(*args), None
  return model(*args, return_aux=return_aux)


def token_losses(out, targets_BxL):
  """Per-token (cross-entropy, log-partition), float32 [B, L], from the logits or from ``HeadInputs``."""
  if not isinstance(out, HeadInputs):
    return token_cross_entropy(out, targets_BxL)
  b, length, e = out.hidden_BxLxE.shape
  h_TxE = out.hidden_BxLxE.reshape(b * length, e).astype(out.head_ExV.dtype)
  ce_T, log_z_T = chunked_ce.chunked_token_cross_entropy(h_TxE, out.head_ExV, targets_BxL.reshape(-1),
                                                         chunk_size=out.chunk_size)
  return ce_T.reshape(b, length), log_z_T.reshape(b, length)


def lm_sums(logits_BxLxV, batch, num_languages: int, z_loss: float):
  """LM loss sum, its token normaliser and the LM metric outputs of one text batch.

  ``logits_BxLxV`` may be ``HeadInputs`` instead: the loss sum is then computed chunk
  by chunk with its gradient formed in the forward loop (``chunked_weighted_ce_sum``);
  only the loss sum is differentiable then, the metric outputs are values.
  """
  weights_BxL = batch["loss_weights"].astype(jnp.float32)
  if isinstance(logits_BxLxV, HeadInputs):
    out = logits_BxLxV
    b, length, e = out.hidden_BxLxE.shape
    loss_sum, ce_T, log_z_T = chunked_ce.chunked_weighted_ce_sum(
        out.hidden_BxLxE.reshape(b * length, e).astype(out.head_ExV.dtype), out.head_ExV,
        batch["targets"].reshape(-1), weights_BxL.reshape(-1), z_loss=z_loss, chunk_size=out.chunk_size)
    ce_BxL, log_z_BxL = ce_T.reshape(b, length), log_z_T.reshape(b, length)
  else:
    ce_BxL, log_z_BxL = token_cross_entropy(logits_BxLxV, batch["targets"])
    loss_sum = None
  ce_sum = jnp.sum(ce_BxL * weights_BxL)
  z_sum = jnp.sum(jnp.square(log_z_BxL) * weights_BxL)
  if loss_sum is None:  # The plain path differentiates the sums themselves.
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


def moe_metrics(model_cfg: ModelConfig, normalizer: str = "weight") -> dict[str, Metric]:
  """The MoE metrics of ``moe_sums`` for this model (none for a dense one).

  Expert loads are named by decoder layer index (``layer_<i>``), not by the
  position among the MoE layers.

  Args:
    model_cfg: the model.
    normalizer: the output the objective divides its loss sums by (``weight`` for
      lm/sft, ``pairs`` for dpo, ``tokens`` for prealign): the ``weight`` given to
      ``moe_sums``.

  Returns:
    metric name → ``Metric``.
  """
  if not model_cfg.num_experts:
    return {}
  out = {"moe/balance_loss": Metric("moe_balance_sum", normalizer),
         "moe/z_loss": Metric("moe_z_sum", normalizer)}
  if model_cfg.moe_dispatch == "capacity":
    out["moe/dropped_fraction"] = Metric("moe_dropped_sum", "moe_tokens")
  for i in model_cfg.moe_layer_ids():
    for j in range(model_cfg.num_experts):
      out[f"moe/expert_load/layer_{i}/expert_{j}"] = Metric(f"moe_load_sum/layer_{i}/expert_{j}", "moe_tokens")
  return out


def moe_sums(aux, batch, weight, model_cfg: ModelConfig, balance_weight: float, z_weight: float):
  """The MoE router-loss term of one micro-batch and its metric outputs.

  The balance loss (N·Σ f_i·P_i) and the router z-loss are computed per MoE
  layer over this micro-batch's real tokens (segment_ids != 0) and averaged
  over the MoE layers. They are batch statistics, not per-token sums, so
  they cannot be made additive: each micro-batch's value is scaled by its
  token normaliser ``weight`` instead. The trainer divides the summed
  gradient by the summed normaliser W, so the update follows
  α·Σ_m (w_m / W)·∇balance_m, the token-weighted mean over micro-batches
  (exactly α·∇balance with one micro-batch), and ``moe/balance_loss`` =
  Σ_m w_m·balance_m / W is that same weighted mean: the logged value is the
  one differentiated, and it stays additive over micro-batches and log
  steps (a ``reduce="mean"`` metric would weight micro-batches equally and
  drift from the optimised quantity when their token counts differ).

  Args:
    aux: the decoder's ``router_logits`` [M, T, N], ``expert_load`` [M, N] and
      ``dropped_fraction`` [M] (M MoE layers, T = B·L).
    batch: the text batch (``segment_ids`` marks padding with 0).
    weight: this micro-batch's loss normaliser (weighted target tokens).
    model_cfg: the model's config (top-k, MoE layer ids).
    balance_weight: α, the weight of the balance loss.
    z_weight: the weight of the router z-loss.

  Returns:
    (term to add to the loss sum, outputs named as ``moe_metrics`` reads them).
  """
  mask_T = batch["segment_ids"].reshape(-1) != 0
  logits_MxTxN = aux["router_logits"]
  k = model_cfg.moe_top_k
  balance = jnp.mean(jax.vmap(lambda l: moe_lib.load_balance_loss(l, k, mask=mask_T))(logits_MxTxN))
  z = jnp.mean(jax.vmap(lambda l: moe_lib.router_z_loss(l, mask=mask_T))(logits_MxTxN))
  term = (balance_weight * balance + z_weight * z) * weight
  tokens = jnp.sum(mask_T.astype(jnp.float32))
  load_MxN = jax.lax.stop_gradient(aux["expert_load"]) * tokens
  outputs = {"moe_balance_sum": jax.lax.stop_gradient(balance) * weight,
             "moe_z_sum": jax.lax.stop_gradient(z) * weight, "moe_tokens": tokens,
             "moe_dropped_sum": jnp.mean(jax.lax.stop_gradient(aux["dropped_fraction"])) * tokens}
  for m, i in enumerate(model_cfg.moe_layer_ids()):
    for j in range(model_cfg.num_experts):
      outputs[f"moe_load_sum/layer_{i}/expert_{j}"] = load_MxN[m, j]
  return term, outputs


@register("lm")
class LanguageModelling(Objective):
  data_kind = "text"
  metrics = LM_METRICS
  summary_metric = "loss/{lang}"

  def __init__(self, config, num_languages):
    super().__init__(config, num_languages)
    self.model_cfg = ModelConfig.from_config(config.model)
    if self.model_cfg.num_experts:
      # A dense model asks for nothing extra, so it traces exactly as before.
      self.aux_outputs = MOE_AUX
      self.metrics = {**type(self).metrics, **moe_metrics(self.model_cfg)}

  def batch_spec(self):
    return {k: FieldSpec((self.config.data.seq_len,)) for k in TEXT_FIELDS}

  def forward(self, model, batch):
    """(logits or ``HeadInputs``, MoE aux or None): the decoder's outputs this objective reads (``decoder_outputs``)."""
    return decoder_outputs(model, batch["inputs"], batch["segment_ids"], batch["positions"], self.aux_outputs)

  def loss_sums(self, model, batch, ctx):
    del ctx  # Deterministic, no schedule.
    logits, aux = self.forward(model, batch)
    return self.lm_loss_sums(logits, aux, batch)

  def lm_loss_sums(self, logits, aux, batch):
    """(loss sum, normaliser, outputs) from ``forward``'s outputs: LM, plus the router losses when MoE."""
    loss_sum, weight, outputs = lm_sums(logits, batch, self.num_languages, self.config.optimizer.z_loss)
    outputs["weight"] = weight
    if aux is not None:
      opt = self.config.optimizer
      term, moe_outputs = moe_sums(aux, batch, weight, self.model_cfg, opt.moe_balance_weight, opt.moe_z_loss)
      loss_sum = loss_sum + term
      outputs.update(moe_outputs)
    return loss_sum, weight, outputs
