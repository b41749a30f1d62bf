"""Mixture-of-experts feed-forward layer: a softmax top-k router over SwiGLU experts.

Each token's router logits (float32) pick its ``top_k`` experts; their
probabilities, renormalised over the chosen k, weight the experts' outputs.
Two ways to get tokens to their experts (``config.model.moe_dispatch``):

* ``dropless``: the T·k (token, slot) assignments are sorted by expert and
  each expert's contiguous rows go through one grouped matmul
  (``jax.lax.ragged_dot``, group sizes = rows per expert; on CPU, groups
  padded to whole blocks, ``blocked_grouped_matmuls``). No token is dropped.
* ``capacity``: each expert gets a fixed buffer of ceil(C·T·k/N) rows (GShard /
  Switch), filled by a scatter of the kept assignments and read back by a
  gather; assignments past a full buffer are dropped (top-1 choices fill
  buffers before top-2 ones) and counted. Fixed shapes, but tokens compete
  across the batch.

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
    """Sort the T·k assignments by expert, grouped matmuls over the expert groups, unsort and combine.

    The grouped matmul is ``jax.lax.ragged_dot`` on TPU and GPU. The CPU backend
    lowers ragged_dot to one dense matmul per expert over all rows (N times the
    work), so there each group is padded to whole blocks instead
    (``blocked_grouped_matmuls``): the same rows and result, ≤ N blocks of padding.
    """
    t, k = indices_TxK.shape
    gate_NxExF, up_NxExF, down_NxFxE = self._weights()
    expert_A = indices_TxK.reshape(t * k)  # A = T·k assignments, token-major.
    order_A = jnp.argsort(expert_A, stable=True)
    group_sizes_N = jnp.bincount(expert_A, length=self.num_experts).astype(jnp.int32)
    if _platform() == "cpu":
      # Every row moves once each way: a gather of token rows into the padded blocks and a gather of
      # each assignment's output row back (only integer indices are scattered).
      a, n = t * k, self.num_experts
      b = block_rows(a, n)
      num_blocks, padded_start_N, block_expert = _block_layout(group_sizes_N, a, b)
      start_N = jnp.cumsum(group_sizes_N) - group_sizes_N
      expert_sorted = expert_A[order_A]
      dest_sorted = padded_start_N[expert_sorted] + jnp.arange(a) - start_N[expert_sorted]
      dest_A = jnp.zeros((a,), jnp.int32).at[order_A].set(dest_sorted.astype(jnp.int32), unique_indices=True)
      source_P = jnp.full((num_blocks * b,), t, jnp.int32).at[dest_A].set(
          jnp.arange(a, dtype=jnp.int32) // k, unique_indices=True)  # Padding rows read token t: zeros.
      x_PxE = jnp.take(x_TxE, source_P, axis=0, mode="fill", fill_value=0)
      y_PxE = _block_swiglu(x_PxE, block_expert, b, gate_NxExF, up_NxExF, down_NxFxE)
      y_TxKxE = jnp.take(y_PxE, dest_A, axis=0).reshape(t, k, -1)
    else:
      x_AxE = jnp.take(x_TxE, order_A // k, axis=0)
      gate_AxF = jax.lax.ragged_dot(x_AxE, gate_NxExF, group_sizes_N)
      up_AxF = jax.lax.ragged_dot(x_AxE, up_NxExF, group_sizes_N)
      h_AxF = jax.nn.silu(gate_AxF) * up_AxF
      y_AxE = jax.lax.ragged_dot(h_AxF, down_NxFxE, group_sizes_N)
      # Back to token-major order: sorted row r is assignment order_A[r].
      y_TxKxE = jnp.zeros_like(y_AxE).at[order_A].set(y_AxE, unique_indices=True).reshape(t, k, -1)
    return jnp.einsum("tke,tk->te", y_TxKxE, weights_TxK.astype(y_TxKxE.dtype))

  def _capacity(self, x_TxE, indices_TxK, weights_TxK, mask_T):
    """Fixed per-expert buffers filled by a scatter of the kept assignments; returns (out [T, E], dropped fraction)."""
    t, k = indices_TxK.shape
    n, dt = self.num_experts, self.dtype
    cap = expert_capacity(t, k, n, self.capacity_factor)
    valid_T = jnp.ones((t,), jnp.int32) if mask_T is None else mask_T.astype(jnp.int32)
    # Slot-major order: every token's first choice claims a buffer row before any second choice.
    choice_KxTxN = jax.nn.one_hot(indices_TxK.T, n, dtype=jnp.int32) * valid_T[None, :, None]
    rank_KxTxN = jnp.cumsum(choice_KxTxN.reshape(k * t, n), axis=0).reshape(k, t, n) - 1
    row_KxT = jnp.sum(rank_KxTxN * choice_KxTxN, axis=-1)
    kept_KxT = (row_KxT < cap) & (jnp.sum(choice_KxTxN, axis=-1) > 0)
    # Buffer row of each kept (slot, token) assignment in the flattened [N·C] buffers; dropped ones point
    # past the end, so the scatter skips them and the gather reads zeros. (Gathers and scatters move
    # T·k rows; one-hot dispatch/combine einsums would cost T·N·C·E multiply-adds.)
    expert_KxT = indices_TxK.T
    past_end_KxT = n * cap + jnp.arange(k * t).reshape(k, t)  # Distinct, so the indices stay unique.
    dest_KxT = jnp.where(kept_KxT, expert_KxT * cap + row_KxT, past_end_KxT)
    x_KxTxE = jnp.broadcast_to(x_TxE[None], (k,) + x_TxE.shape)
    x_NxCxE = jnp.zeros((n * cap, x_TxE.shape[-1]), dt).at[dest_KxT.reshape(-1)].set(
        x_KxTxE.reshape(k * t, -1), mode="drop", unique_indices=True).reshape(n, cap, -1)
    x_NxCxE = constrain(x_NxCxE, ("expert", None, "act_embed"))
    gate_NxExF, up_NxExF, down_NxFxE = self._weights()
    h_NxCxF = jax.nn.silu(jnp.einsum("nce,nef->ncf", x_NxCxE, gate_NxExF)) * jnp.einsum(
        "nce,nef->ncf", x_NxCxE, up_NxExF)
    h_NxCxF = constrain(h_NxCxF, ("expert", None, "act_mlp"))
    y_NxCxE = constrain(jnp.einsum("ncf,nfe->nce", h_NxCxF, down_NxFxE), ("expert", None, "act_embed"))
    y_KxTxE = jnp.take(y_NxCxE.reshape(n * cap, -1), dest_KxT, axis=0, mode="fill", fill_value=0)
    out_TxE = jnp.einsum("kte,kt->te", y_KxTxE, (weights_TxK.T * kept_KxT).astype(dt))
    assigned = jnp.maximum(jnp.sum(valid_T).astype(jnp.float32) * k, 1.0)
    dropped = 1.0 - jnp.sum(kept_KxT).astype(jnp.float32) / assigned
    return out_TxE, dropped


def _platform() -> str:
  """The platform being traced for: the active mesh's devices, else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  return getattr(device, "platform", None) or jax.default_backend()


def block_rows(rows: int, groups: int) -> int:
  """Rows per block of ``blocked_grouped_matmuls``: a power of two near rows / (4·groups), in [8, 512].

  About four blocks per group on average, so padding (< one block per group) stays
  near an eighth of the rows while the per-block weight gathers stay few.
  """
  target = max(rows // (4 * max(groups, 1)), 1)
  return int(min(512, max(8, 2 ** int(math.floor(math.log2(target))))))


def blocked_grouped_matmuls(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, block: int = 0):
  """SwiGLU over rows sorted by expert, each expert's rows padded to whole blocks of one expert.

  Row r of group n is placed at its group's padded start + its offset, each block of
  ``block`` rows is multiplied by its expert's weights (a batched matmul over blocks,
  weights gathered per block), and the rows are read back in the input order.
  Padding rows are zero and never read back.

  Args:
    x_AxE: [A, E] rows sorted by expert (group n = the next group_sizes_N[n] rows).
    group_sizes_N: [N] int32 rows per expert, summing to A.
    gate_NxExF, up_NxExF, down_NxFxE: the experts' SwiGLU weights.
    block: rows per block; 0 picks ``block_rows(A, N)``.

  Returns:
    [A, E]: down(silu(x·gate) * (x·up)) of each row's expert.
  """
  a, e = x_AxE.shape
  n = group_sizes_N.shape[0]
  b = block or block_rows(a, n)
  num_blocks, padded_start_N, block_expert = _block_layout(group_sizes_N, a, b)
  start_N = jnp.cumsum(group_sizes_N) - group_sizes_N
  expert_A = jnp.repeat(jnp.arange(n), group_sizes_N, total_repeat_length=a)
  dest_A = padded_start_N[expert_A] + jnp.arange(a) - start_N[expert_A]
  x_PxE = jnp.zeros((num_blocks * b, e), x_AxE.dtype).at[dest_A].set(x_AxE, unique_indices=True)
  y_PxE = _block_swiglu(x_PxE, block_expert, b, gate_NxExF, up_NxExF, down_NxFxE)
  return jnp.take(y_PxE, dest_A, axis=0)


def _block_layout(group_sizes_N, rows: int, b: int):
  """(number of blocks, padded start of each group [N], expert of each block) for groups padded to blocks of b."""
  n = group_sizes_N.shape[0]
  num_blocks = -(-rows // b) + n  # Σ ceil(g_n / b) ≤ rows / b + N.
  padded_N = (group_sizes_N + b - 1) // b * b
  padded_start_N = jnp.cumsum(padded_N) - padded_N
  # Expert of each block: how many groups' padded ends lie at or before its first row.
  block_expert = jnp.searchsorted(jnp.cumsum(padded_N), jnp.arange(num_blocks) * b, side="right")
  return num_blocks, padded_start_N, jnp.minimum(block_expert, n - 1)


def _block_swiglu(x_PxE, block_expert, b: int, gate_NxExF, up_NxExF, down_NxFxE):
  """SwiGLU of each block of b rows with its expert's weights (gathered per block): [P, E] → [P, E]."""
  p, e = x_PxE.shape
  x_BxRxE = x_PxE.reshape(p // b, b, e)
  gate = jnp.einsum("jre,jef->jrf", x_BxRxE, jnp.take(gate_NxExF, block_expert, axis=0))
  up = jnp.einsum("jre,jef->jrf", x_BxRxE, jnp.take(up_NxExF, block_expert, axis=0))
  y_BxRxE = jnp.einsum("jrf,jfe->jre", jax.nn.silu(gate) * up, jnp.take(down_NxFxE, block_expert, axis=0))
  return y_BxRxE.reshape(p, e)


def _check_expert_axis(num_experts: int) -> None:
  """Under an active mesh, the expert mesh axis must divide the number of experts."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or "expert" not in mesh.axis_names:
    return
  size = dict(zip(mesh.axis_names, mesh.axis_sizes))["expert"]
  if num_experts % size:
    raise ValueError(f"config.mesh.expert={size} does not divide config.model.num_experts={num_experts}; "
                     "pick an expert axis size that divides it")
