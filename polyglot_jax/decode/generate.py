"""Batched generation with a KV cache, and per-token scoring.

``generate`` left-pads the prompts of a batch to a common length, fills the
KV cache with one prefill pass (``Decoder.decode`` over the whole prompt),
then runs jit'd one-token decode steps in a ``lax.scan``. Each row keeps its
own positions (0 at its first real token) and attends only to its own real
slots, so a prompt gives the same tokens alone or in any batch. Prompt and
total lengths are rounded up to buckets (multiples of ``LENGTH_BUCKET``), so
a run compiles once per (batch, bucket) pair, not once per prompt length.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyglot_jax import mesh as mesh_lib

LENGTH_BUCKET = 32


def _bucket(n: int) -> int:
  return max(LENGTH_BUCKET, -(-n // LENGTH_BUCKET) * LENGTH_BUCKET)


def sample_logits(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """Next tokens [B] from float32 logits: greedy at temperature 0, else top-k / top-p (nucleus) sampling.

  Args:
    logits_BxV: float32 logits.
    key: PRNG key.
    temperature: 0 for argmax; else logits are divided by it.
    top_k: keep the k most likely tokens (0: all).
    top_p: keep the smallest set whose probability reaches top_p (1.0: all).

  Returns:
    int32 token ids [B].
  """
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # The smallest logit still inside the nucleus (the top token always is).
    inside = cumulative - jax.nn.softmax(sorted_logits, axis=-1) < top_p
    cutoff = jnp.min(jnp.where(inside, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _combine(logits: tuple[jax.Array, ...]) -> jax.Array:
  """One model's logits, or proxy-tuning's large + (small tuned − small untuned)."""
  if len(logits) == 1:
    return logits[0]
  large, tuned, untuned = logits
  return large + (tuned - untuned)


@functools.partial(jax.jit, static_argnames=("graphdefs", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(graphdefs, states, tokens_BxP, lengths_B, key, *, max_new_tokens: int, temperature: float, top_k: int,
              top_p: float):
  b, p = tokens_BxP.shape
  total = _bucket(p + max_new_tokens)
  pad = p - lengths_B  # Left padding of each row.
  slots = jnp.arange(total)
  valid = (slots[None, :] >= pad[:, None]) & (slots[None, :] < p)
  positions = jnp.maximum(jnp.arange(p)[None, :] - pad[:, None], 0)
  lasts, caches = [], []
  for graphdef, state in zip(graphdefs, states):
    model = nnx.merge(graphdef, state)
    logits, cache = model.decode(tokens_BxP, positions, model.init_cache(b, total), jnp.int32(0),
                                 valid.astype(jnp.int32))
    lasts.append(logits[:, -1])
    caches.append(cache)

  def step(carry, i):
    last, caches, valid, params = carry
    token = sample_logits(last, jax.random.fold_in(key, i), temperature, top_k, top_p)
    slot = p + i
    valid = valid.at[:, slot].set(True)
    new_logits, new_caches = [], []
    for graphdef, state, cache in zip(graphdefs, params, caches):
      # The parameters ride in the carry and the module is merged inside the body: an nnx module
      # (and its own nnx.scan over layers) belongs to the trace level it was made in.
      logits, cache = nnx.merge(graphdef, state).decode(token[:, None], (lengths_B + i)[:, None], cache,
                                                        slot.astype(jnp.int32), valid.astype(jnp.int32))
      new_logits.append(logits[:, 0])
      new_caches.append(cache)
    return (_combine(tuple(new_logits)), tuple(new_caches), valid, params), token

  init = (_combine(tuple(lasts)), tuple(caches), valid, tuple(states))
  _, tokens = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
  return tokens.T


def generate(model, prompt_ids, max_new_tokens, *, temperature=0.0, top_k=0, top_p=1.0, stop_ids=(), seed=0):
  """Continues each prompt by up to ``max_new_tokens`` tokens.

  Args:
    model: a Decoder, e.g. ``polyglot_jax.load(path).model``.
    prompt_ids: token-id lists of any lengths (at least one token each).
    max_new_tokens: the most tokens added to each prompt.
    temperature: 0 (default) for greedy decoding; else the sampling temperature.
    top_k: sample among the k most likely tokens (0: no limit).
    top_p: sample from the smallest set of tokens whose probability reaches top_p.
    stop_ids: a row ends after the first of these it generates (the stop id is kept).
    seed: the sampling seed; the same seed gives the same tokens.

  Returns:
    The new tokens of each prompt (prompt excluded), ending at the first stop id.
  """
  return _run((model,), prompt_ids, max_new_tokens, temperature, top_k, top_p, stop_ids, seed)


def generate_proxy(large, tuned, untuned, prompt_ids, max_new_tokens, *, temperature=0.0, top_k=0, top_p=1.0,
                   stop_ids=(), seed=0):
  """Proxy-tuning: decodes with ``logits_large + (logits_tuned − logits_untuned)``.

  A small tuned/untuned pair steers a large model that shares their
  tokenizer (the three models must have the same vocabulary size). Arguments
  and result are those of ``generate``.
  """
  sizes = {m.cfg.vocab_size for m in (large, tuned, untuned)}
  if len(sizes) != 1:
    raise ValueError(f"proxy-tuning needs one vocabulary for the three models; got vocab sizes {sorted(sizes)}")
  return _run((large, tuned, untuned), prompt_ids, max_new_tokens, temperature, top_k, top_p, stop_ids, seed)


def _run(models, prompt_ids, max_new_tokens, temperature, top_k, top_p, stop_ids, seed):
  prompts = [list(map(int, p)) for p in prompt_ids]
  if not prompts:
    return []
  if any(not p for p in prompts):
    raise ValueError("generate: every prompt needs at least one token (a BOS id will do)")
  if max_new_tokens <= 0:
    return [[] for _ in prompts]
  width = _bucket(max(len(p) for p in prompts))
  mesh, rules = _mesh_of(models[0])
  # The batch is padded (with one-token rows, dropped after) to a multiple of its shard count.
  shards = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in mesh_lib.BATCH_AXES]))
  rows = -(-len(prompts) // shards) * shards
  tokens = np.zeros((rows, width), np.int32)
  lengths = np.ones((rows,), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    lengths[i] = len(p)
  split = [nnx.split(_unrolled(m, mesh, rules)) for m in models]
  with contextlib.ExitStack() as stack:
    if mesh is not None:
      stack.enter_context(mesh_lib.activate(mesh, rules))
    out = np.asarray(_generate(tuple(g for g, _ in split), tuple(s for _, s in split), jnp.asarray(tokens),
                               jnp.asarray(lengths), jax.random.PRNGKey(seed), max_new_tokens=int(max_new_tokens),
                               temperature=float(temperature), top_k=int(top_k), top_p=float(top_p)))
  stops = set(int(s) for s in stop_ids)
  results = []
  for row in out[:len(prompts)].tolist():
    for j, token in enumerate(row):
      if token in stops:
        row = row[:j + 1]
        break
    results.append(row)
  return results


def _unrolled(model, mesh, rules):
  """A scanned model as an unrolled one over per-layer slices of its arrays (made once per call).

  Decoding a scanned model would copy every layer's weights and cache slice
  out of the stacked arrays at every step; slicing them once here lets each
  step update per-layer caches in place. Models with extra per-layer state
  (a neuron mask) decode as they are.
  """
  if not model.cfg.scan_layers:
    return model
  import dataclasses

  from polyglot_jax import configs
  from polyglot_jax.models.decoder import Decoder
  graphdef, state = nnx.split(model)
  pure = nnx.to_pure_dict(state)
  blocks = pure.pop("blocks")
  if any("neuron_mask" in path for path in _paths(blocks)):
    return model
  cfg = dataclasses.replace(model.cfg, scan_layers=False)
  pure["blocks"] = {i: jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(cfg.num_layers)}
  with mesh_lib.activate(mesh if mesh is not None else mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]),
                         rules or configs.DEFAULT_RULES):
    abstract = nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=0)))
  new_graphdef, new_state = nnx.split(abstract)
  nnx.replace_by_pure_dict(new_state, pure)
  return nnx.merge(new_graphdef, new_state)


def _paths(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _paths(v, prefix + (k,))
  else:
    yield prefix


def _mesh_of(model):
  """(mesh, logical rules) the model's parameters are sharded over; (None, None) on one device.

  The rules are those active (``mesh.activate``) when generate is called, else
  ``configs.DEFAULT_RULES``; they place the KV cache (``attention.CACHE_AXES``).
  """
  from flax.core import spmd

  from polyglot_jax import configs
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    sharding = getattr(leaf, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and mesh.size > 1:
      return mesh, spmd.get_logical_axis_rules() or configs.DEFAULT_RULES
    break
  return None, None


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_logps(graphdef, state, tokens_BxL, segment_ids_BxL):
  from polyglot_jax.objectives.lm import decoder_outputs, token_losses
  model = nnx.merge(graphdef, state)
  # Through the LM loss's path: chunked cross-entropy (no [B, L, V] logits) above its size threshold.
  out, _ = decoder_outputs(model, tokens_BxL, segment_ids_BxL, None)
  targets_BxL = jnp.pad(tokens_BxL[:, 1:], ((0, 0), (0, 1)))
  ce_BxL, _ = token_losses(out, targets_BxL)
  return -ce_BxL[:, :-1]


def score(model, token_ids: Sequence[Sequence[int]], prompt_lengths: Sequence[int] | None = None) -> list[np.ndarray]:
  """Per-token log-probabilities of sequences under the model.

  Args:
    model: a Decoder, e.g. ``polyglot_jax.load(path).model``.
    token_ids: token-id lists (each with at least two tokens; the first is only context).
    prompt_lengths: per sequence, how many leading tokens are the prompt; only the
      tokens after it are scored. None scores every token but the first.

  Returns:
    Per sequence, a float32 array of log p(token_t | tokens before t) for the
    scored tokens, in order (sum it for the sequence log-probability).
  """
  seqs = [list(map(int, s)) for s in token_ids]
  if not seqs:
    return []
  starts = [1] * len(seqs) if prompt_lengths is None else [max(int(n), 1) for n in prompt_lengths]
  if len(starts) != len(seqs):
    raise ValueError(f"score: {len(seqs)} sequences but {len(starts)} prompt lengths")
  width = _bucket(max(len(s) for s in seqs))
  tokens = np.zeros((len(seqs), width), np.int32)
  segments = np.zeros((len(seqs), width), np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
    segments[i, :len(s)] = 1
  graphdef, state = nnx.split(model)
  logps = np.asarray(_token_logps(graphdef, state, jnp.asarray(tokens), jnp.asarray(segments)))
  # logps[:, t - 1] is the log-probability of token t.
  return [logps[i, start - 1:len(s) - 1].astype(np.float32) for i, (s, start) in enumerate(zip(seqs, starts))]
