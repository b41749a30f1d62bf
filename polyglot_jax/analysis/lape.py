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

Mixture-of-experts layers (models/moe.py): the unit is a neuron of one
expert. Within a layer, neurons are numbered flat, ``layer_widths`` of them:
a dense layer's ``mlp_dim`` SwiGLU neurons; an MoE layer's expert j neuron f
is ``j · mlp_dim + f`` (j < num_experts), followed by the neurons of its shared
experts (``config.model.moe_shared_experts``), if any. A routed expert's
neuron counts only the tokens the router sends to that expert (one of their
top-k experts): its activation probability is the fraction of those tokens
on which ``silu(x W_gate[j]) > 0``. Shared-expert neurons see every token.
Arrays over neurons are ``[..., layers, max(layer_widths)]``; in a model that
mixes dense and MoE layers the entries past a layer's width are padding
(NaN in probabilities, 0 in counts).
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
from polyglot_jax.models.moe import route

# Token rows are padded up to a multiple of this (one compile per width, not per text length).
_WIDTH_BUCKET = 32


# ----------------------------------------------------------------------------------------------------------------
# The intervention.


def _blocks(model) -> list:
  """The decoder blocks (one stacked block when layers are scanned)."""
  return [model.blocks] if model.cfg.scan_layers else list(model.blocks)


def _is_moe(block) -> bool:
  return hasattr(block, "moe")


def _shared_width(cfg) -> int:
  """Neurons of an MoE layer's shared experts (0 without them)."""
  return cfg.mlp_dim * cfg.moe_shared_experts


def layer_widths(model) -> list[int]:
  """The number of neurons (LAPE units) in each layer.

  Args:
    model: a ``Decoder``.

  Returns:
    One int per layer: ``mlp_dim`` for a dense layer; ``num_experts · mlp_dim`` plus the
    shared experts' ``moe_shared_experts · mlp_dim`` for an MoE layer.
  """
  cfg = model.cfg
  moe = set(cfg.moe_layer_ids())
  moe_width = cfg.num_experts * cfg.mlp_dim + _shared_width(cfg)
  return [moe_width if layer in moe else cfg.mlp_dim for layer in range(cfg.num_layers)]


def _unit_masks(model) -> list:
  """Per block (scanned: the one stacked block), the module holding the record of switched-off neurons."""
  return [block.moe if _is_moe(block) else block.mlp for block in _blocks(model)]


def neuron_mask(model) -> np.ndarray:
  """The model's neuron multipliers ``[num_layers, max(layer_widths)]`` (all ones for a model without a mask).

  Args:
    model: a ``Decoder``, e.g. a copy made by ``deactivate``.

  Returns:
    float32 multipliers, 0 at switched-off neurons; entries past a layer's width (a model mixing
    dense and MoE layers) are NaN.
  """
  cfg = model.cfg
  widths = layer_widths(model)
  out = np.full((cfg.num_layers, max(widths)), np.nan, np.float32)
  for layer, width in enumerate(widths):
    out[layer, :width] = 1.0
  holders = _unit_masks(model)
  if cfg.scan_layers:
    if getattr(holders[0], "neuron_mask", None) is not None:
      out[:, :widths[0]] = np.asarray(holders[0].neuron_mask[...], np.float32)
    return out
  for layer, holder in enumerate(holders):
    if getattr(holder, "neuron_mask", None) is not None:
      out[layer, :widths[layer]] = np.asarray(holder.neuron_mask[...], np.float32)
  return out


def _mask_moe(moe, original_down, mask, num_experts: int, mlp_dim: int) -> None:
  """Applies an MoE layer's multipliers (last dim: its flat neurons) to ``moe`` of a copy.

  A routed expert's neuron is switched off by zeroing its row of that expert's down_proj (what it
  writes to the residual stream; models/moe.py has no mask of its own); the shared experts are a
  SwiGLU and get a ``NeuronMask``. ``moe.neuron_mask`` records the multipliers for ``neuron_mask``.
  """
  routed = num_experts * mlp_dim
  lead = mask.shape[:-1]  # (layers,) for a scanned stack, () for one block.
  experts = mask[..., :routed].reshape(lead + (num_experts, mlp_dim, 1))
  # A new Variable (same metadata): the caller's model keeps its own down_proj.
  moe.down_proj = moe.down_proj.replace(original_down * jnp.asarray(experts, original_down.dtype))
  if hasattr(moe, "shared"):
    moe.shared.neuron_mask = NeuronMask(jnp.asarray(mask[..., routed:]))
  moe.neuron_mask = NeuronMask(jnp.asarray(mask))


def deactivate(model, neurons: Mapping[int, Sequence[int]]):
  """A copy of ``model`` with the given neurons switched off (their activation set to 0).

  The copy adds a ``NeuronMask`` to every SwiGLU block; in an MoE layer it zeroes the
  switched-off expert neurons' rows of the expert ``down_proj`` (the copy gets its own array for
  it) and masks its shared experts. Every other parameter array is shared with the caller's
  model, which is not changed. Deactivating a copy again keeps its earlier zeros.

  Args:
    model: a ``Decoder`` (layers scanned or unrolled, dense or MoE).
    neurons: layer index → neuron indices in [0, width) to switch off, width from
      ``layer_widths`` (``mlp_dim`` for a dense layer; in an MoE layer expert j's neuron f is
      ``j · mlp_dim + f``).

  Returns:
    The deactivated copy; call it, generate or score with it as with any model.
  """
  cfg = model.cfg
  widths = layer_widths(model)
  mask = neuron_mask(model)
  for layer, idx in neurons.items():
    layer = int(layer)
    if not 0 <= layer < cfg.num_layers:
      raise ValueError(f"deactivate: layer {layer} is out of range; the model has {cfg.num_layers} layers")
    idx = np.asarray(list(idx), np.int64)
    width = widths[layer]
    if idx.size and (idx.min() < 0 or idx.max() >= width):
      what = "mlp_dim" if layer not in cfg.moe_layer_ids() else \
          "num_experts × mlp_dim" + (" + the shared experts' neurons" if cfg.moe_shared_experts else "")
      raise ValueError(f"deactivate: layer {layer} names neurons outside [0, {width}) ({what})")
    mask[layer, idx] = 0.0
  copy = nnx.clone(model)
  originals = [block.moe.down_proj[...] if _is_moe(block) else None for block in _blocks(model)]
  for i, (block, holder) in enumerate(zip(_blocks(copy), _unit_masks(copy))):
    # Scanned: the stacked block's variables carry a leading layers axis; nnx.scan slices the mask with them.
    layer_mask = mask[:, :widths[0]] if cfg.scan_layers else mask[i, :widths[i]]
    if _is_moe(block):
      _mask_moe(holder, originals[i], layer_mask, cfg.num_experts, cfg.mlp_dim)
    else:
      holder.neuron_mask = NeuronMask(jnp.asarray(layer_mask))
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


def _dense_counts(gate_ExF, m_TxE, real_T, dt):
  """([F] tokens on which each neuron's silu(gate) is positive, [F] real tokens): every token counts."""
  active_TxF = (jax.nn.silu(dense(m_TxE, gate_ExF, dt)) > 0) & real_T[:, None]
  width = gate_ExF.shape[-1]
  return jnp.sum(active_TxF, axis=0, dtype=jnp.int32), jnp.full((width,), jnp.sum(real_T, dtype=jnp.int32))


def _moe_counts(moe, m_TxE, real_T):
  """An MoE layer's (active [W], tokens [W]) over its flat neurons (experts, then shared experts).

  Routed expert j's neurons count only the real tokens whose top-k experts (the router's choice,
  models/moe.route) include j; both numbers are over those tokens.
  """
  n = moe.num_experts
  x_TxE = m_TxE.astype(moe.dtype)
  indices_TxK, _, _ = route(moe.router_logits(x_TxE), moe.top_k)
  routed_NxT = (jnp.any(indices_TxK[None, :, :] == jnp.arange(n)[:, None, None], axis=-1)
                & real_T[None, :])

  def expert(args):  # One expert at a time: [T, F] live, not [T, N, F].
    gate_ExF, routed_T = args
    active_TxF = (jax.nn.silu(dense(x_TxE, gate_ExF, moe.dtype)) > 0) & routed_T[:, None]
    return jnp.sum(active_TxF, axis=0, dtype=jnp.int32)

  active_NxF = jax.lax.map(expert, (moe.gate_proj[...], routed_NxT))
  f = active_NxF.shape[-1]
  active = [active_NxF.reshape(n * f)]
  tokens = [jnp.repeat(jnp.sum(routed_NxT, axis=1, dtype=jnp.int32), f, total_repeat_length=n * f)]
  if hasattr(moe, "shared"):
    a, t = _dense_counts(moe.shared.gate_proj[...], m_TxE, real_T, moe.shared.dtype)
    active.append(a)
    tokens.append(t)
  return jnp.concatenate(active), jnp.concatenate(tokens)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _active_counts(graphdef, state, tokens_BxL, segment_ids_BxL):
  """Per layer, int32 (active [W], tokens [W]) over its neurons (scanned layers: stacked [layers, W])."""
  model = nnx.merge(graphdef, state)
  cfg = model.cfg
  positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
  cos, sin = rope_tables(positions_BxL, cfg.head_dim, cfg.rope_theta)
  real_T = (segment_ids_BxL > 0).reshape(-1)

  # Block.__call__ replayed so that the feed-forward input (not in the residual stream) is at hand.
  def layer(block, x_BxLxE):
    x_BxLxE = x_BxLxE + block.attn(block.attn_norm(x_BxLxE), cos, sin, segment_ids_BxL)
    m_BxLxE = block.mlp_norm(x_BxLxE)
    m_TxE = m_BxLxE.reshape(-1, m_BxLxE.shape[-1])
    if _is_moe(block):
      counts = _moe_counts(block.moe, m_TxE, real_T)
    else:
      counts = _dense_counts(block.mlp.gate_proj[...], m_TxE, real_T, block.mlp.dtype)
    return x_BxLxE + block.ffn(m_BxLxE, segment_ids_BxL)[0], counts

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
  return counts


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


def activation_counts(model, texts_by_lang: Mapping[str, Sequence[Sequence[int]]], *, batch_size: int = 8,
                      seq_len: int = 512, progress: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Per language and neuron: on how many tokens it is active, out of how many it saw.

  A neuron is active on a token when ``silu(x W_gate) > 0`` (the activation
  function's output, LAPE's definition), with x the block's normalised
  feed-forward input. A dense layer's neurons see every token; a routed
  expert's neurons see the tokens routed to that expert (see the module
  docstring). Every token of every sequence counts (a BOS included, if the
  caller put one); sequences longer than ``seq_len`` are cut into
  consecutive windows that are run separately.

  Args:
    model: a ``Decoder`` (dense, MoE or mixed; layers scanned or unrolled).
    texts_by_lang: language → token-id sequences.
    batch_size: rows per forward pass.
    seq_len: the longest window run at once.
    progress: show a tqdm bar per language.

  Returns:
    (languages in the order given, active, tokens): int64 ``[num_langs, num_layers,
    max(layer_widths)]`` each; 0 in both past a layer's width.
  """
  graphdef, state = nnx.split(model)
  widths = layer_widths(model)
  langs = list(texts_by_lang)
  active = np.zeros((len(langs), len(widths), max(widths)), np.int64)
  seen = np.zeros_like(active)
  for n, lang in enumerate(langs):
    rows = _chunks(texts_by_lang[lang], seq_len)
    if not sum(len(r) for r in rows):
      raise ValueError(f"activation_counts: language '{lang}' has no tokens")
    batches = _padded_batches(rows, batch_size)
    for tokens, segments in tqdm(batches, total=-(-len(rows) // batch_size), desc=f"activations {lang}",
                                 unit="batch", disable=not progress):
      out = jax.device_get(_active_counts(graphdef, state, jnp.asarray(tokens), jnp.asarray(segments)))
      per_layer = list(zip(*out)) if model.cfg.scan_layers else out
      for layer, (a, t) in enumerate(per_layer):
        active[n, layer, :widths[layer]] += a
        seen[n, layer, :widths[layer]] += t
  return langs, active, seen


def activation_probabilities(model, texts_by_lang: Mapping[str, Sequence[Sequence[int]]], *, batch_size: int = 8,
                             seq_len: int = 512, progress: bool = False) -> tuple[list[str], np.ndarray]:
  """Per language, the fraction of tokens on which each neuron is active (``activation_counts``).

  For a routed expert's neuron the fraction is over the language's tokens
  routed to that expert; it is 0 when none were.

  Args:
    model: a ``Decoder``.
    texts_by_lang: language → token-id sequences.
    batch_size: rows per forward pass.
    seq_len: the longest window run at once.
    progress: show a tqdm bar per language.

  Returns:
    (languages in the order given, float64 probabilities ``[num_langs, num_layers,
    max(layer_widths)]``, NaN past a layer's width). For a dense model: ``[.., .., mlp_dim]``.
  """
  langs, active, seen = activation_counts(model, texts_by_lang, batch_size=batch_size, seq_len=seq_len,
                                          progress=progress)
  probs = np.divide(active, seen, out=np.zeros(active.shape, np.float64), where=seen > 0)
  widths = layer_widths(model)
  for layer, width in enumerate(widths):
    probs[:, layer, width:] = np.nan
  return langs, probs


# ----------------------------------------------------------------------------------------------------------------
# Selection.


def _kth_smallest(sorted_values: np.ndarray, rate: float) -> float:
  """torch's ``kthvalue(round(n * rate))``: the k-th smallest value, k counted from 1 (clamped to [1, n])."""
  k = min(max(round(len(sorted_values) * rate), 1), len(sorted_values))
  return float(sorted_values[k - 1])


def lape_entropy(probs: np.ndarray) -> np.ndarray:
  """Entropy (nats) [num_layers, width] of each neuron's probabilities normalised across languages.

  A neuron active in no language gets 0 (as in the paper's code); ``select_neurons``
  filters those out by their low activation probability. Padding (NaN probabilities past a
  layer's width) stays NaN.

  Args:
    probs: [num_langs, num_layers, width] from ``activation_probabilities``.

  Returns:
    float64 [num_layers, width].
  """
  p = np.moveaxis(np.asarray(probs, np.float64), 0, -1)
  total = p.sum(-1, keepdims=True)
  normed = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
  logs = np.log(normed, out=np.zeros_like(normed), where=normed > 0)
  return np.where(np.isnan(total[..., 0]), np.nan, -(normed * logs).sum(-1))


def select_neurons(probs: np.ndarray, langs: Sequence[str], *, top_rate: float = 0.01, filter_rate: float = 0.95,
                   activation_bar_ratio: float = 0.95) -> dict[str, dict[int, list[int]]]:
  """Language-specific neurons from activation probabilities (the rule of Tang et al.'s released code).

  1. LAPE: each neuron's probabilities are normalised to sum to 1 across
     languages; its entropy is ``lape_entropy``.
  2. Filter: ``t_f`` is the k-th smallest of all ``probs`` values with
     ``k = round(n · filter_rate)``; a neuron whose probability exceeds ``t_f``
     in no language is dropped.
  3. Select: of the neurons left, the ``round(number of neurons · top_rate)``
     with the lowest entropy (ties: lower layer, then lower index).
  4. Assign: ``t_a`` is the k-th smallest value with ``k = round(n ·
     activation_bar_ratio)``; a selected neuron belongs to every language
     in which its probability exceeds ``t_a`` (so to several languages, or
     to none).

  Padding entries (NaN past a layer's width, in a model mixing dense and MoE
  layers) are not neurons: they count in none of n, the percentiles or the
  number selected.

  Args:
    probs: [num_langs, num_layers, width] from ``activation_probabilities``.
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
    raise ValueError(f"select_neurons: probs has shape {probs.shape}; want [{len(langs)} languages, layers, neurons]")
  for name, rate in (("top_rate", top_rate), ("filter_rate", filter_rate),
                     ("activation_bar_ratio", activation_bar_ratio)):
    if not 0.0 <= rate <= 1.0:
      raise ValueError(f"select_neurons: {name}={rate} must be within [0, 1]")
  width = probs.shape[2]
  per_neuron = np.moveaxis(probs, 0, -1)  # [layers, width, langs]
  real = ~np.isnan(per_neuron).any(-1)  # [layers, width]: False on padding.
  sorted_values = np.sort(probs[:, real].ravel())
  entropy = lape_entropy(probs).ravel()
  keep = (per_neuron > _kth_smallest(sorted_values, filter_rate)).any(-1).ravel() & real.ravel()
  candidates = np.flatnonzero(keep)
  count = round(int(real.sum()) * top_rate)
  chosen = candidates[np.argsort(entropy[candidates], kind="stable")[:count]]
  bar = _kth_smallest(sorted_values, activation_bar_ratio)
  result: dict[str, dict[int, list[int]]] = {lang: {} for lang in langs}
  for flat in sorted(chosen.tolist()):
    layer, neuron = divmod(flat, width)
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

  Args:
    model: a ``Decoder`` (or a ``deactivate`` copy).
    token_ids: token-id sequences, BOS first.
    batch_size: sequences per scoring pass.
    seq_len: sequences are truncated to this many tokens.

  Returns:
    The perplexity (a float).
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


def random_like(neurons: Mapping[int, Sequence[int]], widths: int | Sequence[int],
                rng: np.random.Generator) -> dict[int, list[int]]:
  """As many neurons per layer as ``neurons`` has, drawn uniformly without replacement.

  Args:
    neurons: layer → neuron indices (only their counts matter).
    widths: the neurons of every layer (an int: the same in all; else ``layer_widths``).
    rng: the generator drawn from, layer by layer in ``neurons``' order.

  Returns:
    layer → sorted random neuron indices (layers with none left out).
  """
  def width(layer):
    return widths if isinstance(widths, (int, np.integer)) else widths[layer]
  return {int(layer): sorted(rng.choice(width(int(layer)), size=len(idx), replace=False).tolist())
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
    random_neurons = random_like(neurons, layer_widths(model), rng)
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
