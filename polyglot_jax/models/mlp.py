"""SwiGLU feed-forward block."""

from __future__ import annotations

import jax
from flax import nnx

from polyglot_jax.mesh import constrain
from polyglot_jax.models.attention import dense
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.layers import dtype_of, param


class SwiGLU(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pdt = dtype_of(cfg.param_dtype)
    d, f, std = cfg.d_model, cfg.mlp_dim, cfg.init_std
    self.gate_proj = param(rngs, (d, f), ("embed", "mlp"), pdt, std)
    self.up_proj = param(rngs, (d, f), ("embed", "mlp"), pdt, std)
    self.down_proj = param(rngs, (f, d), ("mlp", "embed"), pdt, std)
    self.dtype = dtype_of(cfg.dtype)

  def __call__(self, x_BxLxE):
    dt = self.dtype
    gate_BxLxF = dense(x_BxLxE, self.gate_proj[...], dt)
    up_BxLxF = dense(x_BxLxE, self.up_proj[...], dt)
    h_BxLxF = constrain(jax.nn.silu(gate_BxLxF) * up_BxLxF, ("batch", "length", "act_mlp"))
    out_BxLxE = dense(h_BxLxF, self.down_proj[...], dt)
    return constrain(out_BxLxE, ("batch", "length", "act_embed"))
