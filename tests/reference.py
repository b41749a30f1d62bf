"""Independent NumPy (float64) implementations the tests compare against."""

import numpy as np


def rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def rope(x_BxLxHxD, positions_BxL, theta):
  d = x_BxLxHxD.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
  ang = positions_BxL[..., None] * inv_freq  # [B, L, D/2]
  cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
  x1, x2 = x_BxLxHxD[..., :d // 2], x_BxLxHxD[..., d // 2:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def decoder_logits(params, cfg, tokens, segment_ids=None, positions=None):
  """Llama/Qwen2 forward written from the formulas, one layer at a time."""
  p = _to64(params)
  b, length = tokens.shape
  if segment_ids is None:
    segment_ids = np.ones_like(tokens)
  if positions is None:
    positions = np.broadcast_to(np.arange(length), tokens.shape)
  x = p["embedding"][tokens]
  h, kvh = cfg.num_heads, cfg.num_kv_heads
  allowed = (np.arange(length)[:, None] >= np.arange(length)[None, :])[None] & \
            (segment_ids[:, :, None] == segment_ids[:, None, :])
  for i in range(cfg.num_layers):
    layer = _layer(p["blocks"], i, cfg.scan_layers)
    a = layer["attn"]
    y = rms_norm(x, layer["attn_norm"]["scale"], cfg.norm_eps)
    q = np.einsum("ble,ehd->blhd", y, a["q_proj"])
    k = np.einsum("ble,ehd->blhd", y, a["k_proj"])
    v = np.einsum("ble,ehd->blhd", y, a["v_proj"])
    if cfg.qkv_bias:
      q, k, v = q + a["q_bias"], k + a["k_bias"], v + a["v_bias"]
    q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    out = np.zeros_like(q)
    for head in range(h):
      kv = head // (h // kvh)
      s = np.einsum("bld,bmd->blm", q[:, :, head], k[:, :, kv]) / np.sqrt(q.shape[-1])
      s = np.where(allowed, s, -np.inf)
      s = np.exp(s - s.max(-1, keepdims=True))
      s = s / s.sum(-1, keepdims=True)
      out[:, :, head] = np.einsum("blm,bmd->bld", s, v[:, :, kv])
    x = x + np.einsum("blhd,hde->ble", out, a["o_proj"])
    m = layer["mlp"]
    y = rms_norm(x, layer["mlp_norm"]["scale"], cfg.norm_eps)
    gate = y @ m["gate_proj"]
    x = x + (gate / (1 + np.exp(-gate)) * (y @ m["up_proj"])) @ m["down_proj"]
  x = rms_norm(x, p["final_norm"]["scale"], cfg.norm_eps)
  head_w = p["embedding"].T if cfg.tie_embeddings else p["lm_head"]
  return x @ head_w


def cross_entropy(logits, targets):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  log_z = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
  return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0], log_z


def attention_residual(x, layer, cfg, positions):
  """x plus one layer's causal self-attention (pre-norm, RoPE, grouped-query heads), float64 NumPy.

  Args:
    x: [B, L, E] residual stream.
    layer: one layer's parameters (``_layer``).
    cfg: the ModelConfig.
    positions: [B, L] positions for RoPE.

  Returns:
    [B, L, E]: x + o_proj(attention(rms_norm(x))).
  """
  length = x.shape[1]
  allowed = (np.arange(length)[:, None] >= np.arange(length)[None, :])[None]
  a = layer["attn"]
  y = rms_norm(x, layer["attn_norm"]["scale"], cfg.norm_eps)
  q = rope(np.einsum("ble,ehd->blhd", y, a["q_proj"]), positions, cfg.rope_theta)
  k = rope(np.einsum("ble,ehd->blhd", y, a["k_proj"]), positions, cfg.rope_theta)
  v = np.einsum("ble,ehd->blhd", y, a["v_proj"])
  out = np.zeros_like(q)
  for head in range(cfg.num_heads):
    kv = head // (cfg.num_heads // cfg.num_kv_heads)
    s = np.where(allowed, np.einsum("bld,bmd->blm", q[:, :, head], k[:, :, kv]) / np.sqrt(q.shape[-1]), -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    out[:, :, head] = np.einsum("blm,bmd->bld", s / s.sum(-1, keepdims=True), v[:, :, kv])
  return x + np.einsum("blhd,hde->ble", out, a["o_proj"])


def _layer(blocks, i, scanned):
  if scanned:
    return _map(lambda a: a[i], blocks)
  return blocks[i]


def _map(f, tree):
  if isinstance(tree, dict):
    return {k: _map(f, v) for k, v in tree.items()}
  return f(tree)


def _to64(tree):
  if isinstance(tree, dict):
    return {k: _to64(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_to64(v) for v in tree]
  return np.asarray(tree, np.float64)
