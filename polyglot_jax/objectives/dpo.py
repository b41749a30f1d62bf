"""Preference optimisation: DPO and friends (cDPO, robust DPO, hinge, IPO, SimPO, ORPO) on preference pairs.

Each row of a ``preference`` batch (``data/records.py``) holds one pair:
``chosen_*`` and ``rejected_*`` text fields (prompt tokens weight 0,
response and EOS weight 1), plus optional precomputed reference
log-probabilities. Chosen and rejected rows go through one forward pass,
concatenated on the batch axis; a completion's log-probability is the sum
over its weighted targets of ``log_softmax(logits)[target]``.

The loss formulas follow TRL (``DPOTrainer.dpo_loss``, ``CPOTrainer`` for
SimPO, ``ORPOTrainer.odds_ratio_loss``); see ``preference_loss``.

The reference model (``config.dpo.reference``):
- ``policy``: a frozen copy of the starting parameters (after
  ``config.init_from``), kept in ``TrainState.extra["reference"]``, sharded
  like the policy and checkpointed; a second forward pass scores the pair.
- ``precomputed``: the batch's ``ref_logp_chosen`` / ``ref_logp_rejected``
  (written into the JSONL records, e.g. with ``polyglot-jax score``). The
  records are read as kind ``scored_preference``: one without them is
  rejected and counted with its file:line when the data is read. As a
  backstop, a pair that still has none (``has_ref_logp == 0``) is never
  scored against 0: it makes the step's loss NaN, so the update is skipped;
  ``missing_ref_logp`` counts those pairs.
- ``none``: reference-free; only ``simpo`` and ``orpo``. Those two ignore
  the setting altogether (no copy is made, no precomputed values are read).

Metrics (TRL's names; means over pairs, each also per language as
``<name>/<lang>``): ``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies`` (fraction of pairs whose chosen reward is higher),
``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (completion
log-prob sums, whatever the loss type); ``pairs`` (pairs in the step) and,
with precomputed references, ``missing_ref_logp``. A pair is real when its
chosen response has a weighted token; padding rows count nowhere. On an MoE
policy the router losses (balance and z, over the tokens of both sides) are
added, weighted by the pairs, and the ``moe/*`` metrics reported (docs/moe.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from polyglot_jax.errors import ConfigError
from polyglot_jax.objectives.base import TEXT_FIELDS, FieldSpec, Metric, Objective, register
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.objectives.lm import MOE_AUX, decoder_outputs, moe_metrics, moe_sums, token_losses

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")  # Loss types that use no reference model.
LENGTH_AVERAGED = ("ipo", "simpo", "orpo")  # Loss types on per-token average log-probs.
REFERENCES = ("policy", "precomputed", "none")
SIDES = ("chosen", "rejected")

# Reported name → (output key, per-pair value); every metric is a mean over real pairs.
_PAIR_METRICS = {
    "loss": "loss_sum",
    "rewards/chosen": "chosen_reward_sum",
    "rewards/rejected": "rejected_reward_sum",
    "rewards/accuracies": "accuracy_sum",
    "rewards/margins": "margin_sum",
    "logps/chosen": "chosen_logp_sum",
    "logps/rejected": "rejected_logp_sum",
}


def _log1mexp(x):
  """log(1 - exp(x)) for x < 0, accurate near 0 (where log1p(-exp(x)) rounds to -inf).

  x is capped at -1e-7 (a per-token probability of 0.9999999), so a response the
  model is certain of gives a large finite odds term instead of -inf and a NaN gradient.
  """
  return jnp.log(-jnp.expm1(jnp.minimum(x, -1e-7)))


SIMPO_GAMMA = 0.5  # SimPO's target reward margin γ when none is given (TRL's CPOConfig default).


def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                    loss_type: str, beta: float, label_smoothing: float = 0.0, chosen_lengths=None,
                    rejected_lengths=None):
  """Per-pair preference losses and implicit rewards (TRL's formulas); SimPO with γ = ``SIMPO_GAMMA``.

  ``preference_loss_with_margin`` is the same function with SimPO's γ as an
  argument (the objective passes ``config.dpo.simpo_gamma`` there); see its
  docstring for the formulas, arguments and return values.
  """
  return preference_loss_with_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                     ref_rejected_logps, loss_type=loss_type, beta=beta,
                                     label_smoothing=label_smoothing, chosen_lengths=chosen_lengths,
                                     rejected_lengths=rejected_lengths, simpo_gamma=SIMPO_GAMMA)


def preference_loss_with_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                *, loss_type: str, beta: float, label_smoothing: float = 0.0, chosen_lengths=None,
                                rejected_lengths=None, simpo_gamma: float = SIMPO_GAMMA):
  """Per-pair preference losses and implicit rewards (TRL's formulas), with SimPO's margin γ as an argument.

  With policy log-probs ``π_c, π_r`` and reference log-probs ``ρ_c, ρ_r``
  (per-pair sums over completion tokens), ``h = (π_c − π_r) − (ρ_c − ρ_r)``,
  ``ε = label_smoothing`` and ``σ`` the logistic function:

  - ``sigmoid`` (DPO; cDPO when ε > 0): ``−(1−ε)·log σ(βh) − ε·log σ(−βh)``.
  - ``robust`` (rDPO): ``(−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε)``.
  - ``hinge`` (SLiC): ``relu(1 − βh)`` (ε unused).
  - ``ipo``: ``(h − 1/(2β))²`` where every log-prob (policy and reference) is
    first divided by its completion length: ``π̄ = π / n``.
  - ``simpo`` (reference-free): with ``π̄ = π / n`` and ``γ = simpo_gamma``,
    ``z = β(π̄_c − π̄_r) − γ``, loss ``−(1−ε)·log σ(z) − ε·log σ(−z)``.
  - ``orpo`` (reference-free): with ``π̄ = π / n``, the log odds ratio
    ``L = (π̄_c − π̄_r) − (log(1 − e^{π̄_c}) − log(1 − e^{π̄_r}))`` and loss
    ``−π̄_c − β·log σ(L)``: the chosen response's per-token NLL plus the
    odds-ratio term. (TRL averages the NLL over the batch's tokens; here it
    is each pair's per-token mean, so the loss is a per-pair sum.)

  Rewards: ``β(π − ρ)`` per side for the reference types (``β(π̄ − ρ̄)`` for
  ipo), ``β·π̄`` for simpo and orpo (as TRL's CPO and ORPO trainers report).

  Args:
    policy_chosen_logps: [B] policy log-prob sums of the chosen completions.
    policy_rejected_logps: [B] the same for the rejected completions.
    ref_chosen_logps: [B] reference log-prob sums of the chosen completions;
      ignored (may be None) for simpo and orpo.
    ref_rejected_logps: [B] the same for the rejected completions.
    loss_type: one of ``LOSS_TYPES``.
    beta: the inverse temperature β (> 0).
    label_smoothing: ε, the assumed rate of flipped labels (sigmoid, robust,
      simpo).
    chosen_lengths: [B] completion token counts of the chosen completions;
      required for ipo, simpo and orpo (counts below 1 are taken as 1).
    rejected_lengths: [B] the same for the rejected completions.
    simpo_gamma: SimPO's target reward margin γ.

  Returns:
    (per-pair losses [B], chosen rewards [B], rejected rewards [B]), float32.

  Raises:
    ValueError: an unknown loss type, or missing lengths or reference log-probs
      for a loss type that needs them.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type='{loss_type}'; use one of {list(LOSS_TYPES)}")
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  pi_c, pi_r = f32(policy_chosen_logps), f32(policy_rejected_logps)
  eps = label_smoothing
  if loss_type in LENGTH_AVERAGED:
    if chosen_lengths is None or rejected_lengths is None:
      raise ValueError(f"loss_type='{loss_type}' averages log-probs by length: pass chosen_lengths and "
                       "rejected_lengths")
    n_c, n_r = jnp.maximum(f32(chosen_lengths), 1.0), jnp.maximum(f32(rejected_lengths), 1.0)
    pi_c, pi_r = pi_c / n_c, pi_r / n_r

  if loss_type in REFERENCE_FREE:
    if loss_type == "simpo":
      z = beta * (pi_c - pi_r) - simpo_gamma
      losses = -(1 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)
    else:
      log_odds = (pi_c - pi_r) - (_log1mexp(pi_c) - _log1mexp(pi_r))
      losses = -pi_c - beta * jax.nn.log_sigmoid(log_odds)
    return losses, beta * pi_c, beta * pi_r

  if ref_chosen_logps is None or ref_rejected_logps is None:
    raise ValueError(f"loss_type='{loss_type}' needs reference log-probs")
  ref_c, ref_r = f32(ref_chosen_logps), f32(ref_rejected_logps)
  if loss_type == "ipo":
    ref_c, ref_r = ref_c / n_c, ref_r / n_r
  h = (pi_c - pi_r) - (ref_c - ref_r)
  if loss_type == "sigmoid":
    losses = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
  elif loss_type == "robust":
    losses = (-(1 - eps) * jax.nn.log_sigmoid(beta * h) + eps * jax.nn.log_sigmoid(-beta * h)) / (1 - 2 * eps)
  elif loss_type == "hinge":
    losses = jax.nn.relu(1 - beta * h)
  else:  # ipo
    losses = jnp.square(h - 1 / (2 * beta))
  return losses, beta * (pi_c - ref_c), beta * (pi_r - ref_r)


def completion_logps(logits_BxLxV, targets_BxL, loss_weights_BxL):
  """(log-prob sums over weighted targets [B], weighted target counts [B]), float32.

  ``logits_BxLxV`` may be ``lm.HeadInputs``: the log-probs are then computed chunk by chunk.
  """
  ce_BxL, _ = token_losses(logits_BxLxV, targets_BxL)
  w_BxL = loss_weights_BxL.astype(jnp.float32)
  return -jnp.sum(ce_BxL * w_BxL, axis=1), jnp.sum(w_BxL, axis=1)


def _both_sides(batch):
  """The text fields of [chosen; rejected], concatenated on the batch axis."""
  return {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
          for k in ("inputs", "targets", "loss_weights", "segment_ids", "positions")}


def _pair_forward(model, batch, return_aux: tuple[str, ...] = ()):
  """Completion log-prob sums and lengths of both sides from one forward pass on [chosen; rejected].

  With ``return_aux`` (the MoE router outputs) the decoder's aux dict is returned as a third item.
  """
  cat = _both_sides(batch)
  logits, aux = decoder_outputs(model, cat["inputs"], cat["segment_ids"], cat["positions"], return_aux)
  logps, lengths = completion_logps(logits, cat["targets"], cat["loss_weights"])
  b = batch["chosen_inputs"].shape[0]
  out = (logps[:b], logps[b:]), (lengths[:b], lengths[b:])
  return out + (aux,) if return_aux else out


def _config_error(key: str, value, choices) -> ConfigError:
  return ConfigError(f"config.dpo.{key}={value!r} is unknown; use one of {list(choices)}")


@register("dpo")
class PreferenceOptimisation(Objective):
  """DPO-style objectives on preference pairs (``config.dpo``); loss per pair, normalised by pairs."""

  data_kind = "preference"
  summary_metric = "loss/{lang}"

  @staticmethod
  def config_section():
    c = ConfigDict()
    # sigmoid (DPO; cDPO with label_smoothing), robust, hinge, ipo; reference-free simpo, orpo.
    c.loss_type = "sigmoid"
    c.beta = 0.1  # Inverse temperature β: how far the policy may move from the reference.
    c.label_smoothing = 0.0  # ε in [0, 0.5): assumed rate of flipped preference labels (sigmoid, robust, simpo).
    c.simpo_gamma = SIMPO_GAMMA  # SimPO's target reward margin γ.
    c.rpo_alpha = 0.0  # Weight α of an added per-token NLL of the chosen response (RPO); 0 adds none.
    # Reference log-probs: "policy" (a frozen copy of the starting parameters), "precomputed" (the
    # records' ref_logp_chosen / ref_logp_rejected) or "none" (simpo / orpo, which ignore this key).
    c.reference = "policy"
    return c

  def __init__(self, config, num_languages):
    super().__init__(config, num_languages)
    s = self.section
    if s.loss_type not in LOSS_TYPES:
      raise _config_error("loss_type", s.loss_type, LOSS_TYPES)
    if s.reference not in REFERENCES:
      raise _config_error("reference", s.reference, REFERENCES)
    if s.reference == "none" and s.loss_type not in REFERENCE_FREE:
      raise ConfigError(f"config.dpo.reference='none' but config.dpo.loss_type='{s.loss_type}' needs a reference; "
                        f"set reference to policy or precomputed, or loss_type to one of {list(REFERENCE_FREE)}")
    if s.beta <= 0:
      raise ConfigError(f"config.dpo.beta={s.beta}; use a positive inverse temperature (e.g. 0.1)")
    if not 0.0 <= s.label_smoothing < 0.5:
      raise ConfigError(f"config.dpo.label_smoothing={s.label_smoothing}; use a value in [0, 0.5)")
    if s.rpo_alpha < 0:
      raise ConfigError(f"config.dpo.rpo_alpha={s.rpo_alpha}; use a weight >= 0")
    # The reference actually used: simpo and orpo take none whatever config.dpo.reference says.
    self.reference = "none" if s.loss_type in REFERENCE_FREE else s.reference
    metrics = {"pairs": Metric("pairs")}
    for name, key in _PAIR_METRICS.items():
      metrics[name] = Metric(key, "pairs")
      metrics[f"{name}/{{lang}}"] = Metric(f"lang_{key}", "lang_pairs", per_language=True)
    if self.reference == "precomputed":
      metrics["missing_ref_logp"] = Metric("missing_ref_logp")
    self.model_cfg = ModelConfig.from_config(config.model)
    if self.model_cfg.num_experts:
      self.aux_outputs = MOE_AUX
      metrics.update(moe_metrics(self.model_cfg, "pairs"))
    self.metrics = metrics

  @classmethod
  def stream_configs(cls, config):
    """With a precomputed reference the records are read as ``scored_preference`` (log-probs required)."""
    s = config.dpo
    if s.reference != "precomputed" or s.loss_type in REFERENCE_FREE or config.data.kind != "preference":
      return {"": config}
    from polyglot_jax import configs as config_lib
    scored = config_lib.config_from_dict(config.to_dict())
    with scored.unlocked():
      scored.data.kind = "scored_preference"
    return {"": scored}

  def batch_spec(self):
    length = self.config.data.seq_len
    spec = {f"{side}_{k}": FieldSpec((length,)) for side in SIDES for k in TEXT_FIELDS}
    if self.reference == "precomputed":
      spec.update(ref_logp_chosen=FieldSpec((), "float32"), ref_logp_rejected=FieldSpec((), "float32"),
                  has_ref_logp=FieldSpec(()))
    return spec

  def init_extra(self, params):
    if self.reference != "policy":
      return None
    # A copy, not the same arrays: the train step donates the parameters' buffers.
    return {"reference": jax.tree.map(jnp.copy, params)}

  def extra_shardings(self, param_shardings):
    return {"reference": param_shardings} if self.reference == "policy" else None

  def batch_normalizer(self, batch):
    return jnp.sum((jnp.sum(batch["chosen_loss_weights"], axis=1) > 0).astype(jnp.float32))

  def loss_sums(self, model, batch, ctx):
    s = self.section
    (pi_c, pi_r), (n_c, n_r), *aux = _pair_forward(model, batch, self.aux_outputs)
    real_B = n_c > 0
    ref_c = ref_r = None
    missing_B = jnp.zeros_like(real_B)
    if self.reference == "policy":
      graphdef = nnx.graphdef(model)
      reference = nnx.merge(graphdef, jax.lax.stop_gradient(ctx.extra["reference"]))
      (ref_c, ref_r), _ = _pair_forward(reference, batch)
      ref_c, ref_r = jax.lax.stop_gradient(ref_c), jax.lax.stop_gradient(ref_r)
    elif self.reference == "precomputed":
      ref_c = batch["ref_logp_chosen"].astype(jnp.float32)
      ref_r = batch["ref_logp_rejected"].astype(jnp.float32)
      missing_B = real_B & (batch["has_ref_logp"] == 0)
    # Padding rows get harmless stand-in log-probs (orpo's log(1 - e^0) would be -inf, its gradient NaN).
    safe = lambda x: jnp.where(real_B, x, -1.0)  # noqa: E731
    losses_B, chosen_rewards_B, rejected_rewards_B = preference_loss_with_margin(
        safe(pi_c), safe(pi_r), None if ref_c is None else safe(ref_c), None if ref_r is None else safe(ref_r),
        loss_type=s.loss_type, beta=s.beta, label_smoothing=s.label_smoothing, chosen_lengths=n_c,
        rejected_lengths=n_r, simpo_gamma=s.simpo_gamma)
    if s.rpo_alpha:
      losses_B = losses_B + s.rpo_alpha * (-safe(pi_c) / jnp.maximum(n_c, 1.0))
    # A pair without its precomputed reference must not train against 0: NaN skips the step.
    losses_B = jnp.where(missing_B, jnp.nan, losses_B)

    w_B = real_B.astype(jnp.float32)
    per_pair = {
        "loss_sum": losses_B,
        "chosen_reward_sum": chosen_rewards_B,
        "rejected_reward_sum": rejected_rewards_B,
        "accuracy_sum": (chosen_rewards_B > rejected_rewards_B).astype(jnp.float32),
        "margin_sum": chosen_rewards_B - rejected_rewards_B,
        "chosen_logp_sum": pi_c,
        "rejected_logp_sum": pi_r,
    }
    onehot_BxN = jax.nn.one_hot(batch["chosen_lang_ids"][:, 0], self.num_languages, dtype=jnp.float32)
    onehot_BxN = onehot_BxN * w_B[:, None]
    # Keep NaN out of the metric sums of padding rows (0 * NaN) while a missing reference still shows.
    outputs = {}
    for key, value_B in per_pair.items():
      value_B = jnp.where(real_B, jax.lax.stop_gradient(value_B) if key != "loss_sum" else value_B, 0.0)
      outputs[key] = jnp.sum(value_B)
      outputs[f"lang_{key}"] = jax.lax.stop_gradient(value_B) @ onehot_BxN
    pairs = jnp.sum(w_B)
    outputs.update(pairs=pairs, lang_pairs=jnp.sum(onehot_BxN, axis=0))
    if self.reference == "precomputed":
      outputs["missing_ref_logp"] = jnp.sum(missing_B.astype(jnp.float32))
    loss_sum = outputs["loss_sum"]
    if aux:
      opt = self.config.optimizer
      term, moe_outputs = moe_sums(aux[0], _both_sides(batch), pairs, self.model_cfg, opt.moe_balance_weight,
                                   opt.moe_z_loss)
      loss_sum = loss_sum + term
      outputs.update(moe_outputs)
    return loss_sum, pairs, outputs
