"""Grouped-query causal self-attention over packed sequences.

Projections run as 2-D matmuls ([tokens, embed] × [embed, heads·head_dim]):
XLA lowers these, and their gradients, to single GEMMs on every backend,
while the 3-D einsum forms make the CPU backend contract over two dims at
once in the backward pass (measured ~1.5× slower, docs/performance.md).

The attention itself has backends, chosen by ``config.model.attention_impl``
(docs/performance.md, "Attention backends"):

- ``xla``: einsums over square tiles of ``attention_block`` tokens; query block
  i scores key blocks 0..i only, so the all-masked upper triangle is never
  computed (half the score work and softmax on long rows). Any length, any
  platform.
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


def attend(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, impl: str = "auto", block: int = 64,
           interpret: bool | None = None):
  """Causal self-attention within packed documents, by the backend ``impl``.

  Args:
    q_BxLxHxD: queries with RoPE applied; H is a multiple of K (grouped-query attention).
    k_BxLxKxD: keys with RoPE applied.
    v_BxLxKxD: values.
    segment_ids_BxL: document ids; query i attends to keys j <= i of its own id (padding, id 0,
      attends to padding, and its outputs are ignored downstream).
    impl: a name from ``ATTENTION_IMPLS`` (``resolve_attention_impl``).
    block: the tile edge of the xla backend (0: one block; ``xla_block``).
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


# The xla backend keeps each row to at most this many blocks: the program holds one score
# tile per (query block, key block ≤ it) pair, nb·(nb+1)/2 of them, and compile time grows
# with that count. A longer row gets blocks of ceil(L / XLA_MAX_BLOCKS), rounded up to 8.
XLA_MAX_BLOCKS = 16


def xla_block(length: int, block: int) -> int:
  """The block edge the xla backend uses for rows of ``length`` asked for ``block`` (0: one block)."""
  if block <= 0 or block >= length:
    return length
  if -(-length // block) > XLA_MAX_BLOCKS:
    block = -(-length // XLA_MAX_BLOCKS)
    block = min(length, -(-block // 8) * 8)
  return block


def causal_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL, block: int):
  """The ``xla`` backend: softmax attention, causal and within documents, in square tiles.

  The row is cut into nb blocks of ``block`` tokens (padded at the end to a whole block;
  the padding keys are causally masked for every real query). Query block i scores key
  blocks 0..i one [block, block] tile at a time, so the all-masked upper triangle is never
  computed, no score tensor is larger than a tile, and only the diagonal tile needs the
  causal mask. The softmax runs over block i's tiles together (one max, one sum, exact,
  not online), and the 1/sum is applied to the [block, D] output, not to the tiles. On
  CPU, tiles small enough to stay in a core's cache (at the benchmark shape 64 (b, h)
  pairs × 64 × 64 float32 = 1 MiB) run faster than one [block, L] score matrix per
  query block: forward + backward 129 → 104 ms there, 5–16% at other shapes
  (docs/performance.md). Rows of more than ``XLA_MAX_BLOCKS`` blocks use larger
  blocks (``xla_block``).

  The backward pass is written out (``_tiled_attention``'s custom VJP, the flash-attention
  formulas with the forward's probabilities kept): with p a tile's unnormalised
  probabilities and l the row sums, dV_j += pᵀ·(dO/l), dS = p ⊙ ((dO/l)·V_jᵀ − δ/l) with
  δ = rowsum(dO ⊙ O), dQ_i += dS·K_j, dK_j += dSᵀ·Q_i.

  Args:
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segment_ids_BxL: as in ``attend``.
    block: tokens per block; 0 (or >= L): one block.

  Returns:
    [B, L, H, D] in the queries' dtype.
  """
  b, length, h, hd = q_BxLxHxD.shape
  kvh = k_BxLxKxD.shape[2]
  g = h // kvh
  dt = q_BxLxHxD.dtype
  block = xla_block(length, block)
  nb = -(-length // block)
  pad = nb * block - length
  if pad:
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
                                       for x in (q_BxLxHxD, k_BxLxKxD, v_BxLxKxD))
    segment_ids_BxL = jnp.pad(segment_ids_BxL, ((0, 0), (0, pad)))
  # Blocks lead ([nb, B, K, rows, D]), so a block is a contiguous slice, never a copy; a query
  # block's G heads of one kv head are folded into its rows (batched GEMMs over (B, K)).
  q = (q_BxLxHxD * jnp.asarray(hd ** -0.5, dt)).reshape(b, nb, block, kvh, g, hd)
  q = q.transpose(1, 0, 3, 4, 2, 5).reshape(nb, b, kvh, g * block, hd)
  k = k_BxLxKxD.astype(dt).reshape(b, nb, block, kvh, hd).transpose(1, 0, 3, 2, 4)
  v = v_BxLxKxD.astype(dt).reshape(b, nb, block, kvh, hd).transpose(1, 0, 3, 2, 4)
  seg = segment_ids_BxL.reshape(b, nb, block).transpose(1, 0, 2)
  out = _tiled_attention(q, k, v, seg, g)
  out = out.reshape(nb, b, kvh, g, block, hd).transpose(1, 0, 4, 2, 3, 5).reshape(b, nb * block, h, hd)
  return out[:, :length] if pad else out


def _tile_mask(seg_q_BxN, seg_k_BxN, diagonal: bool):
  """[B, 1, 1, N, N]: same document, and causal within the tile when it is on the diagonal."""
  allowed = seg_q_BxN[:, :, None] == seg_k_BxN[:, None, :]
  if diagonal:
    n = seg_q_BxN.shape[1]
    allowed = allowed & (jnp.arange(n)[:, None] >= jnp.arange(n)[None, :])
  return allowed[:, None, None]


def _attention_tiles(q_NxBxKxRxD, k_NxBxKxNxD, v_NxBxKxNxD, seg_NxBxN, g: int):
  """Forward pass: (out [nb, B, K, R, D], unnormalised probabilities per (i, j ≤ i) tile, 1/rowsum [nb, B, K, R, 1])."""
  f32 = jnp.float32
  nb, b, kvh, rows, _ = q_NxBxKxRxD.shape
  block = rows // g
  outs, probs, inv_sums = [], [], []
  for i in range(nb):
    tiles = []
    for j in range(i + 1):
      s = jnp.einsum("bkrd,bkmd->bkrm", q_NxBxKxRxD[i], k_NxBxKxNxD[j], preferred_element_type=f32)
      s = jnp.where(_tile_mask(seg_NxBxN[i], seg_NxBxN[j], i == j), s.reshape(b, kvh, g, block, block), NEG_INF)
      tiles.append(s.reshape(b, kvh, rows, block))
    row_max = functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True) for s in tiles])
    p = [jnp.exp(s - row_max) for s in tiles]
    inv_sum = 1.0 / functools.reduce(jnp.add, [jnp.sum(x, axis=-1, keepdims=True) for x in p])
    out = functools.reduce(jnp.add, [
        jnp.einsum("bkrm,bkmd->bkrd", x.astype(v_NxBxKxNxD.dtype), v_NxBxKxNxD[j], preferred_element_type=f32)
        for j, x in enumerate(p)])
    outs.append((out * inv_sum).astype(q_NxBxKxRxD.dtype))
    probs.append(p)
    inv_sums.append(inv_sum)
  return jnp.stack(outs), probs, jnp.stack(inv_sums)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _tiled_attention(q_NxBxKxRxD, k_NxBxKxNxD, v_NxBxKxNxD, seg_NxBxN, g: int):
  return _attention_tiles(q_NxBxKxRxD, k_NxBxKxNxD, v_NxBxKxNxD, seg_NxBxN, g)[0]


def _tiled_attention_fwd(q_NxBxKxRxD, k_NxBxKxNxD, v_NxBxKxNxD, seg_NxBxN, g: int):
  out, probs, inv_sum = _attention_tiles(q_NxBxKxRxD, k_NxBxKxNxD, v_NxBxKxNxD, seg_NxBxN, g)
  return out, (q_NxBxKxRxD, k_NxBxKxNxD, v_NxBxKxNxD, out, probs, inv_sum)


def _tiled_attention_bwd(g: int, res, d_out):
  del g
  q, k, v, out, probs, inv_sum = res
  dt, f32 = q.dtype, jnp.float32
  nb = q.shape[0]
  # δ = rowsum(dO ⊙ O) = rowsum(dP ⊙ P), the softmax backward's correction, over D instead of
  # the keys. The tiles' probabilities are unnormalised, so dO and δ carry the 1/rowsum.
  delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True) * inv_sum
  d_o = (d_out.astype(f32) * inv_sum).astype(dt)
  add = lambda acc, x: x if acc is None else acc + x  # noqa: E731
  dq, dk, dv = [], [None] * nb, [None] * nb
  for i in range(nb):
    dq_i = None
    for j in range(i + 1):
      p = probs[i][j]
      dv[j] = add(dv[j], jnp.einsum("bkrm,bkrd->bkmd", p.astype(dt), d_o[i], preferred_element_type=f32))
      dp = jnp.einsum("bkrd,bkmd->bkrm", d_o[i], v[j], preferred_element_type=f32)
      ds = (p * (dp - delta[i])).astype(dt)
      dq_i = add(dq_i, jnp.einsum("bkrm,bkmd->bkrd", ds, k[j], preferred_element_type=f32))
      dk[j] = add(dk[j], jnp.einsum("bkrm,bkrd->bkmd", ds, q[i], preferred_element_type=f32))
    dq.append(dq_i)
  return (jnp.stack(dq).astype(dt), jnp.stack(dk).astype(k.dtype), jnp.stack(dv).astype(v.dtype), None)


_tiled_attention.defvjp(_tiled_attention_fwd, _tiled_attention_bwd)


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
