"""Hugging Face ``config.json`` ↔ our ``config.model``, for the architectures we can run exactly.

Llama, Qwen2 and Mistral share our decoder: RMSNorm, SwiGLU (SiLU gate),
grouped-query attention, RoPE in the half-split ("rotate_half") layout.
They differ only in biases (Qwen2 has them on q/k/v) and in the sliding
window (Mistral, optionally Qwen2). Anything that would make the imported
model compute something else (RoPE scaling, a bias on o_proj or the MLP, a
non-SiLU activation, Gemma's (1 + w) norms) is refused by name rather than
converted approximately.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from polyglot_jax.errors import ConvertError  # noqa: F401  (re-exported)

# Hugging Face class name → our short name (--architecture).
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "mistral"}
SHORT_NAMES = {short: cls for cls, short in ARCHITECTURES.items()}
# The config.model fields an imported checkpoint fixes; the rest (dtype, scan, remat...) are ours to choose.
MODEL_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                "rope_theta", "norm_eps", "tie_embeddings", "qkv_bias")
# Where each field comes from in config.json (for error messages).
HF_NAMES = {"vocab_size": "vocab_size", "d_model": "hidden_size", "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
            "mlp_dim": "intermediate_size", "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps",
            "tie_embeddings": "tie_word_embeddings", "qkv_bias": "attention bias (architecture)"}
# transformers' class defaults, for keys an older config.json leaves out.
TIE_DEFAULT = False
ROPE_THETA_DEFAULT = 10000.0




def read_json(path: str) -> dict:
  """Reads a JSON file; a missing or malformed one is a ConvertError naming it."""
  if not os.path.isfile(path):
    raise ConvertError(f"{path} is missing")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ConvertError(f"{path} is not valid JSON ({e})") from None


def architecture_of(hf: Mapping[str, Any], where: str) -> str:
  """Our short name for the checkpoint's architecture, or a ConvertError listing the supported ones."""
  archs = list(hf.get("architectures") or [])
  supported = ", ".join(sorted(ARCHITECTURES))
  if len(archs) != 1 or archs[0] not in ARCHITECTURES:
    got = archs or f"model_type={hf.get('model_type')!r}"
    raise ConvertError(f"{where}: architecture {got} is not supported; supported: {supported}")
  return ARCHITECTURES[archs[0]]


def _rope_theta(hf: Mapping[str, Any], where: str) -> float:
  # transformers 5 writes rope_parameters={rope_type, rope_theta}; 4.x wrote
  # rope_theta plus an optional rope_scaling={type|rope_type, factor...}.
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  for key, block in (("rope_parameters", params), ("rope_scaling", scaling)):
    if not isinstance(block, Mapping):
      raise ConvertError(f"{where}: {key}={block!r} is not a mapping; only default RoPE is supported")
    kind = block.get("rope_type", block.get("type", "default"))
    if kind != "default":
      raise ConvertError(f"{where}: {key}.rope_type='{kind}' (RoPE scaling) is not supported; "
                         "only default RoPE converts exactly")
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    raise ConvertError(f"{where}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")
  return float(params.get("rope_theta", hf.get("rope_theta", ROPE_THETA_DEFAULT)))


def sliding_window(hf: Mapping[str, Any]) -> int | None:
  """The attention window the HF model applies to some layer, or None when attention is full."""
  arch = ARCHITECTURES.get((hf.get("architectures") or [""])[0])
  window = hf.get("sliding_window")
  if not window:
    return None
  if arch == "mistral":
    return int(window)
  if arch == "qwen2":
    if not hf.get("use_sliding_window", False):
      return None
    layer_types = hf.get("layer_types")
    if layer_types is not None:
      return int(window) if "sliding_attention" in layer_types else None
    return int(window) if hf["num_hidden_layers"] > hf.get("max_window_layers", 28) else None
  return None


def model_fields(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
  """Our config.model fields for a Hugging Face config.json, refusing what we cannot run exactly.

  Args:
    hf: the parsed config.json.
    where: its path, for error messages.

  Returns:
    {field: value} for every name in MODEL_FIELDS.
  """
  arch = architecture_of(hf, where)
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ConvertError(f"{where}: hidden_act='{act}' is not supported; our MLP is SwiGLU (silu)")
  if hf.get("attention_bias"):
    raise ConvertError(f"{where}: attention_bias=true puts a bias on o_proj, which our attention lacks; "
                       "not supported")
  if hf.get("mlp_bias"):
    raise ConvertError(f"{where}: mlp_bias=true is not supported (our MLP has no biases)")
  missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size") if hf.get(k) is None]
  if missing:
    raise ConvertError(f"{where}: missing {missing}")
  heads = int(hf["num_attention_heads"])
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  out = {
      "vocab_size": int(hf["vocab_size"]),
      "d_model": int(hf["hidden_size"]),
      "num_layers": int(hf["num_hidden_layers"]),
      "num_heads": heads,
      "num_kv_heads": int(hf.get("num_key_value_heads") or heads),
      "head_dim": int(head_dim),
      "mlp_dim": int(hf["intermediate_size"]),
      "rope_theta": _rope_theta(hf, where),
      "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
      "tie_embeddings": bool(hf.get("tie_word_embeddings", TIE_DEFAULT)),
      "qkv_bias": arch == "qwen2",
  }
  if out["num_heads"] % out["num_kv_heads"]:
    raise ConvertError(f"{where}: num_attention_heads={heads} is not a multiple of "
                       f"num_key_value_heads={out['num_kv_heads']}")
  if out["head_dim"] % 2:
    raise ConvertError(f"{where}: head_dim={out['head_dim']} is odd; rotary embeddings need it even")
  return out


def resolved_model(model: Mapping[str, Any]) -> dict[str, Any]:
  """MODEL_FIELDS of a config.model with head_dim=0 resolved to d_model // num_heads."""
  out = {k: model[k] for k in MODEL_FIELDS}
  if out["head_dim"] <= 0:
    out["head_dim"] = out["d_model"] // out["num_heads"]
  return out


def check_same_model(model: Mapping[str, Any], fields: Mapping[str, Any], where: str, names=None) -> None:
  """Raises a ConvertError naming the first config.model field that differs from the checkpoint's.

  Args:
    model: config.model (a ConfigDict or mapping).
    fields: the checkpoint's MODEL_FIELDS.
    where: the checkpoint's config file, for the message.
    names: field → its name in ``where`` (HF_NAMES for a config.json of Hugging Face).
  """
  ours = resolved_model(model)
  for key in MODEL_FIELDS:
    a, b = ours[key], fields[key]
    same = math.isclose(a, b, rel_tol=1e-9) if isinstance(b, float) else a == b
    if not same:
      theirs = (names or {}).get(key, f"model.{key}")
      raise ConvertError(f"config.model.{key}={a!r} but {where} has {theirs}={b!r}; set "
                         f"--config.model.{key}={b} (the model must match the checkpoint)")


def hf_config(model: Mapping[str, Any], arch: str, dtype: str, base: Mapping[str, Any] | None = None,
              max_positions: int = 2048) -> dict[str, Any]:
  """A config.json for our model under Hugging Face architecture ``arch`` (llama | qwen2 | mistral).

  Args:
    model: config.model.
    arch: short architecture name.
    dtype: the dtype the safetensors are written in.
    base: the config.json the model was imported from, if any; its other keys (token ids,
      max_position_embeddings, sliding_window...) are kept when the architecture is the same.
    max_positions: max_position_embeddings when there is no base.

  Returns:
    The config.json contents.
  """
  m = resolved_model(model)
  if arch not in SHORT_NAMES:
    raise ConvertError(f"--architecture {arch} is not supported; use one of {sorted(SHORT_NAMES)}")
  if arch == "qwen2" and not m["qkv_bias"]:
    raise ConvertError("--architecture qwen2 needs q/k/v biases but config.model.qkv_bias=False; "
                       "use --architecture llama or mistral")
  if arch != "qwen2" and m["qkv_bias"]:
    raise ConvertError(f"--architecture {arch} has no q/k/v biases but config.model.qkv_bias=True; "
                       "use --architecture qwen2")
  cls = SHORT_NAMES[arch]
  same_arch = base is not None and (base.get("architectures") or [None])[0] == cls
  out: dict[str, Any] = dict(base) if same_arch else {}
  if base is not None and not same_arch:  # Keep what describes the tokenizer, not the network.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"):
      if key in base:
        out[key] = base[key]
  out.pop("rope_scaling", None)
  out.update({
      "architectures": [cls],
      "model_type": arch,
      "hidden_act": "silu",
      "vocab_size": m["vocab_size"],
      "hidden_size": m["d_model"],
      "num_hidden_layers": m["num_layers"],
      "num_attention_heads": m["num_heads"],
      "num_key_value_heads": m["num_kv_heads"],
      "head_dim": m["head_dim"],
      "intermediate_size": m["mlp_dim"],
      "rms_norm_eps": m["norm_eps"],
      # Both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta.
      "rope_theta": m["rope_theta"],
      "rope_parameters": {"rope_type": "default", "rope_theta": m["rope_theta"]},
      "tie_word_embeddings": m["tie_embeddings"],
      "dtype": dtype,
      "torch_dtype": dtype,
  })
  out.setdefault("max_position_embeddings", max_positions)
  if arch == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  elif arch == "qwen2":
    if not same_arch:
      out.update(use_sliding_window=False, sliding_window=None, max_window_layers=m["num_layers"])
    out.pop("layer_types", None)  # Rebuilt by transformers from the keys above.
  elif arch == "mistral":
    out.setdefault("sliding_window", None)
  return out
