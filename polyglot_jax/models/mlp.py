"""SwiGLU feed-forward block, with an optional neuron mask for interventions.

A ``SwiGLU`` normally holds only its three projections. Analysis tools
(``polyglot_jax.analysis.lape.deactivate``) attach a ``NeuronMask`` to a
*copy* of a model to switch hidden neurons off; the forward pass multiplies
the hidden activation by it only when it is there, so ordinary models trace
exactly as before and carry no extra state.
"""

from __future__ import annotations

import jax
from flax import nnx

from polyglot_jax.mesh import constrain
from polyglot_jax.models.attention import dense
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.layers import dtype_of, param


class NeuronMask(nnx.Variable):
  """Per-neuron multipliers [mlp_dim] (stacked blocks: [num_layers, mlp_dim]) on the SwiGLU hidden activation.

  Not an ``nnx.Param``: training, optimizer and checkpoint code select
  ``nnx.Param`` and never see it. It carries no sharding names (the mask is
  small and replicated).
  """


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
    h_BxLxF = jax.nn.silu(gate_BxLxF) * up_BxLxF
    # Checked at trace time: only a model given a mask by an intervention pays for it.
    mask = getattr(self, "neuron_mask", None)
    if mask is not None:
      h_BxLxF = h_BxLxF * mask[...].astype(h_BxLxF.dtype)
    h_BxLxF = constrain(h_BxLxF, ("batch", "length", "act_mlp"))
    out_BxLxE = dense(h_BxLxF, self.down_proj[...], dt)
    return constrain(out_BxLxE, ("batch", "act_length", "act_embed"))
