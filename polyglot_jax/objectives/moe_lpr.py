"""MoE-LPR (Zhou et al. 2024): grow a trained dense model into new languages without forgetting the old ones.

Starts from a checkpoint made by ``polyglot-jax moe upcycle`` (expert 0 of
every MoE layer = the original FFN, experts 1..N−1 copies, a fresh router)
and trains in two stages, chosen by ``config.moe_lpr.stage``:

* **stage 1, post-pretraining** (new-language data): the new experts 1..N−1
  and the router train with LM + the balance (and router z) loss of
  ``objectives/lm.py``. Attention, embeddings, norms, the head, the FFNs of
  dense layers and expert 0 are frozen. Expert 0 is a slice of the stacked
  expert weights [N, E, F], which train: its gradient is stopped in the
  forward pass (so AdamW's moments for it stay 0 and it takes no part in
  clipping) and ``keep_frozen`` copies it back after every update, because
  decoupled weight decay would otherwise still shrink it. It stays bit-identical.
* **stage 2, review** (a small replay set with original-language text):
  only the router trains, with LM + γ·LPR, where ``lpr_loss`` pulls the
  tokens of the original languages (``config.moe_lpr.original_languages``)
  to expert 0.

Metrics beside ``lm``'s (and its ``moe/*``): stage 2 adds ``moe/lpr_loss``
and ``moe/expert0_prob_original`` (the mean router probability of expert 0
on original-language tokens, averaged over MoE layers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from polyglot_jax.data import languages as langs
from polyglot_jax.errors import ConfigError
from polyglot_jax.objectives.base import Metric, register
from polyglot_jax.objectives.lm import LanguageModelling
from polyglot_jax.train.state import path_names

EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")


def lpr_loss(router_logits, is_original):
  """Language-prior loss: mean over original-language tokens of −log G_0, G_0 = softmax(router_logits)[:, 0].

  Args:
    router_logits: [T, N] float32 router logits of one MoE layer.
    is_original: [T] bool (or 0/1): tokens of the original languages (padding excluded).

  Returns:
    Scalar float32; 0 when no token is original.
  """
  log_g0_T = jax.nn.log_softmax(router_logits.astype(jnp.float32), axis=-1)[:, 0]
  m_T = is_original.astype(jnp.float32)
  return -jnp.sum(log_g0_T * m_T) / jnp.maximum(jnp.sum(m_T), 1.0)


def is_router(path: tuple[str, ...]) -> bool:
  """The router matrix of an MoE layer."""
  return "moe" in path and path[-1] == "router"


def is_routed_expert(path: tuple[str, ...]) -> bool:
  """Stacked routed-expert weights [.., N, E, F] of an MoE layer (not a shared expert)."""
  return "moe" in path and "shared" not in path and path[-1] in EXPERT_WEIGHTS


def _expert0(x):
  """Bool mask broadcastable to ``x`` [..., N, E, F]: True on expert 0."""
  axis = x.ndim - 3
  shape = [1] * x.ndim
  shape[axis] = x.shape[axis]
  return (jnp.arange(x.shape[axis]) == 0).reshape(shape)


def stop_expert0_gradient(params):
  """``params`` (nested dict) with expert 0 of every routed-expert weight behind stop_gradient (same values)."""
  def stop(path, x):
    if not is_routed_expert(path_names(path)):
      return x
    return jnp.where(_expert0(x), jax.lax.stop_gradient(x), x)
  return jax.tree_util.tree_map_with_path(stop, params)


def restore_expert0(new, old):
  """``new`` with expert 0 of every routed-expert weight taken from ``old`` (bit for bit)."""
  def keep(path, n, o):
    return jnp.where(_expert0(n), o, n) if is_routed_expert(path_names(path)) else n
  return jax.tree_util.tree_map_with_path(keep, new, old)


@register("moe_lpr")
class MoELanguagePrior(LanguageModelling):
  """LM (+ MoE router losses) with MoE-LPR's frozen parts; stage 2 adds γ·LPR (``config.moe_lpr``)."""

  @staticmethod
  def config_section():
    c = ConfigDict()
    # 1: post-pretraining (experts 1..N-1 and the router train; expert 0 and everything else frozen);
    # 2: review (only the router trains, with LM + lpr_weight * LPR).
    c.stage = 1
    c.lpr_weight = 0.1  # γ of stage 2: loss = LM + γ · LPR (the paper's default).
    # Stage 2: the languages the dense model was trained on (registry codes or aliases), whose tokens
    # LPR sends to expert 0. Each must be in config.data.languages, whose order gives the lang ids.
    c.original_languages = ()
    return c

  def __init__(self, config, num_languages):
    super().__init__(config, num_languages)
    s, m = self.section, self.model_cfg
    if s.stage not in (1, 2):
      raise ConfigError(f"config.moe_lpr.stage={s.stage}; use 1 (post-pretraining) or 2 (review)")
    if m.num_experts < 2:
      raise ConfigError(f"config.objective='moe_lpr' needs an MoE model with 2+ experts (config.model.num_experts="
                        f"{m.num_experts}); make one with `polyglot-jax moe upcycle` and set config.init_from to it")
    if m.moe_shared_experts:
      raise ConfigError(f"config.model.moe_shared_experts={m.moe_shared_experts}: MoE-LPR keeps the original FFN "
                        "as expert 0 and a shared expert would change every token; set it to 0")
    if s.lpr_weight < 0:
      raise ConfigError(f"config.moe_lpr.lpr_weight={s.lpr_weight} must be >= 0")
    self.original_ids = self._original_ids() if s.stage == 2 else ()
    if s.stage == 2:
      self.metrics = {**self.metrics, "moe/lpr_loss": Metric("moe_lpr_sum", "weight"),
                      "moe/expert0_prob_original": Metric("moe_g0_sum", "moe_original_tokens")}

  def _original_ids(self) -> tuple[int, ...]:
    """Language ids of config.moe_lpr.original_languages in config.data.languages' order."""
    originals = self.section.original_languages
    if not originals:
      raise ConfigError("config.moe_lpr.original_languages is empty; stage 2 (review) needs the languages the "
                        "dense model knew, e.g. --config.moe_lpr.original_languages=\"('eng', 'fra')\"")
    listed = self.config.data.languages
    if not listed:
      raise ConfigError("config.moe_lpr.original_languages needs config.data.languages to list the run's "
                        "languages (their order gives the per-token lang_ids); set it, e.g. "
                        "--config.data.languages=\"('eng', 'fra', 'swa')\"")
    data_codes = [langs.resolve(code) for code in listed]
    ids = []
    for code in originals:
      try:
        resolved = langs.resolve(code)
      except langs.UnknownLanguageError:
        raise ConfigError(f"config.moe_lpr.original_languages names '{code}', which is not a registered language "
                          "code; use an ISO 639-1/639-3 code (polyglot_jax.data.languages.REGISTRY)") from None
      if resolved not in data_codes:
        raise ConfigError(f"config.moe_lpr.original_languages names '{code}', which is not in the data "
                          f"(config.data.languages={list(listed)}); the review data must hold text in every "
                          "original language: add it there and to the data files")
      ids.append(data_codes.index(resolved))
    return tuple(ids)

  def trainable(self, path):
    if self.section.stage == 2:
      return is_router(path)
    return is_router(path) or is_routed_expert(path)

  def keep_frozen(self, new_trainable, old_trainable):
    # Stage 2 trains the router alone: the experts are frozen whole (no optimizer state).
    return restore_expert0(new_trainable, old_trainable) if self.section.stage == 1 else new_trainable

  def forward(self, model, batch):
    if self.section.stage == 1:
      graphdef, params, *rest = nnx.split(model, nnx.Param, ...)
      model = nnx.merge(graphdef, stop_expert0_gradient(nnx.to_pure_dict(params)), *rest)
    return super().forward(model, batch)

  def loss_sums(self, model, batch, ctx):
    logits, aux = self.forward(model, batch)
    loss_sum, weight, outputs = self.lm_loss_sums(logits, aux, batch)
    if self.section.stage == 2:
      term, lpr_outputs = self._lpr_sums(aux["router_logits"], batch, weight)
      loss_sum = loss_sum + term
      outputs.update(lpr_outputs)
    return loss_sum, weight, outputs

  def _lpr_sums(self, logits_MxTxN, batch, weight):
    """γ·LPR term of one micro-batch and its outputs.

    LPR is a mean over the micro-batch's original tokens, so (like the
    balance loss, see ``lm.moe_sums``) it enters the loss sum scaled by the
    micro-batch's token normaliser: the update follows the token-weighted
    mean of the micro-batches' LPR, which ``moe/lpr_loss`` reports.
    """
    real_T = batch["segment_ids"].reshape(-1) != 0
    is_original_T = jnp.isin(batch["lang_ids"].reshape(-1), jnp.asarray(self.original_ids)) & real_T
    lpr = jnp.mean(jax.vmap(lambda l: lpr_loss(l, is_original_T))(logits_MxTxN))
    g0_MxT = jax.nn.softmax(jax.lax.stop_gradient(logits_MxTxN), axis=-1)[..., 0]
    original = is_original_T.astype(jnp.float32)
    outputs = {"moe_lpr_sum": jax.lax.stop_gradient(lpr) * weight, "moe_original_tokens": jnp.sum(original),
               "moe_g0_sum": jnp.sum(jnp.mean(g0_MxT, axis=0) * original)}
    return self.section.lpr_weight * lpr * weight, outputs
