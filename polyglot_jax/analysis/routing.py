"""Which experts each language's tokens go to: per-language × per-MoE-layer expert shares.

MoE-LPR's figure (Zhou et al. 2024): after the review stage, tokens of the
original languages route to expert 0 (the frozen dense FFN) and tokens of the
new languages to the new experts. ``routing_shares`` measures it on any MoE
``Decoder``. For each language, MoE layer and expert j it gives:

- ``top_k_share``: the fraction of the language's real tokens whose top-k
  experts include j. A row sums to k over the experts; uniform routing gives
  k/N for every expert.
- ``mean_prob``: the mean router probability softmax(router_logits)_j over
  the same tokens (a row sums to 1). For expert 0 this is MoE-LPR's G_0.

Each document is tokenised as training rows are (BOS + text + EOS). Documents
longer than ``seq_len`` are cut into consecutive windows run separately, and
padding never counts. ``polyglot-jax moe routing`` (models/moe_commands.py)
runs it on a file and writes ``routing.json`` and the ``routing.png`` heatmap.
"""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyglot_jax.data import languages as langs
from polyglot_jax.data.jsonl import json_objects
from polyglot_jax.errors import ConfigError, DataError
from polyglot_jax.models.moe import route

# Rows are padded up to a multiple of this (one compile per width, not per document length).
_WIDTH_BUCKET = 32


def read_records(path: str, flag: str = "--data") -> list[dict]:
  """``{"text", "lang"}`` records from a JSONL file, in file order; a bad line is a DataError naming it."""
  records = []
  for lineno, record in json_objects(path, '{"text", "lang"}', flag):
    for field in ("text", "lang"):
      if not isinstance(record.get(field), str) or not record[field].strip():
        raise DataError(f"{path}:{lineno}: field '{field}' is missing or not a non-empty string "
                        f"(fields: {sorted(record)})")
    records.append(record)
  if not records:
    raise DataError(f"{path} holds no records; one {{\"text\", \"lang\"}} JSON object per line")
  return records


def _language(code: str) -> tuple[str, bool]:
  """(the registry's code for ``code``, registered?); an unregistered code is kept as written."""
  try:
    return langs.resolve(code), True
  except langs.UnknownLanguageError:
    return code.strip(), False


@functools.partial(jax.jit, static_argnames=("graphdef", "k"))
def _row_sums(graphdef, state, tokens_BxL, segment_ids_BxL, k):
  """Per row: top-k membership counts [M, B, N], router probability sums [M, B, N], real tokens [B]."""
  model = nnx.merge(graphdef, state)
  b, length = tokens_BxL.shape
  positions_BxL = jnp.broadcast_to(jnp.arange(length), (b, length))
  _, aux = model(tokens_BxL, segment_ids_BxL, positions_BxL, return_aux=("router_logits",))
  logits_MxTxN = aux["router_logits"]
  m, _, n = logits_MxTxN.shape
  indices_MxTxK, _, probs_MxTxN = jax.vmap(lambda x: route(x, k))(logits_MxTxN)
  chosen_MxTxN = jnp.sum(jax.nn.one_hot(indices_MxTxK, n, dtype=jnp.float32), axis=-2)
  real_1xBxLx1 = (segment_ids_BxL > 0).astype(jnp.float32)[None, :, :, None]
  chosen_MxBxN = jnp.sum(chosen_MxTxN.reshape(m, b, length, n) * real_1xBxLx1, axis=2)
  probs_MxBxN = jnp.sum(probs_MxTxN.reshape(m, b, length, n) * real_1xBxLx1, axis=2)
  return chosen_MxBxN, probs_MxBxN, jnp.sum(segment_ids_BxL > 0, axis=1)


def _windows(ids: list[int], seq_len: int) -> list[list[int]]:
  return [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]


def routing_shares(model, tokenizer, records: Iterable[Mapping[str, str]], *, batch_size: int = 8,
                   seq_len: int = 512, max_docs: int = 0, progress: bool = False) -> dict:
  """Per language and MoE layer, how often each expert is in a token's top-k, and its mean router probability.

  Args:
    model: a ``Decoder`` with MoE layers (``config.model.num_experts > 0``).
    tokenizer: the model's SentencePieceProcessor.
    records: ``{"text", "lang"}`` mappings. Codes go through the language
      registry (``en`` and ``eng`` are one language). An unregistered code
      is not dropped: its tokens are counted under the code as written, and
      ``unknown_languages`` lists it.
    batch_size: rows per forward pass.
    seq_len: the longest window run at once (the model's ``data.seq_len``
      fits); longer documents are cut into consecutive windows.
    max_docs: at most this many documents per language, the first ones
      (0: all).
    progress: show a tqdm bar over the batches.

  Returns:
    A dict: ``languages`` (in order of first appearance), ``num_experts``,
    ``top_k``, ``moe_layers`` (decoder layer ids), ``seq_len``, ``docs`` and
    ``tokens`` (language → count), ``top_k_share`` and ``mean_prob``
    (language → [num_moe_layers][num_experts] floats), and
    ``unknown_languages`` (unregistered code → documents).
  """
  cfg = model.cfg
  layer_ids = cfg.moe_layer_ids()
  if not layer_ids:
    raise ConfigError(f"the model has no MoE layers (config.model.num_experts={cfg.num_experts}); routing shares "
                      "need an MoE model: make one with `polyglot-jax moe upcycle`")
  if batch_size < 1 or seq_len < 1 or max_docs < 0:
    raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive, max_docs={max_docs} ≥ 0")
  n, k = cfg.num_experts, cfg.moe_top_k
  bos = [tokenizer.bos_id()] if tokenizer.bos_id() >= 0 else []
  eos = [tokenizer.eos_id()] if tokenizer.eos_id() >= 0 else []
  order, docs, unknown = [], {}, {}
  rows, row_lang = [], []
  for record in records:
    code, registered = _language(record["lang"])
    if max_docs and docs.get(code, 0) >= max_docs:
      continue
    if code not in docs:
      order.append(code)
      docs[code] = 0
    docs[code] += 1
    if not registered:
      unknown[code] = unknown.get(code, 0) + 1
    for window in _windows(bos + list(tokenizer.encode(record["text"])) + eos, seq_len):
      rows.append(window)
      row_lang.append(code)
  if not rows:
    raise DataError("no documents to route; give {\"text\", \"lang\"} records with text")

  chosen = {code: np.zeros((len(layer_ids), n)) for code in order}
  probs = {code: np.zeros((len(layer_ids), n)) for code in order}
  tokens = {code: 0 for code in order}
  graphdef, state = nnx.split(model)
  by_length = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # Similar widths share a batch.
  starts = range(0, len(rows), batch_size)
  if progress:
    from tqdm import tqdm
    starts = tqdm(starts, desc="routing", unit="batch")
  for start in starts:
    batch = by_length[start:start + batch_size]
    width = -(-len(rows[batch[0]]) // _WIDTH_BUCKET) * _WIDTH_BUCKET
    tokens_BxL = np.zeros((batch_size, width), np.int32)
    segments_BxL = np.zeros((batch_size, width), np.int32)  # Unused rows stay all padding.
    for i, r in enumerate(batch):
      tokens_BxL[i, :len(rows[r])] = rows[r]
      segments_BxL[i, :len(rows[r])] = 1
    c, p, t = jax.device_get(_row_sums(graphdef, state, tokens_BxL, segments_BxL, k))
    for i, r in enumerate(batch):
      code = row_lang[r]
      chosen[code] += c[:, i]
      probs[code] += p[:, i]
      tokens[code] += int(t[i])
  return {
      "languages": order, "num_experts": n, "top_k": k, "moe_layers": list(layer_ids), "seq_len": seq_len,
      "docs": docs, "tokens": tokens,
      "top_k_share": {code: (chosen[code] / max(tokens[code], 1)).tolist() for code in order},
      "mean_prob": {code: (probs[code] / max(tokens[code], 1)).tolist() for code in order},
      "unknown_languages": unknown,
  }


def expert_table(result: Mapping, expert: int = 0, languages: Iterable[str] | None = None) -> str:
  """A text table: per language and MoE layer, the share of tokens whose top-k includes ``expert``.

  Args:
    result: what ``routing_shares`` returns.
    expert: the expert whose share is shown (0: the frozen dense FFN of an upcycled model).
    languages: rows to show, in this order; None: all, in the result's order.

  Returns:
    The table, one line per language, with a header and a mean over layers.
  """
  layers = result["moe_layers"]
  header = f"{'lang':<6} {'docs':>5} {'tokens':>7}  " + "  ".join(f"{f'L{i}':>5}" for i in layers) + "   mean"
  lines = [f"share of tokens whose top-{result['top_k']} of {result['num_experts']} experts includes expert "
           f"{expert} (uniform routing: {result['top_k'] / result['num_experts']:.3f})", header]
  for code in languages or result["languages"]:
    shares = [row[expert] for row in result["top_k_share"][code]]
    lines.append(f"{code:<6} {result['docs'][code]:>5} {result['tokens'][code]:>7}  "
                 + "  ".join(f"{s:>5.3f}" for s in shares) + f"  {np.mean(shares):.3f}")
  return "\n".join(lines)


def plot(result: Mapping, path: str, title: str = "") -> None:
  """Writes a PNG heatmap: rows = languages, columns = MoE layer × expert; top-k share and mean probability.

  Args:
    result: what ``routing_shares`` returns.
    path: the PNG file to write.
    title: the figure title.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  order, layers, n = result["languages"], result["moe_layers"], result["num_experts"]
  panels = [("top_k_share", f"share of tokens with the expert in their top-{result['top_k']}", 1.0),
            ("mean_prob", "mean router probability", 1.0)]
  cols = len(layers) * n
  fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * cols + 2.0), 2.0 + 0.7 * len(order)), squeeze=False)
  for ax, (key, label, vmax) in zip(axes[:, 0], panels):
    grid = np.array([np.asarray(result[key][code]).reshape(-1) for code in order])
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_yticks(range(len(order)), order)
    ax.set_xticks(range(cols), [f"{j}" for _ in layers for j in range(n)], fontsize=7)
    for boundary in range(1, len(layers)):
      ax.axvline(boundary * n - 0.5, color="white", linewidth=2)
    secondary = ax.secondary_xaxis("top")
    secondary.set_xticks([i * n + (n - 1) / 2 for i in range(len(layers))], [f"layer {i}" for i in layers],
                         fontsize=8)
    if cols * len(order) <= 400:
      for (r, c), value in np.ndenumerate(grid):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6,
                color="black" if value > 0.6 * vmax else "white")
    ax.set_xlabel(f"expert ({label})", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
