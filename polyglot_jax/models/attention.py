"""Grouped-query causal self-attention over packed sequences.

Projections run as 2-D matmuls ([tokens, embed] × [embed, heads·head_dim]):
XLA lowers these, and their gradients, to single GEMMs on every backend,
while the 3-D einsum forms make the CPU backend contract over two dims at
once in the backward pass (measured ~1.5× slower, docs/performance.md).

Causal attention is computed in query blocks: block i only scores keys
0..end of block i, so the all-masked upper triangle is never computed
(half the score work and softmax on long rows).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from polyglot_jax.mesh import constrain
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.layers import apply_rope, dtype_of, param

NEG_INF = -1e30  # Finite, so a fully masked row gives a uniform softmax, not NaN.


def attention_mask(segment_ids_BxL: jax.Array, q_start: int = 0, q_len: int | None = None,
                   k_len: int | None = None) -> jax.Array:
  """[B, 1, 1, Lq, Lk] True where query i may attend key j.

  Causal within the row and only inside the same packed document: with
  positions that restart at 0 for each document, a packed row computes
  exactly what each document would alone.
  """
  length = segment_ids_BxL.shape[-1]
  q_len = length - q_start if q_len is None else q_len
  k_len = length if k_len is None else k_len
  q_idx = q_start + jnp.arange(q_len)
  causal = q_idx[:, None] >= jnp.arange(k_len)[None, :]
  seg_q = segment_ids_BxL[:, q_start:q_start + q_len]
  seg_k = segment_ids_BxL[:, :k_len]
  same_doc = seg_q[:, :, None] == seg_k[:, None, :]
  return (causal[None] & same_doc)[:, None, None]


def dense(x, w, dt, n_in: int = 1):
  """Contracts x's last ``n_in`` dims with w's first ``n_in`` dims as one 2-D matmul."""
  lead = x.shape[:x.ndim - n_in]
  k = math.prod(x.shape[x.ndim - n_in:])
  y = x.reshape(-1, k).astype(dt) @ w.reshape(k, -1).astype(dt)
  return y.reshape(lead + w.shape[n_in:])


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pdt = dtype_of(cfg.param_dtype)
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    std = cfg.init_std
    self.q_proj = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), pdt, std)
    self.k_proj = param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pdt, std)
    self.v_proj = param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pdt, std)
    self.o_proj = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), pdt, std)
    if cfg.qkv_bias:
      self.q_bias = param(rngs, (h, hd), ("heads", "head_dim"), pdt, 0.0)
      self.k_bias = param(rngs, (k, hd), ("kv_heads", "head_dim"), pdt, 0.0)
      self.v_bias = param(rngs, (k, hd), ("kv_heads", "head_dim"), pdt, 0.0)
    self.cfg = cfg

  def __call__(self, x_BxLxE, cos, sin, segment_ids_BxL):
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD = self.qkv(x_BxLxE, cos, sin)
    out_BxLxHxD = causal_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, self.cfg.attention_block)
    return self.out(out_BxLxHxD)

  def decode(self, x_BxSxE, cos, sin, k_cache_BxKxTxD, v_cache_BxKxTxD, start, valid_BxT):
    """Attention of S new tokens at cache slots start..start+S-1 over the cache (KV-cache decoding).

    Args:
      x_BxSxE: the new tokens' normalised inputs.
      cos, sin: RoPE tables of their positions.
      k_cache_BxKxTxD, v_cache_BxKxTxD: keys and values of slots 0..T-1 (rotated keys), heads
        before slots so that both attention products read them without a transpose.
      start: int32 scalar, the first new slot.
      valid_BxT: which slots hold real tokens (after this step's are written).

    Returns:
      (output [B, S, E], updated key cache, updated value cache).
    """
    q_BxSxHxD, k_BxSxKxD, v_BxSxKxD = self.qkv(x_BxSxE, cos, sin)
    dtype = k_cache_BxKxTxD.dtype
    k_cache = jax.lax.dynamic_update_slice(k_cache_BxKxTxD, k_BxSxKxD.transpose(0, 2, 1, 3).astype(dtype),
                                           (0, 0, start, 0))
    v_cache = jax.lax.dynamic_update_slice(v_cache_BxKxTxD, v_BxSxKxD.transpose(0, 2, 1, 3).astype(dtype),
                                           (0, 0, start, 0))
    k_cache, v_cache = (constrain(c, CACHE_AXES[1:]) for c in (k_cache, v_cache))
    b, s, h, hd = q_BxSxHxD.shape
    kvh, t = k_cache.shape[1], k_cache.shape[2]
    g = h // kvh
    dt = q_BxSxHxD.dtype
    # Queries [B, K, G·S, D]: the G heads sharing a key/value head, each over the S new tokens.
    q = (q_BxSxHxD * jnp.asarray(hd ** -0.5, dt)).reshape(b, s, kvh, g, hd).transpose(0, 2, 3, 1, 4)
    q = q.reshape(b, kvh, g * s, hd)
    logits = jnp.einsum("bkqd,bktd->bkqt", q, k_cache.astype(dt), preferred_element_type=jnp.float32)
    causal = jnp.tile((start + jnp.arange(s))[:, None] >= jnp.arange(t)[None, :], (g, 1))
    mask = causal[None, None] & valid_BxT[:, None, None, :].astype(bool)
    probs = jax.nn.softmax(jnp.where(mask, logits, NEG_INF), axis=-1).astype(dt)
    out = jnp.einsum("bkqt,bktd->bkqd", probs, v_cache.astype(dt)).reshape(b, kvh, g, s, hd)
    return self.out(out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, hd)), k_cache, v_cache

  def qkv(self, x_BxLxE, cos, sin):
    """Queries, keys and values with RoPE applied: [B, L, H, D], [B, L, K, D], [B, L, K, D]."""
    cfg = self.cfg
    dt = dtype_of(cfg.dtype)
    q_BxLxHxD = dense(x_BxLxE, self.q_proj[...], dt)
    k_BxLxKxD = dense(x_BxLxE, self.k_proj[...], dt)
    v_BxLxKxD = dense(x_BxLxE, self.v_proj[...], dt)
    if cfg.qkv_bias:
      q_BxLxHxD = q_BxLxHxD + self.q_bias[...].astype(dt)
      k_BxLxKxD = k_BxLxKxD + self.k_bias[...].astype(dt)
      v_BxLxKxD = v_BxLxKxD + self.v_bias[...].astype(dt)
    q_BxLxHxD = constrain(q_BxLxHxD, ("batch", "length", "act_heads", None))
    q_BxLxHxD = apply_rope(q_BxLxHxD, cos, sin)
    k_BxLxKxD = apply_rope(k_BxLxKxD, cos, sin)
    return q_BxLxHxD, k_BxLxKxD, v_BxLxKxD

  def out(self, out_BxLxHxD):
    """The output projection back to the residual stream."""
    out_BxLxE = dense(out_BxLxHxD, self.o_proj[...], dtype_of(self.cfg.dtype), n_in=2)
    return constrain(out_BxLxE, ("batch", "act_length", "act_embed"))


# Logical axes of the KV cache [layers, B, kv_heads, T, head_dim] (one layer: without the
# first): sharded like the activations (batch over data/fsdp, kv heads over tensor).
CACHE_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")


def causal_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, block: int):
  """Softmax attention, causal and within documents, in query blocks of ``block``."""
  b, length, h, hd = q_BxLxHxD.shape
  kvh = k_BxLxKxD.shape[2]
  dt = q_BxLxHxD.dtype
  # [B, K, G, L, D] / [B, K, L, D]: batch dims lead, as batched GEMMs want.
  q = (q_BxLxHxD * jnp.asarray(hd ** -0.5, dt)).reshape(b, length, kvh, h // kvh, hd).transpose(0, 2, 3, 1, 4)
  k = k_BxLxKxD.transpose(0, 2, 1, 3)
  v = v_BxLxKxD.transpose(0, 2, 1, 3)
  if block <= 0 or length % block or length <= block:
    block = length
  outs = []
  for start in range(0, length, block):
    end = start + block  # Keys past the block's last query are all masked: skip them.
    logits = jnp.einsum("bkgld,bkmd->bkglm", q[:, :, :, start:end], k[:, :, :end],
                        preferred_element_type=jnp.float32)
    mask = attention_mask(segment_ids_BxL, start, block, end)
    logits = jnp.where(mask, logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    outs.append(jnp.einsum("bkglm,bkmd->bkgld", probs, v[:, :, :end]))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, hd)
