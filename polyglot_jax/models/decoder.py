"""Decoder-only transformer of the Llama / Qwen2 family (Flax NNX).

Token embedding (tied or untied head) → N × [RMSNorm → GQA attention with
RoPE → residual → RMSNorm → SwiGLU (or a mixture of SwiGLU experts, models/moe.py,
on the layers ``config.model.moe_layers`` names) → residual] → RMSNorm → vocabulary logits.
Layers are stacked along a leading ``layers`` axis and run with ``lax.scan``
when ``scan_layers`` is set (one compiled layer, fast compiles on deep
models), or unrolled otherwise. Each layer is a remat point whose policy is
named in config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from polyglot_jax.mesh import constrain
from polyglot_jax.models.attention import CACHE_AXES, Attention
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.layers import RMSNorm, dtype_of, param, rope_tables
from polyglot_jax.models.mlp import SwiGLU
from polyglot_jax.models.moe import MoE

REMAT_POLICIES = {
    # Keep every activation: fastest, most memory.
    "none": None,
    # Recompute the whole layer in the backward pass: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute elementwise work (MaxText's "minimal").
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# Auxiliary outputs of ``Decoder.__call__(..., return_aux=...)``:
#   hidden_states: [num_layers + 1, B, L, E] residual stream (embedding output, then each block's output);
#   final_hidden: [B, L, E] the final-norm hidden states the logits are computed from;
#   router_logits: [num_moe_layers, B·L, num_experts] float32 router logits of each MoE layer;
#   expert_load: [num_moe_layers, num_experts] fraction of (token, slot) assignments per expert (padding excluded);
#   dropped_fraction: [num_moe_layers] fraction of assignments dropped (capacity dispatch; 0 when dropless).
# The MoE entries have a leading dim of 0 on a dense model.
AUX_OUTPUTS = ("hidden_states", "final_hidden", "router_logits", "expert_load", "dropped_fraction")
MOE_AUX = ("router_logits", "expert_load", "dropped_fraction")


class Block(nnx.Module):
  """One decoder layer; its FFN is ``mlp`` (SwiGLU) or, in an MoE layer, ``moe`` (models/moe.py)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, moe: bool = False):
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, dt, pdt, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, dt, pdt, rngs)
    if moe:
      self.moe = MoE(cfg, rngs)
    else:
      self.mlp = SwiGLU(cfg, rngs)

  def ffn(self, x_BxLxE, segment_ids_BxL=None):
    """The feed-forward half's output and its aux dict (MoE statistics; empty for a dense layer)."""
    if hasattr(self, "moe"):
      return self.moe(x_BxLxE, None if segment_ids_BxL is None else segment_ids_BxL != 0)
    return self.mlp(x_BxLxE), {}

  def __call__(self, x_BxLxE, cos, sin, segment_ids_BxL):
    """Returns (x_BxLxE, aux): aux holds the MoE layer's router logits and load, and is empty when dense."""
    x_BxLxE = x_BxLxE + self.attn(self.attn_norm(x_BxLxE), cos, sin, segment_ids_BxL)
    f_BxLxE, aux = self.ffn(self.mlp_norm(x_BxLxE), segment_ids_BxL)
    x_BxLxE = x_BxLxE + f_BxLxE
    return constrain(x_BxLxE, ("batch", "act_length", "act_embed")), aux

  def decode(self, x_BxSxE, cos, sin, k_cache, v_cache, start, valid_BxT):
    """The block on S new tokens with this layer's KV cache; returns (x, k_cache, v_cache)."""
    a, k_cache, v_cache = self.attn.decode(self.attn_norm(x_BxSxE), cos, sin, k_cache, v_cache, start, valid_BxT)
    x_BxSxE = x_BxSxE + a
    x_BxSxE = x_BxSxE + self.ffn(self.mlp_norm(x_BxSxE))[0]
    return x_BxSxE, k_cache, v_cache


class Decoder(nnx.Module):
  """The language model: ``logits = model(tokens, segment_ids, positions)``."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    if cfg.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"config.model.remat_policy='{cfg.remat_policy}' is unknown; use one of {sorted(REMAT_POLICIES)}")
    self.cfg = cfg
    pdt = dtype_of(cfg.param_dtype)
    self.embedding = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pdt, cfg.init_std)
    moe_layers = set(cfg.moe_layer_ids())  # Scanned layers are all MoE or all dense (ModelConfig checks).
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_blocks(layer_rngs):
        return Block(cfg, layer_rngs, moe=bool(moe_layers))
      self.blocks = make_blocks(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, rngs, moe=i in moe_layers) for i in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, dtype_of(cfg.dtype), pdt, rngs)
    if not cfg.tie_embeddings:
      self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pdt, cfg.init_std)

  def embed(self, tokens_BxL):
    dt = dtype_of(self.cfg.dtype)
    # Gather from a table whose embed dim is all-gathered (as FSDP does for
    # every weight); gathering rows out of an embed-sharded table makes XLA
    # replicate the whole result instead.
    table_VxE = constrain(self.embedding[...], ("vocab", None))
    x = jnp.take(table_VxE, tokens_BxL, axis=0).astype(dt)
    return constrain(x, ("batch", "act_length", "act_embed"))

  def hidden_states(self, tokens_BxL, segment_ids_BxL=None, positions_BxL=None, *, per_layer: bool = False):
    """Final-norm hidden states [B, L, E]; with ``per_layer`` also the residual stream of every layer.

    Returns:
      ``h_BxLxE``, or ``(h_BxLxE, layers_NxBxLxE)`` when ``per_layer``: N = num_layers + 1,
      entry 0 the embedding output and entry i the output of block i (before the final norm).
    """
    h, layers, _ = self._run_layers(tokens_BxL, segment_ids_BxL, positions_BxL, per_layer)
    return (h, layers) if per_layer else h

  def _run_layers(self, tokens_BxL, segment_ids_BxL, positions_BxL, per_layer: bool):
    """(final-norm hidden, per-layer residual stream or None, MoE aux stacked over the MoE layers)."""
    cfg = self.cfg
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones_like(tokens_BxL)
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[-1]), tokens_BxL.shape)
    cos, sin = rope_tables(positions_BxL, cfg.head_dim, cfg.rope_theta)
    x = self.embed(tokens_BxL)
    x0 = x
    policy = REMAT_POLICIES[cfg.remat_policy]

    def layer(block, x):
      return block(x, cos, sin, segment_ids_BxL)

    if cfg.remat_policy != "none":
      layer = nnx.remat(layer, policy=policy, prevent_cse=not cfg.scan_layers)
    outs = None
    if cfg.scan_layers:
      # A dense block's aux is {}: the scan then has no extra outputs.
      if per_layer:
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0, 0),
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run_layers_collect(block, x):
          y, aux = layer(block, x)
          return y, y, aux
        x, stacked, moe_aux = run_layers_collect(self.blocks, x)
        outs = jnp.concatenate([x0[None], stacked], axis=0)
      else:
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0),
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run_layers(block, x):
          return layer(block, x)
        x, moe_aux = run_layers(self.blocks, x)
    else:
      collected = [x0]
      auxes = []
      for block in self.blocks:
        x, aux = layer(block, x)
        collected.append(x)
        if aux:
          auxes.append(aux)
      if per_layer:
        outs = jnp.stack(collected)
      moe_aux = jax.tree.map(lambda *a: jnp.stack(a), *auxes) if auxes else {}
    h = self.final_norm(x)
    return h, outs, moe_aux

  def _empty_moe_aux(self, t: int):
    """The MoE aux entries of a model without MoE layers (a leading dim of 0)."""
    n = self.cfg.num_experts
    return {"router_logits": jnp.zeros((0, t, n), jnp.float32), "expert_load": jnp.zeros((0, n), jnp.float32),
            "dropped_fraction": jnp.zeros((0,), jnp.float32)}

  def head(self):
    """The output head [E, V] in the compute dtype (tied: the embedding transposed)."""
    dt = dtype_of(self.cfg.dtype)
    if self.cfg.tie_embeddings:
      return self.embedding[...].astype(dt).T
    return self.lm_head[...].astype(dt)

  def logits(self, hidden_BxLxE):
    """Vocabulary logits in float32 (losses and softmax stay in float32)."""
    dt = dtype_of(self.cfg.dtype)
    b, length, e = hidden_BxLxE.shape
    h_TxE = hidden_BxLxE.reshape(b * length, e).astype(dt)
    w_ExV = self.head()
    out_TxV = jnp.matmul(h_TxE, w_ExV, preferred_element_type=jnp.float32)
    return constrain(out_TxV.reshape(b, length, -1), ("batch", "length", "act_vocab"))

  def init_cache(self, batch: int, length: int):
    """Zero key and value caches in the compute dtype, [B, num_kv_heads, T, head_dim] per layer.

    Scanned layers get one stacked (keys, values) pair [num_layers, B, K, T, D]
    (the scan slices it per layer); unrolled layers get a tuple of per-layer
    (keys, values) pairs, which each decode step updates in place with no
    slicing or re-stacking. Under an active mesh (``mesh.activate``) the cache
    is sharded by the logical axes ``attention.CACHE_AXES``: batch over
    (data, fsdp), kv heads over tensor.
    """
    cfg = self.cfg
    dt = dtype_of(cfg.dtype)
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    if cfg.scan_layers:
      return tuple(constrain(jnp.zeros((cfg.num_layers,) + shape, dt), CACHE_AXES) for _ in range(2))
    return tuple(tuple(constrain(jnp.zeros(shape, dt), CACHE_AXES[1:]) for _ in range(2))
                 for _ in range(cfg.num_layers))

  def decode(self, tokens_BxS, positions_BxS, cache, start, valid_BxT):
    """Logits of S new tokens written at cache slots start..start+S-1 (prefill: S = prompt length; then 1).

    Args:
      tokens_BxS: int token ids.
      positions_BxS: their positions within their sequence (RoPE).
      cache: what ``init_cache`` gives (stacked for scanned layers, per layer otherwise).
      start: int32 scalar, the first slot written.
      valid_BxT: 1 on the slots that hold real tokens, these included (left padding is 0).

    Returns:
      (float32 logits [B, S, V], the updated cache).
    """
    cfg = self.cfg
    cos, sin = rope_tables(positions_BxS, cfg.head_dim, cfg.rope_theta)
    x = self.embed(tokens_BxS)
    if cfg.scan_layers:
      k_all, v_all = cache

      @nnx.scan(in_axes=(0, nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0, 0),
                transform_metadata={nnx.PARTITION_NAME: "layers"})
      def run_layers(block, x, k, v):
        return block.decode(x, cos, sin, k, v, start, valid_BxT)
      x, k_all, v_all = run_layers(self.blocks, x, k_all, v_all)
      return self.logits(self.final_norm(x)), (k_all, v_all)
    new_cache = []
    for block, (k, v) in zip(self.blocks, cache):
      x, k, v = block.decode(x, cos, sin, k, v, start, valid_BxT)
      new_cache.append((k, v))
    return self.logits(self.final_norm(x)), tuple(new_cache)

  def __call__(self, tokens_BxL, segment_ids_BxL=None, positions_BxL=None, return_aux: tuple[str, ...] = ()):
    """Float32 logits [B, L, V]; with ``return_aux`` also a dict of auxiliary outputs.

    Args:
      tokens_BxL: int token ids.
      segment_ids_BxL: document ids of packed rows (0 = padding); None: one document.
      positions_BxL: positions within each document; None: 0..L-1.
      return_aux: names from ``AUX_OUTPUTS``. Nothing extra is computed when empty.

    Returns:
      logits, or (logits, {name: array}) when ``return_aux`` is not empty.
    """
    if not return_aux:
      return self.logits(self.hidden_states(tokens_BxL, segment_ids_BxL, positions_BxL))
    h, aux = self.features(tokens_BxL, segment_ids_BxL, positions_BxL, return_aux)
    return self.logits(h), aux

  def features(self, tokens_BxL, segment_ids_BxL=None, positions_BxL=None, return_aux: tuple[str, ...] = ()):
    """What ``__call__`` returns with the logits left out: (final-norm hidden [B, L, E], aux dict).

    The chunked cross-entropy (models/chunked_ce.py) takes these and ``head()``
    instead of the full [B, L, V] logits. Arguments as in ``__call__``.
    """
    unknown = set(return_aux) - set(AUX_OUTPUTS)
    if unknown:
      raise ValueError(f"return_aux asks for {sorted(unknown)}; the decoder gives {list(AUX_OUTPUTS)}")
    # The per-layer residual stream is collected only when asked for (MoE losses need the router logits only).
    h, layers, moe_aux = self._run_layers(tokens_BxL, segment_ids_BxL, positions_BxL,
                                          per_layer="hidden_states" in return_aux)
    if not moe_aux and set(return_aux) & set(MOE_AUX):
      moe_aux = self._empty_moe_aux(tokens_BxL.size)
    aux = {"hidden_states": layers, "final_hidden": h, **moe_aux}
    return h, {name: aux[name] for name in return_aux}

