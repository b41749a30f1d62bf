"""Chunked (fused) LM head + cross-entropy: the float32 [tokens, vocab] logits never exist whole.

The head matmul, the log-partition and the target logit are computed one
token chunk at a time inside a ``lax.scan``; only [chunk, vocab] logits live
at once. The gradient is a ``jax.custom_vjp`` that saves the per-token
log-partition and, chunk by chunk, recomputes the logits and forms
``dlogits = (g_ce + g_logz)·softmax − g_ce·onehot`` directly. We chose it over
``scan`` + ``jax.checkpoint`` with autodiff because:
- the backward pass reuses the saved log-partition instead of redoing the
  max/exp/sum reductions and then differentiating through them (one matmul,
  one exp and two matmuls per chunk, nothing else);
- the head gradient is accumulated across chunks in float32 whatever the
  compute dtype (autodiff of a bfloat16 head would sum the chunks in bfloat16);
- the memory bound does not depend on how scan's partial evaluation treats
  the checkpointed residuals.

Chunks are strided: chunk j holds tokens ``c·n + j`` (n chunks). Tokens come
sharded over the batch in contiguous blocks, so every chunk keeps the same
sharding and each device works on its own part of every chunk.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Auto mode keeps one chunk's float32 logits within this many bytes.
MAX_CHUNK_LOGITS_BYTES = 64 * 2**20


def resolve_chunk_size(tokens: int, vocab_size: int, ce_chunk_size: int, threshold_bytes: int) -> int:
  """The token chunk of the chunked cross-entropy for a micro-batch, or 0 for the plain path.

  Args:
    tokens: tokens in the micro-batch (B·L).
    vocab_size: V.
    ce_chunk_size: ``config.model.ce_chunk_size``: -1 auto, 0 off, > 0 that chunk.
    threshold_bytes: auto chunks only when the float32 logits (tokens·V·4) exceed this.

  Returns:
    The chunk size (≤ tokens), or 0 when the plain full-logits path is used.
  """
  if ce_chunk_size > 0:
    return min(ce_chunk_size, tokens)
  if ce_chunk_size == 0 or tokens * vocab_size * 4 <= threshold_bytes:
    return 0
  max_chunk = max(1, MAX_CHUNK_LOGITS_BYTES // (4 * vocab_size))
  num_chunks = math.ceil(tokens / max_chunk)
  # Prefer a chunk count that divides the tokens (no padding), if one is near.
  for n in range(num_chunks, min(2 * num_chunks, tokens) + 1):
    if tokens % n == 0:
      return tokens // n
  return max_chunk


def _chunk_logits(h_CxE, head_ExV):
  return jnp.matmul(h_CxE, head_ExV, preferred_element_type=jnp.float32)


def _forward_chunks(h_NxCxE, head_ExV, targets_NxC):
  """Per-chunk (ce, log_z), each float32 [N, C]."""
  def step(_, xs):
    h_CxE, t_C = xs
    logits_CxV = _chunk_logits(h_CxE, head_ExV)
    log_z_C = jax.nn.logsumexp(logits_CxV, axis=-1)
    target_logit_C = jnp.take_along_axis(logits_CxV, t_C[:, None], axis=-1)[:, 0]
    return None, (log_z_C - target_logit_C, log_z_C)
  _, (ce_NxC, log_z_NxC) = jax.lax.scan(step, None, (h_NxCxE, targets_NxC))
  return ce_NxC, log_z_NxC


@jax.custom_vjp
def _fused_ce(h_NxCxE, head_ExV, targets_NxC):
  return _forward_chunks(h_NxCxE, head_ExV, targets_NxC)


def _fused_ce_fwd(h_NxCxE, head_ExV, targets_NxC):
  ce_NxC, log_z_NxC = _forward_chunks(h_NxCxE, head_ExV, targets_NxC)
  return (ce_NxC, log_z_NxC), (h_NxCxE, head_ExV, targets_NxC, log_z_NxC)


def _fused_ce_bwd(residuals, cotangents):
  h_NxCxE, head_ExV, targets_NxC, log_z_NxC = residuals
  g_ce_NxC, g_log_z_NxC = cotangents
  vocab = head_ExV.shape[1]

  def step(dhead_ExV, xs):
    h_CxE, t_C, log_z_C, g_ce_C, g_log_z_C = xs
    probs_CxV = jnp.exp(_chunk_logits(h_CxE, head_ExV) - log_z_C[:, None])
    onehot_CxV = jax.nn.one_hot(t_C, vocab, dtype=jnp.float32)
    dlogits_CxV = (g_ce_C + g_log_z_C)[:, None] * probs_CxV - g_ce_C[:, None] * onehot_CxV
    dlogits_CxV = dlogits_CxV.astype(h_CxE.dtype)
    dh_CxE = jnp.matmul(dlogits_CxV, head_ExV.T, preferred_element_type=jnp.float32).astype(h_CxE.dtype)
    dhead_ExV = dhead_ExV + jnp.matmul(h_CxE.T, dlogits_CxV, preferred_element_type=jnp.float32)
    return dhead_ExV, dh_CxE

  dhead_ExV, dh_NxCxE = jax.lax.scan(
      step, jnp.zeros(head_ExV.shape, jnp.float32),
      (h_NxCxE, targets_NxC, log_z_NxC, g_ce_NxC.astype(jnp.float32), g_log_z_NxC.astype(jnp.float32)))
  return dh_NxCxE, dhead_ExV.astype(head_ExV.dtype), None


_fused_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd)


def chunked_token_cross_entropy(hidden_TxE: jax.Array, head_ExV: jax.Array, targets_T: jax.Array, *,
                                chunk_size: int):
  """Per-token cross-entropy and log-partition of ``hidden @ head``, one token chunk at a time.

  Equals ``objectives.lm.token_cross_entropy(hidden @ head, targets)`` (values and
  gradients w.r.t. hidden and head) without building the [T, V] logits.

  Args:
    hidden_TxE: final hidden states in the compute dtype (the matmul accumulates in float32).
    head_ExV: the output head in the compute dtype (tied: embedding.T).
    targets_T: int target ids.
    chunk_size: tokens per chunk, > 0. T need not be a multiple: the last tokens are
      padded with zeros and the padding's outputs are dropped (its gradient is zero).

  Returns:
    (ce_T, log_z_T), both float32.
  """
  t, e = hidden_TxE.shape
  if chunk_size <= 0:
    raise ValueError(f"chunked_token_cross_entropy: chunk_size={chunk_size}; use a positive token count")
  chunk_size = min(chunk_size, t)
  num_chunks = -(-t // chunk_size)
  pad = num_chunks * chunk_size - t
  if pad:
    hidden_TxE = jnp.pad(hidden_TxE, ((0, pad), (0, 0)))
    targets_T = jnp.pad(targets_T, (0, pad))
  # Strided chunks (see the module docstring): token c·n + j is row c of chunk j.
  h_NxCxE = hidden_TxE.reshape(chunk_size, num_chunks, e).swapaxes(0, 1)
  targets_NxC = targets_T.astype(jnp.int32).reshape(chunk_size, num_chunks).T
  ce_NxC, log_z_NxC = _fused_ce(h_NxCxE, head_ExV, targets_NxC)
  return ce_NxC.T.reshape(-1)[:t], log_z_NxC.T.reshape(-1)[:t]
