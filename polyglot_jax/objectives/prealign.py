"""PreAlign's alignment initialisation: pull translated words together in every layer before pretraining.

Trains on dictionary rows (record kinds ``word_groups`` / ``word_pairs``,
``data/records.py``): every word is its own segment ``[bos] word [eos]``, and
the words of one group (translations of each other) share a row. For each
layer ``ℓ`` (the embedding output, each block's output and, when the head is
untied, the output-embedding rows) a word's vector is the sum of its tokens'
vectors (the BOS position is left out: it is the same for every word, and a
causal model sees nothing else there). A supervised contrastive loss over the
words of the micro-batch (``contrastive_loss``) pulls each word towards its
translations and away from every other word; it is averaged over layers.
The LM loss on the dictionary words themselves is added:

    loss = LM (per target token) + α · align (per word with a translation)

with ``α = config.prealign.alpha``. Stack it with ``lm`` (objectives/stack.py)
to train on a corpus in the same steps.

Metrics (names other code reads): ``loss`` (the trainer's: the loss above);
``lm_loss`` (per token) and
``lm_loss/<lang>`` (``ppl/<lang>`` on held-out rows); ``align_loss`` (per
anchor word, mean over layers) and ``align_loss/layer_<i>`` (layer i) and
``align_loss/output_embedding``; ``align_accuracy``: the share of anchor
words whose nearest other word in the micro-batch (cosine, last aligned
layer) is one of its translations; ``words`` (anchor words); ``tokens``.

A group's id is a hash of its words, so a dictionary row drawn twice into
one batch is one group; a word and its own copy (same group, same language)
are then neither positives nor negatives of each other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from polyglot_jax.errors import ConfigError
from polyglot_jax.objectives.base import TEXT_FIELDS, FieldSpec, Metric, Objective, register
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.objectives.lm import MOE_AUX, decoder_outputs, lm_sums, moe_metrics, moe_sums


def _contrastive_sums(vectors_WxD, group_ids_W, temperature, ignore_WxW=None):
  """(sum over anchors of the per-anchor loss, anchor count, anchors whose nearest word is a positive).

  ``ignore_WxW`` marks pairs that are neither positives nor negatives (copies of one word).
  """
  z = vectors_WxD.astype(jnp.float32)
  # Zero vectors (padding slots) stay finite, gradients too: no norm's derivative at 0.
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))
  w = z.shape[0]
  valid_W = group_ids_W >= 0
  eye = jnp.eye(w, dtype=bool)
  others_WxW = valid_W[:, None] & valid_W[None, :] & ~eye
  if ignore_WxW is not None:
    others_WxW = others_WxW & ~ignore_WxW
  positive_WxW = others_WxW & (group_ids_W[:, None] == group_ids_W[None, :])
  s_WxW = (z @ z.T) / temperature
  s_WxW = jnp.where(others_WxW, s_WxW, -1e9)  # Finite: a padding row's softmax must not be NaN (where's gradient).
  log_p = jax.nn.log_softmax(s_WxW, axis=-1)
  n_pos_W = jnp.sum(positive_WxW, axis=-1)
  anchor_W = n_pos_W > 0
  per_anchor = -jnp.sum(jnp.where(positive_WxW, log_p, 0.0), axis=-1) / jnp.maximum(n_pos_W, 1)
  nearest_W = jnp.argmax(s_WxW, axis=-1)
  hit_W = jnp.take_along_axis(positive_WxW, nearest_W[:, None], axis=-1)[:, 0]
  anchors = anchor_W.astype(jnp.float32)
  return jnp.sum(jnp.where(anchor_W, per_anchor, 0.0)), jnp.sum(anchors), jnp.sum(hit_W & anchor_W)


def contrastive_loss(word_vectors, group_ids, temperature):
  """Supervised contrastive loss over words: translations pull together, all other words push apart.

  With ``s_ij = cos(z_i, z_j) / τ`` and ``P(i)`` the other words of i's group,
  the loss is the mean over words with at least one positive of
  ``−(1/|P(i)|) Σ_{j∈P(i)} log softmax_j(s_i·)``, the softmax running over
  every word but i itself. 0 when no word has a positive.

  Args:
    word_vectors: [W, D] one vector per word.
    group_ids: [W] int group of each word (words of one group are
      translations); a negative id marks a padding slot, which is neither an
      anchor nor a negative.
    temperature: τ (> 0); PreAlign uses 0.1.

  Returns:
    float32 scalar.
  """
  total, anchors, _ = _contrastive_sums(jnp.asarray(word_vectors), jnp.asarray(group_ids), temperature)
  return total / jnp.maximum(anchors, 1.0)


def word_vectors(layers_NxBxLxE, word_ids_BxL, positions_BxL, max_words: int):
  """[N, B, max_words, E] sums of each word's token vectors per layer (BOS positions left out)."""
  member_BxWxL = ((word_ids_BxL[:, None, :] == jnp.arange(1, max_words + 1)[None, :, None])
                  & (positions_BxL[:, None, :] > 0))
  return jnp.einsum("bwl,nble->nbwe", member_BxWxL.astype(layers_NxBxLxE.dtype), layers_NxBxLxE,
                    preferred_element_type=jnp.float32)


def word_languages(lang_ids_BxL, word_ids_BxL, positions_BxL, max_words: int):
  """[B, max_words] language id of each word slot (its first token's; 0 for empty slots)."""
  first_BxWxL = ((word_ids_BxL[:, None, :] == jnp.arange(1, max_words + 1)[None, :, None])
                 & (positions_BxL[:, None, :] == 1))
  return jnp.sum(first_BxWxL * lang_ids_BxL[:, None, :], axis=-1)


def batch_groups(word_groups_BxW):
  """[B·W] group ids of the batch's word slots (-1: no word).

  Ids are hashes of the group's words (data/records.py ``group_hash``), so two
  copies of one group in a batch are one group: a word is never its own copy's
  negative.
  """
  return word_groups_BxW.reshape(-1)


def copies(word_groups_BxW, word_langs_BxW):
  """[B·W, B·W] pairs of slots holding one word twice (same group, same language): left out of the loss.

  A dictionary row drawn twice into a batch would otherwise make each word its
  own copy's nearest neighbour.
  """
  g, lang = word_groups_BxW.reshape(-1), word_langs_BxW.reshape(-1)
  return (g[:, None] == g[None, :]) & (lang[:, None] == lang[None, :])


def anchor_count(word_groups_BxW, word_langs_BxW):
  """Words with a translation in the batch (another language of their group): the contrastive normaliser."""
  g = word_groups_BxW.reshape(-1)
  positive = (g[:, None] == g[None, :]) & (g[:, None] >= 0) & ~copies(word_groups_BxW, word_langs_BxW)
  return jnp.sum(jnp.any(positive, axis=-1).astype(jnp.float32))


@register("prealign")
class PreAlign(Objective):
  """LM + α · contrastive word alignment over layers, on dictionary rows (``config.prealign``)."""

  data_kind = "word_groups"
  aux_outputs = ("hidden_states",)
  prenormalized = True
  summary_metric = "lm_loss/{lang}"

  @staticmethod
  def config_section():
    c = ConfigDict()
    c.alpha = 0.1  # Weight α of the alignment loss: loss = LM + α · align.
    c.temperature = 0.1  # τ of the contrastive loss (cosine similarity / τ).
    # Layers aligned: 0 is the embedding output, i the output of block i; () aligns all of them.
    c.layers = ()
    c.output_embedding = True  # Also align the output-embedding rows (untied heads only; tied = layer 0's table).
    return c

  def __init__(self, config, num_languages):
    super().__init__(config, num_languages)
    s = self.section
    n = config.model.num_layers + 1
    bad = [i for i in s.layers if not 0 <= i < n]
    if bad:
      raise ConfigError(f"config.prealign.layers has {bad}; layers are 0 (embedding output) to {n - 1}")
    if s.temperature <= 0 or s.alpha < 0:
      raise ConfigError(f"config.prealign.temperature={s.temperature}, alpha={s.alpha}; use temperature > 0, "
                        "alpha >= 0")
    self.layers = tuple(s.layers) or tuple(range(n))
    self.use_head = bool(s.output_embedding) and not config.model.tie_embeddings
    names = [f"layer_{i}" for i in self.layers] + (["output_embedding"] if self.use_head else [])
    self.align_names = names
    # No "loss" metric: the trainer reports the differentiated loss (LM + α · align) itself.
    self.metrics = {
        "lm_loss": Metric("ce_sum", "tokens"),
        "lm_loss/{lang}": Metric("lang_loss_sum", "lang_weight", per_language=True, exp_name="ppl/{lang}"),
        "align_loss": Metric("align_sum", "words"),
        "align_accuracy": Metric("hits", "words"),
        "words": Metric("words"),
        "tokens": Metric("tokens"),
        **{f"align_loss/{name}": Metric(f"align_sum/{name}", "words") for name in names},
    }
    self.model_cfg = ModelConfig.from_config(config.model)
    if self.model_cfg.num_experts:
      self.aux_outputs = type(self).aux_outputs + MOE_AUX
      self.metrics.update(moe_metrics(self.model_cfg, "tokens"))

  def batch_spec(self):
    length = self.config.data.seq_len
    spec = {k: FieldSpec((length,)) for k in TEXT_FIELDS}
    spec.update(word_ids=FieldSpec((length,)), word_groups=FieldSpec((length // 2,)))
    return spec

  def _word_langs(self, batch):
    return word_languages(batch["lang_ids"], batch["word_ids"], batch["positions"], batch["word_groups"].shape[1])

  def normalizers(self, batch):
    return {"tokens": jnp.sum(batch["loss_weights"].astype(jnp.float32)),
            "words": anchor_count(batch["word_groups"], self._word_langs(batch))}

  def batch_normalizer(self, batch):
    return jnp.sum(batch["loss_weights"].astype(jnp.float32))

  def loss_sums(self, model, batch, ctx):
    s = self.section
    logits, aux = decoder_outputs(model, batch["inputs"], batch["segment_ids"], batch["positions"],
                                  self.aux_outputs)
    lm_loss_sum, tokens, outputs = lm_sums(logits, batch, self.num_languages, self.config.optimizer.z_loss)
    if self.model_cfg.num_experts:  # The router losses, normalised by the LM tokens like the LM loss.
      opt = self.config.optimizer
      moe_term, moe_outputs = moe_sums(aux, batch, tokens, self.model_cfg, opt.moe_balance_weight, opt.moe_z_loss)
      lm_loss_sum = lm_loss_sum + moe_term
      outputs.update(moe_outputs)
    max_words = batch["word_groups"].shape[1]
    layers = aux["hidden_states"][jnp.asarray(self.layers)]
    vectors_NxBxWxE = word_vectors(layers, batch["word_ids"], batch["positions"], max_words)
    if self.use_head:
      # The head's rows of each input token: what the model would score it with as a target.
      head_VxE = model.lm_head[...].T
      rows_BxLxE = jnp.take(head_VxE, batch["inputs"], axis=0)
      head_vectors = word_vectors(rows_BxLxE[None], batch["word_ids"], batch["positions"], max_words)
      vectors_NxBxWxE = jnp.concatenate([vectors_NxBxWxE, head_vectors], axis=0)
    n, b, w, e = vectors_NxBxWxE.shape
    groups = batch_groups(batch["word_groups"])
    word_langs = self._word_langs(batch)
    ignore = copies(batch["word_groups"], word_langs)
    align_sum = jnp.zeros((), jnp.float32)
    for i, name in enumerate(self.align_names):
      total, _, hits_i = _contrastive_sums(vectors_NxBxWxE[i].reshape(b * w, e), groups, s.temperature, ignore)
      outputs[f"align_sum/{name}"] = jax.lax.stop_gradient(total)
      align_sum = align_sum + total / n
      if i == len(self.layers) - 1:  # The last aligned layer (not the output embedding).
        hits = jax.lax.stop_gradient(hits_i)
    words = anchor_count(batch["word_groups"], word_langs)
    outputs.update(align_sum=align_sum, hits=hits.astype(jnp.float32), tokens=tokens, words=words)
    loss = (lm_loss_sum / jnp.maximum(ctx.normalizers["tokens"], 1.0)
            + s.alpha * align_sum / jnp.maximum(ctx.normalizers["words"], 1.0))
    return loss, jnp.ones((), jnp.float32), outputs
