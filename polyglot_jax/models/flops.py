"""Model FLOPs per token (the numerator of MFU); formula in docs/performance.md."""

from __future__ import annotations

from polyglot_jax.models.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
  """Weights that take part in a matmul per token (embedding lookup excluded).

  For MoE layers these are the active weights: the router, ``moe_top_k``
  experts and the shared experts (not all ``num_experts``).

  Args:
    cfg: the model.

  Returns:
    The weight count.
  """
  d, h, k, hd, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  attention = d * h * hd + 2 * d * k * hd + h * hd * d
  mlp = 3 * d * f
  head = d * cfg.vocab_size
  moe_layers = len(cfg.moe_layer_ids())
  # An MoE layer: the router, the top-k experts a token is sent to and the shared experts.
  moe = d * cfg.num_experts + (cfg.moe_top_k + cfg.moe_shared_experts) * mlp
  return cfg.num_layers * attention + (cfg.num_layers - moe_layers) * mlp + moe_layers * moe + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """6·N_matmul + 12·layers·heads·head_dim·seq_len (PaLM appendix B convention).

  The attention term counts the full L×L score and value matmuls (no causal
  discount), forward and backward.
  """
  return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  return train_flops_per_token(cfg, seq_len) / 3.0
