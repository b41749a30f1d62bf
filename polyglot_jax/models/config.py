"""The decoder's hyper-parameters as a frozen dataclass (built from config.model)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


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
  remat_policy: str = "none"
  attention_block: int = 128

  def __post_init__(self):
    if self.head_dim <= 0:
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"config.model.num_heads={self.num_heads} is not a multiple of "
          f"config.model.num_kv_heads={self.num_kv_heads}; grouped-query attention needs it")
    if self.head_dim % 2:
      raise ValueError(f"config.model.head_dim={self.head_dim} must be even for rotary embeddings")

  @classmethod
  def from_config(cls, model: Mapping[str, Any]) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(model).items() if k in fields})
