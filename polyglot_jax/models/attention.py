"""Grouped-query causal self-attention over packed sequences.

Projections run as 2-D matmuls ([tokens, embed] × [embed, heads·head_dim]):
XLA lowers these, and their gradients, to single GEMMs on every backend,
while the 3-D einsum forms make the CPU backend contract over two dims at
once in the backward pass (measured ~1.5× slower, docs/performance.md).

The attention itself has backends, chosen by ``config.model.attention_impl``
(docs/performance.md, "Attention backends"):

- ``xla``: einsums in query blocks of ``attention_block``; block i only scores
  keys 0..end of block i, so the all-masked upper triangle is never computed
  (half the score work and softmax on long rows). Any length, any platform.
- ``dot_product_attention``: ``jax.nn.dot_product_attention``; cuDNN flash
  attention on GPU when cuDNN takes the inputs (bfloat16/float16), the
  function's own XLA implementation (full L×L scores) elsewhere.
- ``cudnn``: the same function with ``implementation='cudnn'``; GPU only.
- ``splash``: the Pallas TPU splash-attention kernel; TPU only, or any
  platform in Pallas interpret mode (``pallas_interpret()``, for tests).
- ``auto``: splash on TPU, cuDNN on GPU when it takes the inputs, xla otherwise.

Every backend is causal and keeps packed documents apart (segment ids), with
grouped-query heads; the KV-cache decode path (``Attention.decode``) is one
einsum pair over the cache whatever the backend.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.errors import ConfigError
from polyglot_jax.mesh import constrain
from polyglot_jax.models.config import ATTENTION_IMPLS, ModelConfig
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
    out_BxLxHxD = attend(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, self.cfg.attention_impl,
                         self.cfg.attention_block)
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


# ---------------------------------------------------------------------------
# Backends and the choice between them
# ---------------------------------------------------------------------------

_GPU_PLATFORMS = ("gpu", "cuda")  # cuDNN is NVIDIA's: a ROCm mesh stays 'rocm' (auto: xla).
# Splash works in blocks of 128 tokens or more (a multiple of the TPU's 128 lanes): rows
# are padded to a multiple of this, and auto keeps rows shorter than one block on xla.
SPLASH_MIN_BLOCK = 128
_SPLASH_BLOCKS = (512, 256, 128)  # Largest first: the block size used is the first that divides the row.
_settings = {"interpret": False}


@contextlib.contextmanager
def pallas_interpret(enabled: bool = True):
  """Traces the splash kernel in Pallas interpret mode inside this context.

  Interpret mode evaluates the TPU kernel with ordinary XLA operations, so it
  runs (slowly) on any platform; the CPU tests compare it with ``xla``. The
  setting is read when a function is traced, not when it runs.

  Args:
    enabled: interpret mode on (True) or off (False) inside the context.

  Yields:
    None; the previous setting is restored on exit.
  """
  previous = _settings["interpret"]
  _settings["interpret"] = enabled
  try:
    yield
  finally:
    _settings["interpret"] = previous


def attention_platform() -> str:
  """The platform attention is being traced for.

  Returns:
    'cpu', 'gpu' or 'tpu' (another backend's own name otherwise): the platform
    of the active mesh's devices (``jax.set_mesh``, which the trainer and the
    planner's ahead-of-time TPU compiles set), else JAX's default backend.
  """
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  platform = getattr(device, "platform", None) or jax.default_backend()
  return "gpu" if platform in _GPU_PLATFORMS else platform


def cudnn_fits(dtype, head_dim: int) -> bool:
  """Whether cuDNN flash attention takes these inputs, as far as ``auto`` relies on.

  Args:
    dtype: the compute dtype of queries, keys and values.
    head_dim: the size of one head.

  Returns:
    True for bfloat16 or float16 and a head size that is a multiple of 8 up
    to 128 (a conservative bound; recent cuDNN versions take larger heads on
    some GPUs). cuDNN has no float32 flash attention.
  """
  return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and head_dim % 8 == 0 \
      and head_dim <= 128


def _usable(platform: str) -> list[str]:
  """The backend names that run on ``platform`` without interpret mode."""
  names = ["auto", "xla", "dot_product_attention"]
  if platform == "gpu":
    names.append("cudnn")
  if platform == "tpu":
    names.append("splash")
  return names


def resolve_attention_impl(impl: str, platform: str, seq_len: int, dtype, head_dim: int,
                           interpret: bool = False) -> str:
  """The backend that runs: ``auto`` resolved, the others checked against the platform.

  Args:
    impl: ``config.model.attention_impl``, a name from ``ATTENTION_IMPLS``.
    platform: what ``attention_platform()`` gives.
    seq_len: the row length L.
    dtype: the compute dtype.
    head_dim: the size of one head.
    interpret: splash runs in Pallas interpret mode (any platform).

  Returns:
    'xla', 'dot_product_attention', 'cudnn' or 'splash'. ``auto`` gives splash on
    TPU (rows of at least 128 tokens), cudnn on GPU when ``cudnn_fits``, and xla
    otherwise (CPU: the block-causal einsums are the fastest there, since the
    others compute the full L×L scores).

  Raises:
    ConfigError: one line naming the backend, the platform and the alternatives
      when ``impl`` is unknown or cannot run on ``platform``.
  """
  if impl not in ATTENTION_IMPLS:
    raise ConfigError(f"config.model.attention_impl='{impl}' is unknown; use one of {list(ATTENTION_IMPLS)}")
  if impl == "auto":
    if platform == "tpu" and seq_len >= SPLASH_MIN_BLOCK:
      return "splash"
    if platform == "gpu" and cudnn_fits(dtype, head_dim):
      return "cudnn"
    return "xla"
  use = f"on {platform} use one of {_usable(platform)}"
  if impl == "splash" and platform != "tpu" and not interpret:
    raise ConfigError(f"config.model.attention_impl='splash' (the Pallas TPU splash-attention kernel) cannot run on "
                      f"{platform}: it needs a TPU, or Pallas interpret mode (attention.pallas_interpret()); {use}")
  if impl == "cudnn":
    if platform != "gpu":
      raise ConfigError(f"config.model.attention_impl='cudnn' (cuDNN flash attention) cannot run on {platform}: "
                        f"it needs an NVIDIA GPU; {use}")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
      raise ConfigError(f"config.model.attention_impl='cudnn' (cuDNN flash attention) needs bfloat16 or float16 "
                        f"compute, not {jnp.dtype(dtype).name}; set config.model.dtype='bfloat16' or {use}")
  return impl


def attend(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, impl: str = "auto", block: int = 128,
           interpret: bool | None = None):
  """Causal self-attention within packed documents, by the backend ``impl``.

  Args:
    q_BxLxHxD: queries with RoPE applied; H is a multiple of K (grouped-query attention).
    k_BxLxKxD: keys with RoPE applied.
    v_BxLxKxD: values.
    segment_ids_BxL: document ids; query i attends to keys j <= i of its own id (padding, id 0,
      attends to padding, and its outputs are ignored downstream).
    impl: a name from ``ATTENTION_IMPLS`` (``resolve_attention_impl``).
    block: the query block of the xla backend (0: one block).
    interpret: run splash in Pallas interpret mode; None: as ``pallas_interpret()`` set it.

  Returns:
    [B, L, H, D] in the queries' dtype.
  """
  interpret = _settings["interpret"] if interpret is None else interpret
  platform = attention_platform()
  hd = q_BxLxHxD.shape[-1]
  name = resolve_attention_impl(impl, platform, q_BxLxHxD.shape[1], q_BxLxHxD.dtype, hd, interpret)
  if name == "splash":
    return splash_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, interpret=interpret)
  if name == "cudnn" or name == "dot_product_attention":
    cudnn = name == "cudnn" or (platform == "gpu" and cudnn_fits(q_BxLxHxD.dtype, hd))
    return dot_product_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL,
                                 implementation="cudnn" if cudnn else "xla")
  return causal_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, block)


def causal_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, block: int):
  """The ``xla`` backend: softmax attention, causal and within documents, in query blocks.

  Queries go in blocks of ``block`` (the last one shorter when ``block`` does
  not divide the length); block i scores only keys 0..end of block i, so the
  largest score tensor is [block, L], never [L, L] (unless one block). The
  backward pass is written out (``_blocked_attention``'s custom VJP, as flash
  attention does it): per block dV += Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O)),
  dQ = dS·K, dK += dSᵀ·Q, with the forward's probabilities kept, which on
  CPU runs ~20% faster than autodiff of the forward.

  Args:
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL: as in ``attend``.
    block: queries per block; 0 (or >= L): one block.

  Returns:
    [B, L, H, D] in the queries' dtype.
  """
  b, length, h, hd = q_BxLxHxD.shape
  kvh = k_BxLxKxD.shape[2]
  dt = q_BxLxHxD.dtype
  # [B, K, G, L, D] / [B, K, L, D]: batch dims lead, as batched GEMMs want.
  q = (q_BxLxHxD * jnp.asarray(hd ** -0.5, dt)).reshape(b, length, kvh, h // kvh, hd).transpose(0, 2, 3, 1, 4)
  k = k_BxLxKxD.astype(dt).transpose(0, 2, 1, 3)
  v = v_BxLxKxD.astype(dt).transpose(0, 2, 1, 3)
  if block <= 0 or block >= length:
    block = length
  out = _blocked_attention(q, k, v, segment_ids_BxL, block)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, hd)


def _block_ranges(length: int, block: int):
  """(start, end) of each query block; block i's keys are 0..end (later ones are all masked)."""
  return [(start, min(start + block, length)) for start in range(0, length, block)]


def _attention_blocks(q_BxKxGxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids_BxL, block: int):
  """Forward pass: (out [B, K, G, L, D], float32 probabilities of each block [B, K, G·block, end]).

  A block's G query heads of one key/value head are folded into its rows ([B, K, G·block, D]), so
  every matmul is a batched GEMM over (B, K) (XLA:CPU runs those faster than 5-d contractions).
  """
  dt = q_BxKxGxLxD.dtype
  b, kvh, g, length, hd = q_BxKxGxLxD.shape
  outs, probs = [], []
  for start, end in _block_ranges(length, block):
    rows = g * (end - start)
    q = q_BxKxGxLxD[:, :, :, start:end].reshape(b, kvh, rows, hd)
    logits = jnp.einsum("bkld,bkmd->bklm", q, k_BxKxLxD[:, :, :end], preferred_element_type=jnp.float32)
    mask = attention_mask(segment_ids_BxL, start, end - start, end)
    logits = jnp.where(mask, logits.reshape(b, kvh, g, end - start, end), NEG_INF).reshape(b, kvh, rows, end)
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    p = p * (1.0 / jnp.sum(p, axis=-1, keepdims=True))
    out = jnp.einsum("bklm,bkmd->bkld", p.astype(dt), v_BxKxLxD[:, :, :end])
    outs.append(out.reshape(b, kvh, g, end - start, hd))
    probs.append(p)
  return (outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked_attention(q_BxKxGxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids_BxL, block: int):
  return _attention_blocks(q_BxKxGxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids_BxL, block)[0]


def _blocked_attention_fwd(q_BxKxGxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids_BxL, block: int):
  out, probs = _attention_blocks(q_BxKxGxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids_BxL, block)
  return out, (q_BxKxGxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids_BxL, out, probs)


def _blocked_attention_bwd(block: int, res, d_out):
  q, k, v, segment_ids_BxL, out, probs = res
  dt, f32 = q.dtype, jnp.float32
  b, kvh, g, length, hd = q.shape
  # rowsum(dO ⊙ O) = rowsum(dP ⊙ P): the softmax backward's correction, over D instead of the keys.
  delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
  dk, dv = jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32)
  dqs = []
  for (start, end), p in zip(_block_ranges(length, block), probs):
    rows = g * (end - start)
    d_o = d_out[:, :, :, start:end].reshape(b, kvh, rows, hd)
    q_blk = q[:, :, :, start:end].reshape(b, kvh, rows, hd)
    dv = dv.at[:, :, :end].add(jnp.einsum("bklm,bkld->bkmd", p.astype(dt), d_o, preferred_element_type=f32))
    dp = jnp.einsum("bkld,bkmd->bklm", d_o, v[:, :, :end], preferred_element_type=f32)
    ds = (p * (dp - delta[:, :, :, start:end].reshape(b, kvh, rows, 1))).astype(dt)
    dq = jnp.einsum("bklm,bkmd->bkld", ds, k[:, :, :end], preferred_element_type=f32)
    dqs.append(dq.reshape(b, kvh, g, end - start, hd))
    dk = dk.at[:, :, :end].add(jnp.einsum("bklm,bkld->bkmd", ds, q_blk, preferred_element_type=f32))
  dq = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=3)
  return dq.astype(dt), dk.astype(k.dtype), dv.astype(v.dtype), None


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


def dot_product_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, implementation: str = "xla"):
  """The ``dot_product_attention`` and ``cudnn`` backends: ``jax.nn.dot_product_attention``.

  Causality is the function's ``is_causal``; packing is a boolean [B, 1, L, L]
  same-document mask (cuDNN adds it as a bias; the XLA implementation masks
  the full L×L scores). Grouped-query heads go in as they are.

  Args:
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL: as in ``attend``.
    implementation: 'cudnn' (GPU flash attention) or 'xla'.

  Returns:
    [B, L, H, D] in the queries' dtype.
  """
  hd = q_BxLxHxD.shape[-1]
  dt = q_BxLxHxD.dtype
  same_doc = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
  out = jax.nn.dot_product_attention(q_BxLxHxD, k_BxLxKxD.astype(dt), v_BxLxKxD.astype(dt), mask=same_doc,
                                     scale=hd ** -0.5, is_causal=True, implementation=implementation)
  return out.astype(dt)


def splash_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, interpret: bool = False):
  """The ``splash`` backend: the Pallas TPU splash-attention kernel (causal mask, segment ids).

  Rows are padded to a multiple of 128 tokens (padding gets its own segment
  id and is cut off again); blocks of 512, 256 or 128 tokens, the largest that
  divides the padded row. The multi-head kernel maps query head h to key/value
  head h // (H / K), which is grouped-query attention as ``xla`` computes it.
  Under an active mesh of several devices the kernel runs per shard
  (``shard_map``): rows over the mesh axes of the logical axis 'batch', heads
  over those of 'act_heads' when they divide the head counts (key/value heads
  are repeated when only the query heads divide), replicated otherwise.

  Args:
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL: as in ``attend``.
    interpret: Pallas interpret mode (runs on any platform; for tests).

  Returns:
    [B, L, H, D] in the queries' dtype.
  """
  b, length, h, hd = q_BxLxHxD.shape
  kvh = k_BxLxKxD.shape[2]
  dt = q_BxLxHxD.dtype
  # The kernel takes [heads, L, D] per row; it does not scale the scores itself.
  q = (q_BxLxHxD * jnp.asarray(hd ** -0.5, dt)).transpose(0, 2, 1, 3)
  k = k_BxLxKxD.astype(dt).transpose(0, 2, 1, 3)
  v = v_BxLxKxD.astype(dt).transpose(0, 2, 1, 3)
  seg = segment_ids_BxL.astype(jnp.int32)
  pad = -length % SPLASH_MIN_BLOCK
  if pad:
    # Padded queries see only padded keys (their own id, causal); real queries never see them (causal).
    q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
    seg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)
  run = functools.partial(_splash_rows, interpret=interpret)
  batch_axes, head_axes, repeat = _splash_sharding(b, h, kvh)
  if repeat > 1:
    k, v = jnp.repeat(k, repeat, axis=1), jnp.repeat(v, repeat, axis=1)
  if mesh_lib.multi_device_mesh():
    # Under a mesh the kernel always runs inside shard_map (the partitioner cannot split a Pallas call);
    # with no axis that divides, the specs are replicated and every device runs the whole kernel.
    P = jax.sharding.PartitionSpec
    heads, rows = P(batch_axes, head_axes, None, None), P(batch_axes, None)
    run = jax.shard_map(run, in_specs=(heads, heads, heads, rows), out_specs=heads, check_vma=False)
  out = run(q, k, v, seg)
  return out[:, :, :length].transpose(0, 2, 1, 3).astype(dt)


def _splash_sharding(b: int, h: int, kvh: int):
  """(batch mesh axes, head mesh axes, key/value head repeat) for splash under the active mesh.

  No mesh, a one-device mesh, or a mesh none of whose batch/head axes divides: (None, None, 1)
  (the kernel then runs whole on every device).
  """
  if not mesh_lib.multi_device_mesh():
    return None, None, 1
  mesh = jax.sharding.get_abstract_mesh()
  batch = mesh_lib.logical_mesh_axes("batch")
  heads = tuple(a for a in mesh_lib.logical_mesh_axes("act_heads") if a not in batch)
  if b % math.prod(mesh.shape[a] for a in batch):
    batch = ()
  n_heads = math.prod(mesh.shape[a] for a in heads)
  repeat = 1
  if h % n_heads:
    heads = ()
  elif kvh % n_heads:
    repeat = h // kvh  # Every shard then holds the key/value heads of its own query heads.
  if not batch and not heads:
    return None, None, 1  # Nothing divides: replicated.
  return batch or None, heads or None, repeat


def _splash_rows(q_BxHxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids_BxL, interpret: bool):
  """The splash kernel over a batch of rows (one shard's, under shard_map); L a multiple of 128."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
  h, length = q_BxHxLxD.shape[1], q_BxHxLxD.shape[2]
  blk = next(size for size in _SPLASH_BLOCKS if length % size == 0)
  sizes = splash.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                            block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * h)
  kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
  segment_ids = splash.SegmentIds(q=segment_ids_BxL, kv=segment_ids_BxL)
  return jax.vmap(kernel)(q_BxHxLxD, k_BxKxLxD, v_BxKxLxD, segment_ids)
