"""Mixture-of-experts feed-forward layer: a softmax top-k router over SwiGLU experts.

Each token's router logits (float32) pick its ``top_k`` experts; their
probabilities, renormalised over the chosen k, weight the experts' outputs.
Two ways to get tokens to their experts (``config.model.moe_dispatch``):

* ``dropless``: the T·k (token, slot) assignments are sorted by expert and
  each expert's contiguous rows go through one grouped matmul
  (``jax.lax.ragged_dot``, group sizes = rows per expert). No token is
  dropped and no compute is padded.
* ``capacity``: each expert gets a fixed buffer of ceil(C·T·k/N) rows filled
  by one-hot dispatch/combine einsums (GShard / Switch); assignments past a
  full buffer are dropped (top-1 choices fill buffers before top-2 ones) and
  counted. Fixed shapes, but tokens compete across the batch.

The expert weights are stacked on a leading ``expert`` axis, which the
logical rules map to the ``expert`` mesh axis (expert parallelism); fsdp and
tensor split the embed and mlp dims inside each expert as for the dense MLP.
The layer returns its router logits and load statistics for the losses
(``load_balance_loss``, ``router_z_loss``) and the logs.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from polyglot_jax.mesh import constrain
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.layers import dtype_of, param
from polyglot_jax.models.mlp import SwiGLU


def route(router_logits, k: int):
  """Top-k routing: softmax over the experts, the k most probable, weights renormalised over them.

  Args:
    router_logits: [T, N] float32 router logits.
    k: experts per token.

  Returns:
    (indices [T, k] int32, weights [T, k] float32 summing to 1 per token, probs [T, N] float32).
  """
  probs_TxN = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
  top_TxK, indices_TxK = jax.lax.top_k(probs_TxN, k)
  weights_TxK = top_TxK / jnp.sum(top_TxK, axis=-1, keepdims=True)
  return indices_TxK.astype(jnp.int32), weights_TxK, probs_TxN


def _token_weights(num_tokens: int, mask):
  """Float32 [T] weights of the tokens that count (all when ``mask`` is None) and their number (≥ 1)."""
  if mask is None:
    return jnp.ones((num_tokens,), jnp.float32), float(num_tokens)
  m_T = mask.reshape(num_tokens).astype(jnp.float32)
  return m_T, jnp.maximum(jnp.sum(m_T), 1.0)


def expert_load(indices_TxK, num_experts: int, mask=None):
  """Fraction of the (token, slot) assignments sent to each expert, [N] float32 (sums to 1)."""
  t, k = indices_TxK.shape
  m_T, count = _token_weights(t, mask)
  one_hot_TxKxN = jax.nn.one_hot(indices_TxK, num_experts, dtype=jnp.float32)
  return jnp.einsum("tkn,t->n", one_hot_TxKxN, m_T) / (count * k)


def load_balance_loss(router_logits, k: int, *, mask=None):
  """Switch/GShard balance loss N·Σ_i f_i·P_i (1 when perfectly balanced).

  Args:
    router_logits: [T, N] float32 router logits.
    k: experts per token.
    mask: optional [T] (bool or 0/1): tokens that count (padding excluded).

  Returns:
    Scalar float32: f_i is the fraction of the T·k top-k assignments sent to
    expert i, P_i the mean router probability of expert i over tokens.
  """
  t, n = router_logits.shape
  indices_TxK, _, probs_TxN = route(router_logits, k)
  m_T, count = _token_weights(t, mask)
  f_N = expert_load(indices_TxK, n, mask)
  p_N = jnp.einsum("tn,t->n", probs_TxN, m_T) / count
  return n * jnp.sum(f_N * p_N)


def router_z_loss(router_logits, *, mask=None):
  """ST-MoE router z-loss: mean over tokens of logsumexp(logits)².

  Args:
    router_logits: [T, N] float32 router logits.
    mask: optional [T] (bool or 0/1): tokens that count (padding excluded).

  Returns:
    Scalar float32.
  """
  t = router_logits.shape[0]
  m_T, count = _token_weights(t, mask)
  z_T = jax.nn.logsumexp(router_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(z_T * z_T * m_T) / count


def expert_capacity(num_tokens: int, k: int, num_experts: int, factor: float) -> int:
  """Rows per expert buffer in capacity dispatch: ceil(factor · T · k / N)."""
  return max(1, math.ceil(factor * num_tokens * k / num_experts))


class MoE(nnx.Module):
  """N SwiGLU experts behind a bias-free softmax top-k router, plus optional shared experts.

  ``__call__(x_BxLxE, mask_BxL=None)`` returns ``(out_BxLxE, aux)`` with aux:
    router_logits: [T, N] float32 (T = B·L);
    expert_load: [N] fraction of the (token, slot) assignments routed to each expert;
    dropped_fraction: scalar, the fraction of assignments dropped (0 in dropless dispatch).
  ``mask_BxL`` marks real tokens: padding is left out of the statistics and, in
  capacity dispatch, takes no buffer rows (its output is then 0).
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    if cfg.num_experts < 1:
      raise ValueError(f"config.model.num_experts={cfg.num_experts}: an MoE layer needs at least 1 expert")
    _check_expert_axis(cfg.num_experts)
    pdt = dtype_of(cfg.param_dtype)
    n, d, f, std = cfg.num_experts, cfg.d_model, cfg.mlp_dim, cfg.init_std
    self.router = param(rngs, (d, n), ("embed", None), pdt, std)
    self.gate_proj = param(rngs, (n, d, f), ("expert", "embed", "mlp"), pdt, std)
    self.up_proj = param(rngs, (n, d, f), ("expert", "embed", "mlp"), pdt, std)
    self.down_proj = param(rngs, (n, f, d), ("expert", "mlp", "embed"), pdt, std)
    if cfg.moe_shared_experts:
      self.shared = SwiGLU(dataclasses.replace(cfg, mlp_dim=cfg.mlp_dim * cfg.moe_shared_experts), rngs)
    self.num_experts = n
    self.top_k = cfg.moe_top_k
    self.dispatch = cfg.moe_dispatch
    self.capacity_factor = cfg.moe_capacity_factor
    self.dtype = dtype_of(cfg.dtype)

  def router_logits(self, x_TxE):
    """[T, N] float32 logits; the router runs in float32 whatever the compute dtype."""
    return jnp.matmul(x_TxE.astype(jnp.float32), self.router[...].astype(jnp.float32))

  def __call__(self, x_BxLxE, mask_BxL=None):
    b, length, e = x_BxLxE.shape
    t = b * length
    x_TxE = x_BxLxE.reshape(t, e).astype(self.dtype)
    mask_T = None if mask_BxL is None else mask_BxL.reshape(t)
    logits_TxN = self.router_logits(x_TxE)
    indices_TxK, weights_TxK, _ = route(logits_TxN, self.top_k)
    if self.dispatch == "dropless":
      out_TxE = self._dropless(x_TxE, indices_TxK, weights_TxK)
      dropped = jnp.zeros((), jnp.float32)
    else:
      out_TxE, dropped = self._capacity(x_TxE, indices_TxK, weights_TxK, mask_T)
    out_BxLxE = out_TxE.reshape(b, length, e)
    if hasattr(self, "shared"):
      out_BxLxE = out_BxLxE + self.shared(x_BxLxE)
    aux = {"router_logits": logits_TxN, "expert_load": expert_load(indices_TxK, self.num_experts, mask_T),
           "dropped_fraction": dropped}
    return constrain(out_BxLxE, ("batch", "act_length", "act_embed")), aux

  def _weights(self):
    dt = self.dtype
    return self.gate_proj[...].astype(dt), self.up_proj[...].astype(dt), self.down_proj[...].astype(dt)

  def _dropless(self, x_TxE, indices_TxK, weights_TxK):
    """Sort the T·k assignments by expert, one grouped matmul per projection, unsort and combine."""
    t, k = indices_TxK.shape
    gate_NxExF, up_NxExF, down_NxFxE = self._weights()
    expert_A = indices_TxK.reshape(t * k)  # A = T·k assignments, token-major.
    order_A = jnp.argsort(expert_A, stable=True)
    x_AxE = jnp.take(x_TxE, order_A // k, axis=0)
    group_sizes_N = jnp.bincount(expert_A, length=self.num_experts).astype(jnp.int32)
    gate_AxF = jax.lax.ragged_dot(x_AxE, gate_NxExF, group_sizes_N)
    up_AxF = jax.lax.ragged_dot(x_AxE, up_NxExF, group_sizes_N)
    h_AxF = jax.nn.silu(gate_AxF) * up_AxF
    y_AxE = jax.lax.ragged_dot(h_AxF, down_NxFxE, group_sizes_N)
    # Back to token-major order: sorted row r is assignment order_A[r].
    y_TxKxE = jnp.zeros_like(y_AxE).at[order_A].set(y_AxE, unique_indices=True).reshape(t, k, -1)
    return jnp.einsum("tke,tk->te", y_TxKxE, weights_TxK.astype(y_TxKxE.dtype))

  def _capacity(self, x_TxE, indices_TxK, weights_TxK, mask_T):
    """Fixed per-expert buffers filled by one-hot dispatch; returns (out [T, E], dropped fraction)."""
    t, k = indices_TxK.shape
    n, dt = self.num_experts, self.dtype
    cap = expert_capacity(t, k, n, self.capacity_factor)
    valid_T = jnp.ones((t,), jnp.int32) if mask_T is None else mask_T.astype(jnp.int32)
    # Slot-major order: every token's first choice claims a buffer row before any second choice.
    choice_KxTxN = jax.nn.one_hot(indices_TxK.T, n, dtype=jnp.int32) * valid_T[None, :, None]
    rank_KxTxN = jnp.cumsum(choice_KxTxN.reshape(k * t, n), axis=0).reshape(k, t, n) - 1
    row_KxT = jnp.sum(rank_KxTxN * choice_KxTxN, axis=-1)
    kept_KxT = (row_KxT < cap) & (jnp.sum(choice_KxTxN, axis=-1) > 0)
    slot_KxTxC = jax.nn.one_hot(row_KxT, cap, dtype=jnp.float32) * kept_KxT[..., None]
    choice_f = choice_KxTxN.astype(jnp.float32)
    dispatch_TxNxC = jnp.einsum("ktn,ktc->tnc", choice_f, slot_KxTxC)
    combine_TxNxC = jnp.einsum("ktn,ktc,kt->tnc", choice_f, slot_KxTxC, weights_TxK.T)
    x_NxCxE = jnp.einsum("tnc,te->nce", dispatch_TxNxC.astype(dt), x_TxE)
    x_NxCxE = constrain(x_NxCxE, ("expert", None, "act_embed"))
    gate_NxExF, up_NxExF, down_NxFxE = self._weights()
    h_NxCxF = jax.nn.silu(jnp.einsum("nce,nef->ncf", x_NxCxE, gate_NxExF)) * jnp.einsum(
        "nce,nef->ncf", x_NxCxE, up_NxExF)
    h_NxCxF = constrain(h_NxCxF, ("expert", None, "act_mlp"))
    y_NxCxE = constrain(jnp.einsum("ncf,nfe->nce", h_NxCxF, down_NxFxE), ("expert", None, "act_embed"))
    out_TxE = jnp.einsum("tnc,nce->te", combine_TxNxC.astype(dt), y_NxCxE)
    assigned = jnp.maximum(jnp.sum(valid_T).astype(jnp.float32) * k, 1.0)
    dropped = 1.0 - jnp.sum(kept_KxT).astype(jnp.float32) / assigned
    return out_TxE, dropped


def _check_expert_axis(num_experts: int) -> None:
  """Under an active mesh, the expert mesh axis must divide the number of experts."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or "expert" not in mesh.axis_names:
    return
  size = dict(zip(mesh.axis_names, mesh.axis_sizes))["expert"]
  if num_experts % size:
    raise ValueError(f"config.mesh.expert={size} does not divide config.model.num_experts={num_experts}; "
                     "pick an expert axis size that divides it")
