"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

The instruction and chat record kinds (``data/records.py``) write prompt
tokens with loss weight 0 and response tokens (and EOS) with weight 1, and
pack each example as its own segment (attention and positions restart), so
SFT is the LM loss over those rows. This objective makes that explicit:
``config.data.kind`` must be ``instruction`` or ``chat`` (a text corpus
would silently turn SFT into pretraining), and it reports, beside the LM
metrics, the response tokens and the examples of each step.

Metrics (names other code reads): ``loss`` (token-weighted cross-entropy on
response tokens), ``z_loss``, ``tokens`` (response tokens), ``examples``
(examples in the step: segments with at least one response token),
``loss/<lang>`` and, on held-out data, ``ppl/<lang>``. It shares the LM
objective's forward: chunked cross-entropy above the size threshold, and on an
MoE model the router losses and ``moe/*`` metrics (docs/moe.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polyglot_jax.errors import ConfigError
from polyglot_jax.objectives.base import Metric, register
from polyglot_jax.objectives.lm import LM_METRICS, LanguageModelling

SFT_KINDS = ("instruction", "chat")


def count_examples(segment_ids_BxL, loss_weights_BxL):
  """Examples (segments with at least one weighted token) in a packed batch, as float32."""
  b, length = segment_ids_BxL.shape
  ids = (jnp.arange(b)[:, None] * (length + 1) + segment_ids_BxL.astype(jnp.int32)).reshape(-1)
  weighted = jax.ops.segment_sum((loss_weights_BxL > 0).astype(jnp.float32).reshape(-1), ids,
                                 num_segments=b * (length + 1))
  real = (jnp.arange(b * (length + 1)) % (length + 1)) != 0  # Segment 0 is padding.
  return jnp.sum(((weighted > 0) & real).astype(jnp.float32))


@register("sft")
class SupervisedFineTuning(LanguageModelling):
  data_kind = "instruction"
  metrics = {**LM_METRICS, "examples": Metric("examples", reduce="sum")}
  summary_metric = "loss/{lang}"

  def __init__(self, config, num_languages):
    super().__init__(config, num_languages)
    for prefix, c in type(self).stream_configs(config).items():
      if c.data.kind not in SFT_KINDS:
        raise ConfigError(f"config.objective='sft' trains on response tokens; config.data.kind='{c.data.kind}' "
                          f"has none. Use config.data.kind=instruction or chat (or objective=lm for plain text)")

  def loss_sums(self, model, batch, ctx):
    del ctx
    logits, aux = self.forward(model, batch)
    loss_sum, weight, outputs = self.lm_loss_sums(logits, aux, batch)
    outputs["examples"] = count_examples(batch["segment_ids"], batch["loss_weights"])
    return loss_sum, weight, outputs
