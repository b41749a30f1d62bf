"""Language-specific neurons by LAPE (Tang et al. 2024), and switching neurons off.

LAPE, "language activation probability entropy": a SwiGLU neuron is
*active* on a token when its activation function output ``silu(x W_gate)``
is positive. Per language, the fraction of tokens on which each neuron is
active is its activation probability. Neurons whose probabilities,
normalised across languages, have low entropy fire for few languages; those
are the language-specific ones (``select_neurons``, the rule of the paper's
released code). ``deactivation_table`` then measures what switching them off
does to each language's perplexity, against as many random neurons.

``deactivate`` is the intervention: it returns a copy of a model whose
SwiGLU blocks carry a ``NeuronMask`` with zeros at the chosen neurons; the
copy runs through ``model(tokens)``, ``decode.generate`` and ``decode.score``
like any model. The caller's model is never changed.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from polyglot_jax.models.attention import dense
from polyglot_jax.models.layers import rope_tables
from polyglot_jax.models.mlp import NeuronMask

# Token rows are padded up to a multiple of this (one compile per width, not per text length).
_WIDTH_BUCKET = 32


# ----------------------------------------------------------------------------------------------------------------
# The intervention.


def _mlps(model) -> list:
  """The SwiGLU module of each layer (one stacked module when layers are scanned)."""
  if model.cfg.scan_layers:
    return [model.blocks.mlp]
  return [block.mlp for block in model.blocks]


def neuron_mask(model) -> np.ndarray:
  """The model's neuron multipliers [num_layers, mlp_dim] (all ones for a model without a mask)."""
  cfg = model.cfg
  mlps = _mlps(model)
  if getattr(mlps[0], "neuron_mask", None) is None:
    return np.ones((cfg.num_layers, cfg.mlp_dim), np.float32)
  if cfg.scan_layers:
    return np.array(mlps[0].neuron_mask[...], np.float32)
  return np.stack([np.asarray(m.neuron_mask[...], np.float32) for m in mlps])


def deactivate(model, neurons: Mapping[int, Sequence[int]]):
  """A copy of ``model`` with the given SwiGLU neurons switched off (their activation set to 0).

  The copy shares the caller's parameter arrays (nothing is duplicated) and
  adds a ``NeuronMask`` to every SwiGLU block; the caller's model is not
  changed. Deactivating a copy again keeps its earlier zeros.

  Args:
    model: a ``Decoder`` (layers scanned or unrolled).
    neurons: layer index → neuron indices in [0, mlp_dim) to switch off.

  Returns:
    The deactivated copy; call it, generate or score with it as with any model.
  """
  cfg = model.cfg
  mask = neuron_mask(model)
  for layer, idx in neurons.items():
    layer = int(layer)
    if not 0 <= layer < cfg.num_layers:
      raise ValueError(f"deactivate: layer {layer} is out of range; the model has {cfg.num_layers} layers")
    idx = np.asarray(list(idx), np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= cfg.mlp_dim):
      raise ValueError(f"deactivate: layer {layer} names neurons outside [0, {cfg.mlp_dim}) (mlp_dim)")
    mask[layer, idx] = 0.0
  copy = nnx.clone(model)
  mlps = _mlps(copy)
  if cfg.scan_layers:
    # The stacked block's variables carry a leading layers axis; nnx.scan slices the mask with them.
    mlps[0].neuron_mask = NeuronMask(jnp.asarray(mask))
  else:
    for layer, mlp in enumerate(mlps):
      mlp.neuron_mask = NeuronMask(jnp.asarray(mask[layer]))
  return copy


def deactivate_from_file(model, spec: str):
  """``deactivate`` with one language's neurons from a ``polyglot-jax analyze lape`` result.

  Args:
    model: a ``Decoder``.
    spec: ``PATH:LANG``: a lape.json and a language in its ``neurons``.

  Returns:
    The deactivated copy.

  Raises:
    DataError: the file, its ``neurons`` entry or the language is missing.
  """
  import json

  from polyglot_jax.errors import DataError
  path, sep, lang = spec.rpartition(":")
  if not sep or not path:
    raise DataError(f"--deactivate '{spec}': use PATH:LANG, e.g. runs/demo/lape/lape.json:fra")
  try:
    with open(path, encoding="utf-8") as f:
      neurons = json.load(f)["neurons"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f"--deactivate: {path} is not a lape.json with a 'neurons' entry ({e})") from None
  if lang not in neurons:
    raise DataError(f"--deactivate: {path} has no neurons for '{lang}'; it has {sorted(neurons)}")
  return deactivate(model, {int(layer): idx for layer, idx in neurons[lang].items()})


# ----------------------------------------------------------------------------------------------------------------
# Activation probabilities.


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _active_counts(graphdef, state, tokens_BxL, segment_ids_BxL):
  """[num_layers, mlp_dim] int32: on how many real tokens each neuron's silu(gate) is positive."""
  model = nnx.merge(graphdef, state)
  cfg = model.cfg
  positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
  cos, sin = rope_tables(positions_BxL, cfg.head_dim, cfg.rope_theta)
  real_BxLx1 = (segment_ids_BxL > 0)[..., None]

  # Block.__call__ replayed so that the MLP input (not in the residual stream) is at hand.
  def layer(block, x_BxLxE):
    x_BxLxE = x_BxLxE + block.attn(block.attn_norm(x_BxLxE), cos, sin, segment_ids_BxL)
    m_BxLxE = block.mlp_norm(x_BxLxE)
    gate_BxLxF = dense(m_BxLxE, block.mlp.gate_proj[...], block.mlp.dtype)
    active_BxLxF = (jax.nn.silu(gate_BxLxF) > 0) & real_BxLx1
    return x_BxLxE + block.mlp(m_BxLxE), jnp.sum(active_BxLxF, axis=(0, 1), dtype=jnp.int32)

  x = model.embed(tokens_BxL)
  if cfg.scan_layers:
    run = nnx.scan(layer, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0),
                   transform_metadata={nnx.PARTITION_NAME: "layers"})
    _, counts = run(model.blocks, x)
    return counts
  counts = []
  for block in model.blocks:
    x, c = layer(block, x)
    counts.append(c)
  return jnp.stack(counts)


def _chunks(token_ids: Sequence[Sequence[int]], seq_len: int) -> list[list[int]]:
  """Each sequence cut into consecutive windows of at most ``seq_len`` tokens (empty ones dropped)."""
  out = []
  for seq in token_ids:
    seq = [int(t) for t in seq]
    out.extend(seq[i:i + seq_len] for i in range(0, len(seq), seq_len))
  return out


def _padded_batches(rows: list[list[int]], batch_size: int):
  """(tokens, segment_ids) int32 [batch_size, width] batches, right-padded; padding rows are all zero."""
  for start in range(0, len(rows), batch_size):
    batch = rows[start:start + batch_size]
    width = -(-max(len(r) for r in batch) // _WIDTH_BUCKET) * _WIDTH_BUCKET
    tokens = np.zeros((batch_size, width), np.int32)
    segments = np.zeros((batch_size, width), np.int32)
    for i, row in enumerate(batch):
      tokens[i, :len(row)] = row
      segments[i, :len(row)] = 1
    yield tokens, segments


def activation_probabilities(model, texts_by_lang: Mapping[str, Sequence[Sequence[int]]], *, batch_size: int = 8,
                             seq_len: int = 512, progress: bool = False) -> tuple[list[str], np.ndarray]:
  """Per language, the fraction of tokens on which each SwiGLU neuron is active.

  A neuron is active on a token when ``silu(x W_gate) > 0`` (the activation
  function's output, LAPE's definition), with x the block's normalised MLP
  input. Every token of every sequence counts (a BOS included, if the
  caller put one); sequences longer than ``seq_len`` are cut into
  consecutive windows that are run separately.

  Args:
    model: a ``Decoder``.
    texts_by_lang: language → token-id sequences.
    batch_size: rows per forward pass.
    seq_len: the longest window run at once.
    progress: show a tqdm bar per language.

  Returns:
    (languages in the order given, float64 probabilities [num_langs, num_layers, mlp_dim]).
  """
  cfg = model.cfg
  graphdef, state = nnx.split(model)
  langs = list(texts_by_lang)
  probs = np.zeros((len(langs), cfg.num_layers, cfg.mlp_dim), np.float64)
  for n, lang in enumerate(langs):
    rows = _chunks(texts_by_lang[lang], seq_len)
    num_tokens = sum(len(r) for r in rows)
    if not num_tokens:
      raise ValueError(f"activation_probabilities: language '{lang}' has no tokens")
    counts = np.zeros((cfg.num_layers, cfg.mlp_dim), np.int64)
    batches = _padded_batches(rows, batch_size)
    for tokens, segments in tqdm(batches, total=-(-len(rows) // batch_size), desc=f"activations {lang}",
                                 unit="batch", disable=not progress):
      counts += np.asarray(_active_counts(graphdef, state, jnp.asarray(tokens), jnp.asarray(segments)))
    probs[n] = counts / num_tokens
  return langs, probs


# ----------------------------------------------------------------------------------------------------------------
# Selection.


def _kth_smallest(sorted_values: np.ndarray, rate: float) -> float:
  """torch's ``kthvalue(round(n * rate))``: the k-th smallest value, k counted from 1 (clamped to [1, n])."""
  k = min(max(round(len(sorted_values) * rate), 1), len(sorted_values))
  return float(sorted_values[k - 1])


def lape_entropy(probs: np.ndarray) -> np.ndarray:
  """Entropy (nats) [num_layers, mlp_dim] of each neuron's probabilities normalised across languages.

  A neuron active in no language gets 0 (as in the paper's code); ``select_neurons``
  filters those out by their low activation probability.
  """
  p = np.moveaxis(np.asarray(probs, np.float64), 0, -1)
  total = p.sum(-1, keepdims=True)
  normed = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
  logs = np.log(normed, out=np.zeros_like(normed), where=normed > 0)
  return -(normed * logs).sum(-1)


def select_neurons(probs: np.ndarray, langs: Sequence[str], *, top_rate: float = 0.01, filter_rate: float = 0.95,
                   activation_bar_ratio: float = 0.95) -> dict[str, dict[int, list[int]]]:
  """Language-specific neurons from activation probabilities (the rule of Tang et al.'s released code).

  1. LAPE: each neuron's probabilities are normalised to sum to 1 across
     languages; its entropy is ``lape_entropy``.
  2. Filter: ``t_f`` is the k-th smallest of all ``probs`` values with
     ``k = round(n · filter_rate)``; a neuron whose probability exceeds ``t_f``
     in no language is dropped.
  3. Select: of the neurons left, the ``round(num_layers · mlp_dim · top_rate)``
     with the lowest entropy (ties: lower layer, then lower index).
  4. Assign: ``t_a`` is the k-th smallest value with ``k = round(n ·
     activation_bar_ratio)``; a selected neuron belongs to every language
     in which its probability exceeds ``t_a`` (so to several languages, or
     to none).

  Args:
    probs: [num_langs, num_layers, mlp_dim] from ``activation_probabilities``.
    langs: the language of each row of ``probs``.
    top_rate: the fraction of all neurons selected.
    filter_rate: the percentile (as a fraction) a neuron's top probability must exceed.
    activation_bar_ratio: the percentile a probability must exceed to assign a language.

  Returns:
    language → {layer: sorted neuron indices}, every language present (an
    empty dict when none is assigned to it).
  """
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 3 or probs.shape[0] != len(langs):
    raise ValueError(f"select_neurons: probs has shape {probs.shape}; want [{len(langs)} languages, layers, mlp_dim]")
  for name, rate in (("top_rate", top_rate), ("filter_rate", filter_rate),
                     ("activation_bar_ratio", activation_bar_ratio)):
    if not 0.0 <= rate <= 1.0:
      raise ValueError(f"select_neurons: {name}={rate} must be within [0, 1]")
  _, num_layers, mlp_dim = probs.shape
  per_neuron = np.moveaxis(probs, 0, -1)  # [layers, mlp_dim, langs]
  sorted_values = np.sort(probs.ravel())
  entropy = lape_entropy(probs).ravel()
  keep = (per_neuron > _kth_smallest(sorted_values, filter_rate)).any(-1).ravel()
  candidates = np.flatnonzero(keep)
  count = round(num_layers * mlp_dim * top_rate)
  chosen = candidates[np.argsort(entropy[candidates], kind="stable")[:count]]
  bar = _kth_smallest(sorted_values, activation_bar_ratio)
  result: dict[str, dict[int, list[int]]] = {lang: {} for lang in langs}
  for flat in sorted(chosen.tolist()):
    layer, neuron = divmod(flat, mlp_dim)
    for n, lang in enumerate(langs):
      if per_neuron[layer, neuron, n] > bar:
        result[lang].setdefault(layer, []).append(neuron)
  return result


# ----------------------------------------------------------------------------------------------------------------
# What deactivation does to perplexity.


def perplexity(model, token_ids: Sequence[Sequence[int]], *, batch_size: int = 8, seq_len: int = 512) -> float:
  """Token-level perplexity exp(−Σ log p / #tokens) over sequences (each truncated to ``seq_len``).

  The first token of each sequence is only context (put a BOS there);
  sequences of fewer than two tokens are skipped. Scored with ``decode.score``.
  """
  from polyglot_jax.decode.generate import score
  seqs = [list(map(int, s[:seq_len])) for s in token_ids if len(s) >= 2]
  if not seqs:
    raise ValueError("perplexity: no sequence has two or more tokens")
  total, count = 0.0, 0
  for start in range(0, len(seqs), batch_size):
    for logps in score(model, seqs[start:start + batch_size]):
      total += float(np.sum(logps, dtype=np.float64))
      count += len(logps)
  return math.exp(-total / count)


def random_like(neurons: Mapping[int, Sequence[int]], mlp_dim: int, rng: np.random.Generator) -> dict[int, list[int]]:
  """As many neurons per layer as ``neurons`` has, drawn uniformly without replacement."""
  return {int(layer): sorted(rng.choice(mlp_dim, size=len(idx), replace=False).tolist())
          for layer, idx in neurons.items() if len(idx)}


def deactivation_table(model, texts_by_lang: Mapping[str, Sequence[Sequence[int]]],
                       neurons_by_lang: Mapping[str, Mapping[int, Sequence[int]]], *, seed: int = 0,
                       batch_size: int = 8, seq_len: int = 512, progress: bool = False) -> dict:
  """Perplexity of every language with each language's neurons switched off, and with random ones.

  Args:
    model: a ``Decoder``.
    texts_by_lang: language → token-id sequences to measure perplexity on (BOS first).
    neurons_by_lang: language → {layer: neurons} (``select_neurons``); its
      languages are the rows of the table, those of ``texts_by_lang`` the columns.
    seed: seeds the random control: for each row, as many random neurons per
      layer as that language has, drawn with ``np.random.default_rng(seed)``
      in row order.
    batch_size: rows per scoring pass.
    seq_len: sequences are truncated to this many tokens.
    progress: show a tqdm bar over the rows.

  Returns:
    {"languages": columns, "base": {lang: ppl}, "num_neurons": {row: n},
    "deactivated" / "random": {row: {lang: ppl}}, and "delta" /
    "random_delta": {row: {lang: ppl − base ppl}}}.
  """
  cols = list(texts_by_lang)
  rng = np.random.default_rng(seed)

  def ppls(m):
    return {lang: perplexity(m, texts_by_lang[lang], batch_size=batch_size, seq_len=seq_len) for lang in cols}

  base = ppls(model)
  table = {"languages": cols, "base": base, "num_neurons": {}, "deactivated": {}, "random": {}, "delta": {},
           "random_delta": {}}
  for row in tqdm(list(neurons_by_lang), desc="deactivate", unit="lang", disable=not progress):
    neurons = {int(k): list(v) for k, v in neurons_by_lang[row].items()}
    table["num_neurons"][row] = sum(len(v) for v in neurons.values())
    random_neurons = random_like(neurons, model.cfg.mlp_dim, rng)
    for key, chosen in (("deactivated", neurons), ("random", random_neurons)):
      table[key][row] = ppls(deactivate(model, chosen))
    table["delta"][row] = {lang: table["deactivated"][row][lang] - base[lang] for lang in cols}
    table["random_delta"][row] = {lang: table["random"][row][lang] - base[lang] for lang in cols}
  return table


def plot_neurons(neurons_by_lang: Mapping[str, Mapping[int, Sequence[int]]], num_layers: int, path: str,
                 title: str = "") -> None:
  """Writes a PNG: the number of each language's selected neurons in every layer.

  Args:
    neurons_by_lang: language → {layer: neurons} (``select_neurons``).
    num_layers: the model's layers (the x axis).
    path: the PNG file to write.
    title: the figure title.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from matplotlib.ticker import MaxNLocator
  fig, ax = plt.subplots(figsize=(7, 4))
  for lang, neurons in neurons_by_lang.items():
    counts = [len(neurons.get(layer, ())) for layer in range(num_layers)]
    ax.plot(range(num_layers), counts, marker="o", label=lang)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("layer")
  ax.set_ylabel("language-specific neurons")
  ax.legend(loc="upper left")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
