"""The decoder's hyper-parameters as a frozen dataclass (built from config.model)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# How tokens reach their experts (models/moe.py): a grouped matmul over tokens
# sorted by expert (no token dropped), or fixed per-expert buffers (overflow dropped).
MOE_DISPATCH = ("dropless", "capacity")
# The grouped matmul of dropless dispatch (models/moe.py local_experts_swiglu): auto picks by platform
# (megablox on TPU, ragged_dot on GPU, blocked on CPU); the others name one.
MOE_GROUPED_MATMULS = ("auto", "megablox", "ragged_dot", "blocked")
# Attention backends (models/attention.py): auto picks by platform; the others name one kernel.
ATTENTION_IMPLS = ("auto", "xla", "dot_product_attention", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  qkv_bias: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: float = 0.02
  scan_layers: bool = True
  remat_policy: str = "dots"
  attention_block: int = 64
  attention_impl: str = "auto"
  # Chunked cross-entropy (models/chunked_ce.py): -1 auto above the threshold, 0 off, N > 0 tokens per chunk.
  ce_chunk_size: int = -1
  ce_chunk_threshold_bytes: int = 256 * 2**20
  # Mixture of experts (models/moe.py); num_experts = 0 keeps every layer dense.
  num_experts: int = 0
  moe_top_k: int = 2
  moe_layers: str = "all"
  moe_dispatch: str = "dropless"
  moe_grouped_matmul: str = "auto"
  moe_capacity_factor: float = 1.25
  moe_shared_experts: int = 0

  def __post_init__(self):
    if self.head_dim <= 0:
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"config.model.num_heads={self.num_heads} is not a multiple of "
          f"config.model.num_kv_heads={self.num_kv_heads}; grouped-query attention needs it")
    if self.head_dim % 2:
      raise ValueError(f"config.model.head_dim={self.head_dim} must be even for rotary embeddings")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"config.model.attention_impl='{self.attention_impl}' is unknown; "
                       f"use one of {list(ATTENTION_IMPLS)}")
    if self.ce_chunk_size < -1:
      raise ValueError(f"config.model.ce_chunk_size={self.ce_chunk_size}; use -1 (auto), 0 (off) or a token count")
    if self.num_experts:
      self._check_moe()

  def _check_moe(self):
    """One-line errors for MoE settings that cannot work."""
    if self.num_experts < 0:
      raise ValueError(f"config.model.num_experts={self.num_experts}; use 0 (dense) or a positive count")
    if not 1 <= self.moe_top_k <= self.num_experts:
      raise ValueError(f"config.model.moe_top_k={self.moe_top_k} must be in 1..config.model.num_experts={self.num_experts}")
    if self.moe_dispatch not in MOE_DISPATCH:
      raise ValueError(f"config.model.moe_dispatch='{self.moe_dispatch}' is unknown; use one of {list(MOE_DISPATCH)}")
    if self.moe_grouped_matmul not in MOE_GROUPED_MATMULS:
      raise ValueError(f"config.model.moe_grouped_matmul='{self.moe_grouped_matmul}' is unknown; "
                       f"use one of {list(MOE_GROUPED_MATMULS)}")
    if self.moe_dispatch == "capacity" and self.moe_capacity_factor <= 0:
      raise ValueError(f"config.model.moe_capacity_factor={self.moe_capacity_factor} must be positive")
    if self.moe_shared_experts < 0:
      raise ValueError(f"config.model.moe_shared_experts={self.moe_shared_experts} must be 0 or more")
    layers = self.moe_layer_ids()
    if self.scan_layers and len(layers) != self.num_layers:
      raise ValueError(
          f"config.model.moe_layers='{self.moe_layers}' makes only some layers MoE, but scanned layers must all "
          "be alike; set config.model.scan_layers=False or config.model.moe_layers='all'")

  def moe_layer_ids(self) -> tuple[int, ...]:
    """The indices of the MoE layers (empty for a dense model), parsed from ``moe_layers``.

    Returns:
      Sorted layer indices: "all"; "every:K" (layers i with i % K == K - 1); or a comma list "0,2,5".
    """
    if not self.num_experts:
      return ()
    spec = str(self.moe_layers).strip()
    n = self.num_layers
    hint = "use 'all', 'every:K' or a comma list of layer indices like '0,2,5'"
    if spec == "all":
      return tuple(range(n))
    if spec.startswith("every:"):
      try:
        k = int(spec[len("every:"):])
      except ValueError:
        raise ValueError(f"config.model.moe_layers='{spec}' is not a layer spec; {hint}") from None
      if not 1 <= k <= n:
        raise ValueError(f"config.model.moe_layers='{spec}': K must be in 1..num_layers={n}")
      return tuple(i for i in range(n) if i % k == k - 1)
    try:
      ids = sorted({int(part) for part in spec.split(",")})
    except ValueError:
      raise ValueError(f"config.model.moe_layers='{spec}' is not a layer spec; {hint}") from None
    if not ids or ids[0] < 0 or ids[-1] >= n:
      raise ValueError(f"config.model.moe_layers='{spec}' names a layer outside 0..{n - 1} (num_layers={n})")
    return tuple(ids)

  @classmethod
  def from_config(cls, model: Mapping[str, Any]) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(model).items() if k in fields})
