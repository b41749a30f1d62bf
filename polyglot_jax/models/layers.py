"""Shared building blocks: annotated parameters, RMSNorm, rotary embeddings."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
  if name not in DTYPES:
    raise ValueError(f"unknown dtype '{name}'; use one of {sorted(DTYPES)}")
  return DTYPES[name]


def param(rngs: nnx.Rngs, shape: Sequence[int], names: Sequence[str], dtype, std: float | None) -> nnx.Param:
  """A parameter with logical axis names; std=None means ones (norm scales)."""
  if std is None:
    value = jnp.ones(shape, dtype)
  elif std == 0.0:
    value = jnp.zeros(shape, dtype)
  else:
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, out_sharding=tuple(names))


class RMSNorm(nnx.Module):
  """x / rms(x) * scale, normalised in float32 (Llama's convention)."""

  def __init__(self, dim: int, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    self.scale = param(rngs, (dim,), ("embed",), param_dtype, None)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)


def rope_tables(positions_BxL: jax.Array, head_dim: int, theta: float):
  """cos/sin tables [B, L, head_dim/2] for the half-split (rotate_half) layout."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BxLxHxD: jax.Array, cos_BxLxD2, sin_BxLxD2) -> jax.Array:
  """Rotates the two halves of each head (the Hugging Face Llama/Qwen2 layout)."""
  x = x_BxLxHxD.astype(jnp.float32)
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  cos = cos_BxLxD2[:, :, None, :]
  sin = sin_BxLxD2[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxD.dtype)
