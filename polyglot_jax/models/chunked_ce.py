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

When the caller needs only a weighted loss sum, not differentiable per-token
values (the lm, sft and prealign objectives), ``chunked_weighted_ce_sum``
goes further: its cotangent is one scalar, so the gradients of the head and
of the hidden states are formed in the forward chunk loop, while each
chunk's logits are live, and the backward pass only scales them. Nothing is
recomputed, so the step costs the same three T·E·V matmuls as the plain
path. DPO and ``score`` need per-token log-probs with arbitrary cotangents
and keep ``chunked_token_cross_entropy`` (one logits recompute backward).

Chunks are strided: chunk j holds tokens ``c·n + j`` (n chunks). Tokens come
sharded over the batch in contiguous blocks, so every chunk keeps the same
sharding and each device works on its own part of every chunk.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from polyglot_jax import mesh as mesh_lib

# Auto mode keeps one chunk's float32 logits within this many bytes per device: on the host CPU, and on an
# accelerator, where each chunk also costs collectives under FSDP (the head gathered, its gradient reduced), so
# chunks are fewer and bigger (512 MiB: 512 tokens per device at a 256k vocabulary).
MAX_CHUNK_LOGITS_BYTES = 64 * 2**20
MAX_CHUNK_LOGITS_BYTES_ACCELERATOR = 512 * 2**20


def max_chunk_bytes(platform: str) -> int:
  """Auto mode's per-device bytes of one chunk's float32 logits on ``platform`` ("cpu", "gpu", "tpu")."""
  return MAX_CHUNK_LOGITS_BYTES if platform == "cpu" else MAX_CHUNK_LOGITS_BYTES_ACCELERATOR


def resolve_chunk_size(tokens: int, vocab_size: int, ce_chunk_size: int, threshold_bytes: int,
                       shards: int = 1, max_bytes: int = MAX_CHUNK_LOGITS_BYTES) -> int:
  """The token chunk of the chunked cross-entropy for a micro-batch, or 0 for the plain path.

  Auto mode sizes by what one device holds: a chunk's rows are spread over the
  ``shards`` devices the batch is split over (see the module docstring), so a
  chunk of C tokens puts C/shards rows of float32 logits on each.

  Args:
    tokens: tokens in the micro-batch (B·L), all devices together.
    vocab_size: V.
    ce_chunk_size: ``config.model.ce_chunk_size``: -1 auto, 0 off, > 0 that chunk (all devices together).
    threshold_bytes: auto chunks only when one device's float32 logits ((tokens/shards)·V·4) exceed this.
    shards: how many devices the batch (token) dimension is split over; 1 off a mesh.
    max_bytes: auto mode's bound on one device's float32 logits per chunk (``max_chunk_bytes``).

  Returns:
    The chunk size (≤ tokens, all devices together), or 0 when the plain full-logits path is used.
    In auto mode the number of chunks divides tokens/shards when a divisor is near, so each device
    holds the same rows of every chunk.
  """
  if ce_chunk_size > 0:
    return min(ce_chunk_size, tokens)
  if shards < 1 or tokens % shards:
    shards = 1
  local = tokens // shards
  if ce_chunk_size == 0 or local * vocab_size * 4 <= threshold_bytes:
    return 0
  max_chunk = max(1, max_bytes // (4 * vocab_size))  # Rows per device.
  num_chunks = math.ceil(local / max_chunk)
  # Prefer a chunk count that divides each device's tokens (no padding), if one is near.
  for n in range(num_chunks, min(2 * num_chunks, local) + 1):
    if local % n == 0:
      return tokens // n
  return min(max_chunk * shards, tokens)


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


def _chunk_grads(h_CxE, head_ExV, logits_CxV, log_z_C, t_C, g_ce_C, g_log_z_C):
  """(dh [C, E] in h's dtype, dhead [E, V] float32) of one chunk, given the cotangents of ce and log_z.

  d ce/d logits = softmax − onehot(target) and d log_z/d logits = softmax.
  """
  probs_CxV = jnp.exp(logits_CxV - log_z_C[:, None])
  onehot_CxV = jax.nn.one_hot(t_C, head_ExV.shape[1], dtype=jnp.float32)
  dlogits_CxV = (g_ce_C + g_log_z_C)[:, None] * probs_CxV - g_ce_C[:, None] * onehot_CxV
  dlogits_CxV = dlogits_CxV.astype(h_CxE.dtype)
  dh_CxE = jnp.matmul(dlogits_CxV, head_ExV.T, preferred_element_type=jnp.float32).astype(h_CxE.dtype)
  return dh_CxE, jnp.matmul(h_CxE.T, dlogits_CxV, preferred_element_type=jnp.float32)


def _scan_chunks(chunk, head_ExV, h_NxCxE, *token_arrays_NxC):
  """Runs ``chunk(head, h_CxE, *token_C) -> (dhead_ExV, per-token outputs)`` over the chunks, summing dhead.

  Under a mesh whose "batch" axes split each chunk's rows over S devices, the
  body is mapped over those S row blocks with one float32 head-gradient
  accumulator per block ([S, E, V], S sharded like the rows), and the head
  is gathered over its FSDP axes once, before the loop: the loop body needs
  no collective, and the S accumulators are summed once, after it (a
  single [E, V] accumulator would be all-reduced in every chunk).

  Returns:
    (dhead_ExV float32, the per-token outputs stacked back to [N, C, ...]).
  """
  n, c = h_NxCxE.shape[:2]
  shards = mesh_lib.logical_axis_size("batch")
  if c % shards:
    shards = 1
  split = lambda x: x.reshape(n, shards, c // shards, *x.shape[2:])  # noqa: E731
  head_ExV = mesh_lib.constrain(head_ExV, (None, "act_vocab"))
  xs = (mesh_lib.constrain(split(h_NxCxE), (None, "batch", None, None)), *map(split, token_arrays_NxC))

  def step(dhead_SxExV, xs_S):
    dhead_chunk_SxExV, outputs = jax.vmap(functools.partial(chunk, head_ExV))(*xs_S)
    return dhead_SxExV + dhead_chunk_SxExV, outputs

  init = mesh_lib.constrain(jnp.zeros((shards, *head_ExV.shape), jnp.float32), ("batch", None, "act_vocab"))
  dhead_SxExV, outputs = jax.lax.scan(step, init, xs)
  return jnp.sum(dhead_SxExV, axis=0), jax.tree.map(lambda x: x.reshape(n, c, *x.shape[3:]), outputs)


def _fused_ce_bwd(residuals, cotangents):
  h_NxCxE, head_ExV, targets_NxC, log_z_NxC = residuals
  g_ce_NxC, g_log_z_NxC = cotangents

  def chunk(head_ExV, h_CxE, t_C, log_z_C, g_ce_C, g_log_z_C):
    logits_CxV = _chunk_logits(h_CxE, head_ExV)
    dh_CxE, dhead_ExV = _chunk_grads(h_CxE, head_ExV, logits_CxV, log_z_C, t_C, g_ce_C, g_log_z_C)
    return dhead_ExV, dh_CxE

  dhead_ExV, dh_NxCxE = _scan_chunks(chunk, head_ExV, h_NxCxE, targets_NxC, log_z_NxC,
                                     g_ce_NxC.astype(jnp.float32), g_log_z_NxC.astype(jnp.float32))
  return dh_NxCxE, dhead_ExV.astype(head_ExV.dtype), None


_fused_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd)


def _to_chunks(hidden_TxE, targets_T, chunk_size: int, *token_arrays):
  """Strided chunk layout: token c·n + j is row c of chunk j; the last tokens padded with zeros."""
  t, e = hidden_TxE.shape
  if chunk_size <= 0:
    raise ValueError(f"chunked cross-entropy: chunk_size={chunk_size}; use a positive token count")
  chunk_size = min(chunk_size, t)
  num_chunks = -(-t // chunk_size)
  pad = num_chunks * chunk_size - t
  arrays = [hidden_TxE, targets_T.astype(jnp.int32), *token_arrays]
  if pad:
    arrays = [jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) for a in arrays]
  h_NxCxE = arrays[0].reshape(chunk_size, num_chunks, e).swapaxes(0, 1)
  return (h_NxCxE, *(a.reshape(chunk_size, num_chunks).T for a in arrays[1:]))


def _from_chunks(x_NxC, t: int):
  return x_NxC.T.reshape(-1)[:t]


def chunked_token_cross_entropy(hidden_TxE: jax.Array, head_ExV: jax.Array, targets_T: jax.Array, *,
                                chunk_size: int):
  """Per-token cross-entropy and log-partition of ``hidden @ head``, one token chunk at a time.

  Equals ``objectives.lm.token_cross_entropy(hidden @ head, targets)`` (values and
  gradients w.r.t. hidden and head) without building the [T, V] logits. The
  backward pass recomputes each chunk's logits; a caller that only needs a
  weighted loss sum should use ``chunked_weighted_ce_sum``, which does not.

  Args:
    hidden_TxE: final hidden states in the compute dtype (the matmul accumulates in float32).
    head_ExV: the output head in the compute dtype (tied: embedding.T).
    targets_T: int target ids.
    chunk_size: tokens per chunk, > 0. T need not be a multiple: the last tokens are
      padded with zeros and the padding's outputs are dropped (its gradient is zero).

  Returns:
    (ce_T, log_z_T), both float32.
  """
  h_NxCxE, targets_NxC = _to_chunks(hidden_TxE, targets_T, chunk_size)
  ce_NxC, log_z_NxC = _fused_ce(h_NxCxE, head_ExV, targets_NxC)
  t = hidden_TxE.shape[0]
  return _from_chunks(ce_NxC, t), _from_chunks(log_z_NxC, t)


def _weighted_sum(ce_NxC, log_z_NxC, weights_NxC, z_loss: float):
  return jnp.sum(ce_NxC * weights_NxC) + z_loss * jnp.sum(jnp.square(log_z_NxC) * weights_NxC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _loss_sum(h_NxCxE, head_ExV, targets_NxC, weights_NxC, z_loss):
  ce_NxC, log_z_NxC = _forward_chunks(h_NxCxE, head_ExV, targets_NxC)
  return _weighted_sum(ce_NxC, log_z_NxC, weights_NxC, z_loss), ce_NxC, log_z_NxC


def _loss_sum_fwd(h_NxCxE, head_ExV, targets_NxC, weights_NxC, z_loss):
  """The forward chunk loop, which also forms the gradients of the loss sum (its cotangent is a scalar)."""
  def chunk(head_ExV, h_CxE, t_C, w_C):
    logits_CxV = _chunk_logits(h_CxE, head_ExV)
    log_z_C = jax.nn.logsumexp(logits_CxV, axis=-1)
    ce_C = log_z_C - jnp.take_along_axis(logits_CxV, t_C[:, None], axis=-1)[:, 0]
    # d(loss sum)/d ce = w and d(loss sum)/d log_z = 2·z_loss·log_z·w.
    dh_CxE, dhead_ExV = _chunk_grads(h_CxE, head_ExV, logits_CxV, log_z_C, t_C, w_C, 2.0 * z_loss * log_z_C * w_C)
    return dhead_ExV, (ce_C, log_z_C, dh_CxE)

  weights_NxC = weights_NxC.astype(jnp.float32)
  dhead_ExV, (ce_NxC, log_z_NxC, dh_NxCxE) = _scan_chunks(chunk, head_ExV, h_NxCxE, targets_NxC, weights_NxC)
  loss_sum = _weighted_sum(ce_NxC, log_z_NxC, weights_NxC, z_loss)
  # The zero-size array carries the head's dtype to the backward pass.
  return (loss_sum, ce_NxC, log_z_NxC), (dh_NxCxE, dhead_ExV, jnp.zeros((0,), head_ExV.dtype))


def _loss_sum_bwd(z_loss, residuals, cotangents):
  # Only the loss sum carries a gradient: the public wrapper stops it on the per-token outputs.
  del z_loss
  dh_NxCxE, dhead_ExV, head_dtype = residuals
  g = cotangents[0].astype(jnp.float32)
  dh = (dh_NxCxE.astype(jnp.float32) * g).astype(dh_NxCxE.dtype)
  return dh, (dhead_ExV * g).astype(head_dtype.dtype), None, None


_loss_sum.defvjp(_loss_sum_fwd, _loss_sum_bwd)


def chunked_weighted_ce_sum(hidden_TxE: jax.Array, head_ExV: jax.Array, targets_T: jax.Array,
                            weights_T: jax.Array, *, z_loss: float, chunk_size: int):
  """Σ w·ce + z_loss·Σ w·log_z² of ``hidden @ head``, with its gradients formed in the forward chunk loop.

  The weighted loss sum the lm objectives differentiate. Because its cotangent
  is a scalar, the gradients w.r.t. hidden and head are computed while each
  chunk's logits exist and saved ([T, E] in the compute dtype and [E, V]
  float32); the backward pass multiplies them by the cotangent. Nothing is
  recomputed, unlike ``chunked_token_cross_entropy``. Called outside
  differentiation, only the forward loop runs.

  Args:
    hidden_TxE: final hidden states in the compute dtype.
    head_ExV: the output head in the compute dtype (its gradient comes back in that dtype,
      accumulated over chunks in float32).
    targets_T: int target ids.
    weights_T: per-token loss weights (no gradient flows to them).
    z_loss: the weight of Σ w·log_z², a Python float.
    chunk_size: tokens per chunk, > 0 (the last chunk is padded with zero-weight tokens).

  Returns:
    (loss_sum, ce_T, log_z_T): the float32 scalar, and the per-token cross-entropy and
    log-partition (float32 [T], values only: they carry no gradient, for metrics).
  """
  h_NxCxE, targets_NxC, weights_NxC = _to_chunks(hidden_TxE, targets_T, chunk_size,
                                                 weights_T.astype(jnp.float32))
  loss_sum, ce_NxC, log_z_NxC = _loss_sum(h_NxCxE, head_ExV, targets_NxC, weights_NxC, float(z_loss))
  t = hidden_TxE.shape[0]
  return (loss_sum, jax.lax.stop_gradient(_from_chunks(ce_NxC, t)),
          jax.lax.stop_gradient(_from_chunks(log_z_NxC, t)))
