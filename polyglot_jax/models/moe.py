"""Mixture-of-experts feed-forward layer: a softmax top-k router over SwiGLU experts.

Each token's router logits (float32) pick its ``top_k`` experts; their
probabilities, renormalised over the chosen k, weight the experts' outputs.
Two ways to get tokens to their experts (``config.model.moe_dispatch``):

* ``dropless``: the T·k (token, slot) assignments are sorted by expert and
  each expert's contiguous rows go through one grouped matmul
  (``jax.lax.ragged_dot``, group sizes = rows per expert; on CPU, a loop over
  pieces of each group's rows, ``blocked_grouped_matmuls``). No token is dropped.
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
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.mesh import constrain
from polyglot_jax.models.attention import attention_platform
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
    self.grouped_matmul = cfg.moe_grouped_matmul
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
    """Dropless dispatch: per device under a multi-device mesh (``expert_parallel_swiglu``), else local."""
    weights = self._weights()
    if mesh_lib.multi_device_mesh():
      return expert_parallel_swiglu(x_TxE, indices_TxK, weights_TxK, *weights, grouped_matmul=self.grouped_matmul)
    return local_experts_swiglu(x_TxE, indices_TxK, weights_TxK, *weights, grouped_matmul=self.grouped_matmul)

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



def local_experts_swiglu(x_TxE, indices_TxK, weights_TxK, gate_NxExF, up_NxExF, down_NxFxE, first_expert=None,
                        grouped_matmul: str = "auto"):
  """Dropless top-k SwiGLU over the experts held here: sort the assignments by expert, grouped matmuls, combine.

  The T·k (token, slot) assignments are sorted by expert and each expert's
  contiguous rows go through one grouped matmul: the Pallas grouped-matmul
  kernels on TPU (``megablox_swiglu``), ``jax.lax.ragged_dot`` on GPU. The CPU backend lowers ragged_dot to one dense matmul per expert over
  all rows (N times the work), so there a loop runs each group's rows in pieces
  instead (``blocked_grouped_matmuls``): the same rows and result, < one small
  piece of waste per group. Rows move by gathers only, both ways and in the
  backward pass (``_take_rows``); the combine is a weighted sum over each
  token's k rows.

  Args:
    x_TxE: [T, E] tokens.
    indices_TxK, weights_TxK: the routing (``route``): expert ids in [0, N_all) and combine weights.
    gate_NxExF, up_NxExF, down_NxFxE: the weights of N consecutive experts.
    first_expert: id of the first of them (an int32 scalar; under expert parallelism, this
      device's shard). None: they are all the experts, ids 0..N-1.
    grouped_matmul: ``config.model.moe_grouped_matmul`` (``grouped_matmul_impl``).

  Returns:
    [T, E]: Σ over each token's slots routed to these experts of weight · expert(x); slots
    routed elsewhere add 0 (their rows sort after the last group and are not computed).
  """
  t, k = indices_TxK.shape
  a, n = t * k, gate_NxExF.shape[0]
  expert_A = indices_TxK.reshape(a)  # A = T·k assignments, token-major.
  if first_expert is not None:
    expert_A = expert_A - first_expert
    mine_A = (expert_A >= 0) & (expert_A < n)
    expert_A = jnp.where(mine_A, expert_A, n)  # Other devices' assignments sort last, in no group.
  order_A = jnp.argsort(expert_A, stable=True).astype(jnp.int32)  # Sorted row r is assignment order_A[r].
  rank_A = _inverse_permutation(order_A)  # Assignment i is sorted row rank_A[i].
  # Rows per expert by a compare-and-sum, not bincount: its scatter-add is an op the TPU cost model
  # cannot score (it would leave the planner without a step-time estimate), and N is small.
  group_sizes_N = jnp.sum(expert_A[:, None] == jnp.arange(n, dtype=expert_A.dtype)[None], axis=0, dtype=jnp.int32)
  x_AxE = _take_rows(x_TxE, order_A // k, rank_A)
  impl = grouped_matmul_impl(grouped_matmul)
  if impl == "blocked":
    y_AxE = blocked_grouped_matmuls(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE)
  elif impl == "megablox":
    y_AxE = megablox_swiglu(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE)
  else:
    gate_AxF = jax.lax.ragged_dot(x_AxE, gate_NxExF, group_sizes_N)
    up_AxF = jax.lax.ragged_dot(x_AxE, up_NxExF, group_sizes_N)
    h_AxF = jax.nn.silu(gate_AxF) * up_AxF
    y_AxE = jax.lax.ragged_dot(h_AxF, down_NxFxE, group_sizes_N)
  y_AxE = _take_rows(y_AxE, rank_A, order_A)  # Back to token-major order.
  weights_AxE = weights_TxK.reshape(a, 1).astype(y_AxE.dtype)
  if first_expert is not None:
    # Rows in no group hold whatever the grouped matmul left there: select, never multiply, them away.
    y_AxE = jnp.where(mine_A[:, None], y_AxE, 0)
  return jnp.sum((y_AxE * weights_AxE).reshape(t, k, -1), axis=1)


def grouped_matmul_impl(name: str = "auto") -> str:
  """The grouped matmul dropless dispatch runs: ``name``, or for "auto" the platform's.

  Args:
    name: ``config.model.moe_grouped_matmul``: auto | megablox | ragged_dot | blocked.

  Returns:
    "megablox" on TPU, "ragged_dot" on GPU, "blocked" on CPU (XLA:CPU lowers ragged_dot to one
    dense matmul per expert) for "auto"; otherwise ``name``. megablox off TPU is a one-line error
    (its Pallas kernels run elsewhere only in interpret mode, ``megablox_swiglu(interpret=True)``).
  """
  platform = attention_platform()
  if name == "auto":
    return {"tpu": "megablox", "cpu": "blocked"}.get(platform, "ragged_dot")
  if name == "megablox" and platform != "tpu":
    raise ValueError(f"config.model.moe_grouped_matmul='megablox' needs a TPU (platform here: {platform}); "
                     "use auto, ragged_dot or blocked")
  return name


MEGABLOX_ROWS = 128  # Row tile of the TPU grouped matmuls: the rows are padded to a multiple of it.


def megablox_swiglu(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, interpret: bool = False):
  """SwiGLU over rows sorted by expert with the Pallas TPU grouped-matmul kernels (megablox ``gmm``).

  The kernels visit only the row tiles of each group, so rows past the groups
  (under expert parallelism, the assignments of other devices' experts) cost
  nothing. Rows are padded to a multiple of ``MEGABLOX_ROWS``; the padding and
  the rows past the groups form one last group that no weights cover, whose
  outputs are 0. The backward pass is the kernels' own (``gmm`` for the rows,
  ``tgmm`` for the weights).

  Args:
    x_AxE: [A, E] rows sorted by expert (group n = the next group_sizes_N[n] rows).
    group_sizes_N: [N] int32 rows per expert, summing to at most A.
    gate_NxExF, up_NxExF, down_NxFxE: the experts' SwiGLU weights.
    interpret: Pallas interpret mode (any platform; for tests).

  Returns:
    [A, E]: down(silu(x·gate) * (x·up)) of each row's expert; 0 for rows in no group.
  """
  from jax.experimental.pallas.ops.tpu.megablox import ops as megablox
  a = x_AxE.shape[0]
  pad = -a % MEGABLOX_ROWS
  x_PxE = jnp.pad(x_AxE, ((0, pad), (0, 0)))
  rest = a + pad - jnp.sum(group_sizes_N)
  sizes = jnp.concatenate([group_sizes_N, rest[None]]).astype(jnp.int32)
  dt = jnp.result_type(x_AxE, gate_NxExF)

  def gmm(lhs, rhs):
    return megablox.gmm(lhs, rhs, sizes, preferred_element_type=dt, interpret=interpret)

  h_PxF = jax.nn.silu(gmm(x_PxE, gate_NxExF)) * gmm(x_PxE, up_NxExF)
  return gmm(h_PxF.astype(dt), down_NxFxE)[:a]


def expert_parallel_swiglu(x_TxE, indices_TxK, weights_TxK, gate_NxExF, up_NxExF, down_NxFxE,
                           grouped_matmul: str = "auto"):
  """Dropless dispatch under the active mesh, per device (``shard_map``): no global sort, no all-reduce of weights.

  Each device holds the tokens of its batch shard and the experts of its expert
  shard (their embed dim gathered over the FSDP axes, their mlp dim split over
  the tensor axes). Tokens meet their experts in two collectives per layer:

  * mesh axes that split both the experts (or the mlp dim) and the tokens, which
    is ``expert`` under the default rules (the batch is split over data, fsdp and
    expert): the tokens are all-gathered over them, each device runs its own
    experts' rows (``local_experts_swiglu``: local sort, grouped matmuls), and the
    partial outputs are reduce-scattered back to the token shards;
  * axes that split the experts or the mlp dim but not the tokens (``tensor``):
    the partial outputs are summed (all-reduce), as in a tensor-parallel MLP.

  Every token's k slots are computed exactly once over the mesh, so nothing is
  dropped and no buffer has a capacity. The traffic per layer is the gathered
  [T·P_e, E] tokens and their reduce-scatter (a fixed-shape stand-in for the
  all-to-all of the k·T routed rows; equal to it at P_e = k).

  Args:
    x_TxE, indices_TxK, weights_TxK: tokens and routing, split over the batch axes.
    gate_NxExF, up_NxExF, down_NxFxE: all N experts' weights (global shapes).
    grouped_matmul: ``config.model.moe_grouped_matmul``.

  Returns:
    [T, E], laid out like ``x_TxE``.
  """
  shape = dict(jax.sharding.get_abstract_mesh().shape)
  token_axes = mesh_lib.logical_mesh_axes("batch")
  if x_TxE.shape[0] % math.prod(shape[a] for a in token_axes):
    token_axes = ()  # Too few tokens to split (a small decode batch): every device takes them all.
  expert_axes = mesh_lib.logical_mesh_axes("expert")
  embed_axes = tuple(a for a in mesh_lib.logical_mesh_axes("embed") if a not in expert_axes)
  mlp_axes = tuple(a for a in mesh_lib.logical_mesh_axes("mlp") if a not in expert_axes + embed_axes)
  n, f = gate_NxExF.shape[0], gate_NxExF.shape[-1]
  if n % math.prod(shape[a] for a in expert_axes):
    expert_axes = ()
  if gate_NxExF.shape[1] % math.prod(shape[a] for a in embed_axes):
    embed_axes = ()
  if f % math.prod(shape[a] for a in mlp_axes):
    mlp_axes = ()
  split = expert_axes + mlp_axes
  gather = tuple(a for a in split if a in token_axes)  # Tokens differ along these: gather, then scatter.
  reduce = tuple(a for a in split if a not in token_axes)  # Tokens are the same along these: sum.
  P = jax.sharding.PartitionSpec
  spec = lambda axes: (axes if len(axes) > 1 else axes[0]) if axes else None  # noqa: E731
  rows = P(spec(token_axes), None)
  w_in, w_out = P(spec(expert_axes), spec(embed_axes), spec(mlp_axes)), P(spec(expert_axes), spec(mlp_axes),
                                                                         spec(embed_axes))

  def run(x_TxE, indices_TxK, weights_TxK, gate_NxExF, up_NxExF, down_NxFxE):
    if embed_axes:  # FSDP: the whole embed dim of this device's experts, for this layer only.
      gate_NxExF, up_NxExF = (jax.lax.all_gather(w, embed_axes, axis=1, tiled=True) for w in (gate_NxExF, up_NxExF))
      down_NxFxE = jax.lax.all_gather(down_NxFxE, embed_axes, axis=2, tiled=True)
    if gather:
      x_TxE, indices_TxK, weights_TxK = (jax.lax.all_gather(v, gather, axis=0, tiled=True)
                                         for v in (x_TxE, indices_TxK, weights_TxK))
    first = jax.lax.axis_index(expert_axes) * gate_NxExF.shape[0] if expert_axes else None
    y_TxE = local_experts_swiglu(x_TxE, indices_TxK, weights_TxK, gate_NxExF, up_NxExF, down_NxFxE, first,
                                 grouped_matmul)
    if reduce:
      y_TxE = jax.lax.psum(y_TxE, reduce)
    if gather:
      y_TxE = jax.lax.psum_scatter(y_TxE, gather, scatter_dimension=0, tiled=True)
    return y_TxE

  return jax.shard_map(run, in_specs=(rows, rows, rows, w_in, w_in, w_out), out_specs=rows,
                       check_vma=False)(
      x_TxE, indices_TxK, weights_TxK, gate_NxExF, up_NxExF, down_NxFxE)


def _inverse_permutation(perm_A):
  """The inverse of a permutation of arange(A): inv[perm[r]] = r (int32)."""
  a = perm_A.shape[0]
  return jnp.zeros((a,), jnp.int32).at[perm_A].set(jnp.arange(a, dtype=jnp.int32), unique_indices=True)


@jax.custom_vjp
def _take_rows(x_RxE, index_I, inverse_J):
  """x_RxE[index_I], whose backward pass is a gather too (XLA's transpose of a gather is a scatter-add).

  Every row r of x must be read exactly m = J / R times, at the output rows
  inverse_J[r·m : (r+1)·m]; the cotangent of row r is then the sum of those m rows.
  """
  del inverse_J
  return x_RxE.at[index_I].get(mode="promise_in_bounds")


def _take_rows_fwd(x_RxE, index_I, inverse_J):
  return _take_rows(x_RxE, index_I, inverse_J), (x_RxE.shape[0], index_I, inverse_J)


def _take_rows_bwd(res, ct_IxE):
  rows, index_I, inverse_J = res
  ct_JxE = ct_IxE.at[inverse_J].get(mode="promise_in_bounds")
  ct_RxE = jnp.sum(ct_JxE.reshape(rows, inverse_J.shape[0] // rows, -1), axis=1)
  return ct_RxE, None, None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


_BIG = 8  # Pieces of a group: as many of 8·block rows as fit, then ones of block rows.


def block_rows(rows: int, groups: int) -> int:
  """The small piece of ``blocked_grouped_matmuls``: a power of two near rows / (16·groups), in [8, 128].

  Args:
    rows: rows to multiply (T·k).
    groups: experts.

  Returns:
    Rows of a small piece (a big one is 8 times that). A group wastes less than
    one small piece (half of one on average: about 1/32 of the rows at even
    loads), and a group of g rows takes about g / (8·block) + 4 pieces.
  """
  target = max(rows // (16 * max(groups, 1)), 1)
  return int(min(128, max(8, 2 ** int(math.floor(math.log2(target))))))


def blocked_grouped_matmuls(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, block: int = 0):
  """SwiGLU over rows sorted by expert, each expert's rows taken in pieces of two static sizes.

  A loop over the experts takes each expert's weights once and runs its rows in
  pieces: as many of ``8·block`` rows as fit, then pieces of ``block`` rows, the
  last of which may run past the group's end (those rows' results are
  overwritten by their own group, which comes later; in the backward pass their
  cotangents are zeroed). So a group wastes < ``block`` rows and big groups run
  in big matmuls. The backward pass is the same loop (a custom VJP: reverse-mode
  autodiff cannot go through loops of data-dependent length), each expert's
  weight gradients accumulated in float32.

  Args:
    x_AxE: [A, E] rows sorted by expert (group n = the next group_sizes_N[n] rows).
    group_sizes_N: [N] int32 rows per expert, summing to A.
    gate_NxExF, up_NxExF, down_NxFxE: the experts' SwiGLU weights.
    block: rows of a small piece; 0 picks ``block_rows(A, N)``.

  Returns:
    [A, E]: down(silu(x·gate) * (x·up)) of each row's expert.
  """
  a, n = x_AxE.shape[0], group_sizes_N.shape[0]
  return _grouped_swiglu(x_AxE, group_sizes_N.astype(jnp.int32), gate_NxExF, up_NxExF, down_NxFxE,
                         block or block_rows(a, n))


def _over_pieces(group_sizes_N, rows: int, b: int, open_group, piece, close_group, carry):
  """Runs ``piece`` over every group's pieces, group by group in row order; returns the final carry.

  Per group n: ``local = open_group(n)``; then for each piece
  ``(carry, local) = piece(carry, local, row, size, end)`` with its first row, its
  static number of rows and ``end``: None for a big piece (all its rows are the
  group's), the group's end row for a small one (rows from there on are not);
  then ``carry = close_group(carry, local, n)``. Big pieces are left out when
  they would be longer than ``rows`` (the total).
  """
  big = _BIG * b if _BIG * b <= rows else 0
  end_N = jnp.cumsum(group_sizes_N)
  start_N = end_N - group_sizes_N

  def group(n, carry):
    start, size = start_N[n], group_sizes_N[n]
    state = (carry, open_group(n))
    full = size // big if big else 0
    if big:
      state = jax.lax.fori_loop(0, full, lambda i, s: piece(*s, start + i * big, big, None), state)
    row, end = start + full * big, start + size
    state = jax.lax.fori_loop(0, (end - row + b - 1) // b, lambda i, s: piece(*s, row + i * b, b, end), state)
    return close_group(state[0], state[1], n)

  return jax.lax.fori_loop(0, group_sizes_N.shape[0], group, carry)


def _swiglu_pieces(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, b: int, save: bool):
  """The forward loop: (y [A, E], and when ``save`` the [A + b, F] gate and up activations, else None)."""
  a, e = x_AxE.shape
  f = gate_NxExF.shape[-1]
  g_dt, u_dt = jnp.result_type(x_AxE, gate_NxExF), jnp.result_type(x_AxE, up_NxExF)
  y_dt = jnp.result_type(g_dt, u_dt, down_NxFxE)
  x_PxE = jnp.pad(x_AxE, ((0, b), (0, 0)))  # Room for the last piece to run past the end.

  def open_group(n):
    return tuple(jax.lax.dynamic_index_in_dim(w, n, keepdims=False) for w in (gate_NxExF, up_NxExF, down_NxFxE))

  def piece(carry, weights, row, rows, end):
    del end  # Rows past the group's end are rewritten by their own group later.
    w_gate, w_up, w_down = weights
    x_rxE = jax.lax.dynamic_slice_in_dim(x_PxE, row, rows)
    g_rxF, u_rxF = x_rxE @ w_gate, x_rxE @ w_up
    out = (jax.nn.silu(g_rxF) * u_rxF) @ w_down, g_rxF, u_rxF
    return tuple(jax.lax.dynamic_update_slice_in_dim(c, o, row, 0) for c, o in zip(carry, out)), weights

  init = (jnp.zeros((a + b, e), y_dt),) + ((jnp.zeros((a + b, f), g_dt), jnp.zeros((a + b, f), u_dt)) if save else ())
  out = _over_pieces(group_sizes_N, a, b, open_group, piece, lambda carry, local, n: carry, init)
  return out[0][:a], out[1:] if save else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _grouped_swiglu(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, b: int):
  return _swiglu_pieces(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, b, save=False)[0]


def _grouped_swiglu_fwd(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, b: int):
  y_AxE, (g_PxF, u_PxF) = _swiglu_pieces(x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, b, save=True)
  return y_AxE, (x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, g_PxF, u_PxF)


def _grouped_swiglu_bwd(b: int, res, dy_AxE):
  x_AxE, group_sizes_N, gate_NxExF, up_NxExF, down_NxFxE, g_PxF, u_PxF = res
  a = x_AxE.shape[0]
  x_PxE = jnp.pad(x_AxE, ((0, b), (0, 0)))
  dy_PxE = jnp.pad(dy_AxE, ((0, b), (0, 0)))
  weights = (gate_NxExF, up_NxExF, down_NxFxE)
  f32 = jnp.float32

  def open_group(n):
    w = tuple(jax.lax.dynamic_index_in_dim(w, n, keepdims=False) for w in weights)
    return w + tuple(jnp.zeros(v.shape, f32) for v in w)

  def piece(carry, local, row, rows, end):
    dx_PxE, grads = carry
    w_gate, w_up, w_down, d_gate, d_up, d_down = local
    dy_rxE = jax.lax.dynamic_slice_in_dim(dy_PxE, row, rows)
    if end is not None:  # Rows past the group's end belong to the next group: zero cotangents add nothing.
      dy_rxE = jnp.where((row + jnp.arange(rows))[:, None] < end, dy_rxE, 0)
    x_rxE = jax.lax.dynamic_slice_in_dim(x_PxE, row, rows)
    h_rxF, h_vjp = jax.vjp(lambda g, u: jax.nn.silu(g) * u, jax.lax.dynamic_slice_in_dim(g_PxF, row, rows),
                           jax.lax.dynamic_slice_in_dim(u_PxF, row, rows))
    d_down = d_down + jnp.matmul(h_rxF.T, dy_rxE, preferred_element_type=f32)
    dg_rxF, du_rxF = h_vjp(dy_rxE @ w_down.T)
    d_gate = d_gate + jnp.matmul(x_rxE.T, dg_rxF, preferred_element_type=f32)
    d_up = d_up + jnp.matmul(x_rxE.T, du_rxF, preferred_element_type=f32)
    dx_rxE = (dg_rxF @ w_gate.T + du_rxF @ w_up.T).astype(dx_PxE.dtype)
    # Row order again: zero rows written past the group's end are rewritten by their own group later.
    dx_PxE = jax.lax.dynamic_update_slice_in_dim(dx_PxE, dx_rxE, row, 0)
    return (dx_PxE, grads), (w_gate, w_up, w_down, d_gate, d_up, d_down)

  def close_group(carry, local, n):
    dx_PxE, grads = carry
    return dx_PxE, tuple(jax.lax.dynamic_update_index_in_dim(g, d, n, 0) for g, d in zip(grads, local[3:]))

  init = (jnp.zeros_like(x_PxE), tuple(jnp.zeros(w.shape, f32) for w in weights))
  dx_PxE, grads = _over_pieces(group_sizes_N, a, b, open_group, piece, close_group, init)
  return (dx_PxE[:a], None) + tuple(g.astype(w.dtype) for g, w in zip(grads, weights))


_grouped_swiglu.defvjp(_grouped_swiglu_fwd, _grouped_swiglu_bwd)


def _check_expert_axis(num_experts: int) -> None:
  """Under an active mesh, the expert mesh axis must divide the number of experts."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or "expert" not in mesh.axis_names:
    return
  size = dict(zip(mesh.axis_names, mesh.axis_sizes))["expert"]
  if num_experts % size:
    raise ValueError(f"config.mesh.expert={size} does not divide config.model.num_experts={num_experts}; "
                     "pick an expert axis size that divides it")
