"""Hugging Face ``config.json`` ↔ our ``config.model``, for the architectures we can run exactly.

Llama, Qwen2 and Mistral share our decoder: RMSNorm, SwiGLU (SiLU gate),
grouped-query attention, RoPE in the half-split ("rotate_half") layout.
They differ only in biases (Qwen2 has them on q/k/v) and in the sliding
window (Mistral, optionally Qwen2). Mixtral is Mistral with every FFN an
MoE layer: a bias-free softmax top-k router (weights renormalised over the
chosen k) over SwiGLU experts, which is our MoE layer with
``moe_layers="all"`` and no shared experts. Anything that would make the
imported model compute something else (RoPE scaling, a bias on o_proj or the
MLP, a non-SiLU activation, Gemma's (1 + w) norms) is refused by name rather
than converted approximately.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from polyglot_jax.errors import ConvertError  # noqa: F401  (re-exported)

# Hugging Face class name → our short name (--architecture).
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "mistral",
                 "MixtralForCausalLM": "mixtral"}
SHORT_NAMES = {short: cls for cls, short in ARCHITECTURES.items()}
MOE_ARCHITECTURES = ("mixtral",)  # Every layer's FFN is our MoE layer.
# The config.model fields an imported checkpoint fixes; the rest (dtype, scan, remat...) are ours to choose.
MODEL_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                "rope_theta", "norm_eps", "tie_embeddings", "qkv_bias")
# Where each field comes from in config.json (for error messages).
HF_NAMES = {"vocab_size": "vocab_size", "d_model": "hidden_size", "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
            "mlp_dim": "intermediate_size", "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps",
            "tie_embeddings": "tie_word_embeddings", "qkv_bias": "attention bias (architecture)",
            "num_experts": "num_local_experts", "moe_top_k": "num_experts_per_tok",
            "moe_layers": "moe_layers (Mixtral: every layer)",
            "moe_shared_experts": "moe_shared_experts (Mixtral: none)"}
# The config.model MoE fields a Mixtral checkpoint also fixes. A dense checkpoint's fields leave them out, so a
# run from a dense Hugging Face model keeps its own MoE settings.
MOE_FIELDS = ("num_experts", "moe_top_k", "moe_layers", "moe_shared_experts")
# transformers' class defaults, for keys an older config.json leaves out.
TIE_DEFAULT = False
ROPE_THETA_DEFAULT = 10000.0
MIXTRAL_AUX_LOSS_DEFAULT = 0.001  # MixtralConfig.router_aux_loss_coef.




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
  dense = sorted(cls for cls, short in ARCHITECTURES.items() if short not in MOE_ARCHITECTURES)
  moe = sorted(cls for cls, short in ARCHITECTURES.items() if short in MOE_ARCHITECTURES)
  supported = ", ".join(dense) + "; MoE: " + ", ".join(moe)
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
  if arch in ("mistral", "mixtral"):
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
    {field: value} for every name in MODEL_FIELDS, and for a Mixtral also every name in
    MOE_FIELDS (num_experts, moe_top_k, moe_layers="all", moe_shared_experts=0).
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
  if arch == "mixtral":
    out.update(_mixtral_fields(hf, where))
  return out


def _mixtral_fields(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
  """MOE_FIELDS of a Mixtral config.json: every layer is MoE, no shared experts."""
  # transformers' MixtralConfig defaults, for keys an older config.json leaves out.
  n = int(hf.get("num_local_experts", 8))
  k = int(hf.get("num_experts_per_tok", 2))
  if n < 1:
    raise ConvertError(f"{where}: num_local_experts={n}; an MoE model needs at least 1 expert")
  if not 1 <= k <= n:
    raise ConvertError(f"{where}: num_experts_per_tok={k} must be in 1..num_local_experts={n}")
  return {"num_experts": n, "moe_top_k": k, "moe_layers": "all", "moe_shared_experts": 0}


def moe_fields(model: Mapping[str, Any]) -> dict[str, Any]:
  """The MOE_FIELDS of a config.model or of model_fields' output (num_experts=0 when it has none).

  Args:
    model: config.model (a ConfigDict or mapping), or a dict from model_fields.

  Returns:
    {field: value} for every name in MOE_FIELDS; a dense model gives num_experts=0.
  """
  defaults = {"num_experts": 0, "moe_top_k": 2, "moe_layers": "all", "moe_shared_experts": 0}
  return {key: model[key] if key in model else value for key, value in defaults.items()}


def moe_layer_ids(model: Mapping[str, Any]) -> tuple[int, ...]:
  """The MoE layer indices of config.model (empty when dense), as ModelConfig parses moe_layers."""
  from polyglot_jax.models.config import ModelConfig
  fields = {**resolved_model(model), **moe_fields(model), "scan_layers": False}
  try:
    return ModelConfig(**fields).moe_layer_ids()
  except ValueError as e:
    raise ConvertError(str(e)) from None


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
    fields: the checkpoint's MODEL_FIELDS (and MOE_FIELDS, for a Mixtral: compared too).
    where: the checkpoint's config file, for the message.
    names: field → its name in ``where`` (HF_NAMES for a config.json of Hugging Face).
  """
  ours = {**resolved_model(model), **moe_fields(model)}
  # MoE fields are compared when the checkpoint states them (a Mixtral config.json does; a dense one does not).
  for key in MODEL_FIELDS + tuple(k for k in MOE_FIELDS if k in fields):
    a, b = ours[key], fields[key]
    same = math.isclose(a, b, rel_tol=1e-9) if isinstance(b, float) else a == b
    if not same:
      theirs = (names or {}).get(key, f"model.{key}")
      raise ConvertError(f"config.model.{key}={a!r} but {where} has {theirs}={b!r}; set "
                         f"--config.model.{key}={b} (the model must match the checkpoint)")


def check_exportable(model: Mapping[str, Any], arch: str) -> None:
  """Raises a one-line ConvertError when config.model cannot be written as architecture ``arch``.

  Args:
    model: config.model.
    arch: short architecture name (llama | qwen2 | mistral | mixtral).
  """
  m, moe = resolved_model(model), moe_fields(model)
  if arch not in SHORT_NAMES:
    raise ConvertError(f"--architecture {arch} is not supported; use one of {sorted(SHORT_NAMES)}")
  if arch == "mixtral":
    if not moe["num_experts"]:
      raise ConvertError("--architecture mixtral needs an MoE model but config.model.num_experts=0; "
                         "use --architecture llama or mistral")
    if moe["moe_shared_experts"]:
      raise ConvertError(f"config.model.moe_shared_experts={moe['moe_shared_experts']}: Mixtral has no shared "
                         "experts, so this model has no Hugging Face format we can write; keep it as a workdir "
                         "(polyglot_jax.load reads it) or train with --config.model.moe_shared_experts=0")
    ids = moe_layer_ids(model)
    if len(ids) != m["num_layers"]:
      raise ConvertError(f"config.model.moe_layers='{moe['moe_layers']}' makes only layers {list(ids)} of "
                         f"{m['num_layers']} MoE, but Mixtral has an MoE FFN in every layer; export needs "
                         "moe_layers='all' (upcycle with --layers all)")
    if m["qkv_bias"]:
      raise ConvertError("config.model.qkv_bias=True: Mixtral has no q/k/v biases, so this MoE model has no "
                         "Hugging Face format we can write; train it with --config.model.qkv_bias=False")
    return
  if moe["num_experts"]:
    raise ConvertError(f"config.model.num_experts={moe['num_experts']}: an MoE model exports only as "
                       f"--architecture mixtral, not {arch}")
  if arch == "qwen2" and not m["qkv_bias"]:
    raise ConvertError("--architecture qwen2 needs q/k/v biases but config.model.qkv_bias=False; "
                       "use --architecture llama or mistral")
  if arch != "qwen2" and m["qkv_bias"]:
    raise ConvertError(f"--architecture {arch} has no q/k/v biases but config.model.qkv_bias=True; "
                       "use --architecture qwen2")


def hf_config(model: Mapping[str, Any], arch: str, dtype: str, base: Mapping[str, Any] | None = None,
              max_positions: int = 2048, balance_weight: float | None = None) -> dict[str, Any]:
  """A config.json for our model under Hugging Face architecture ``arch`` (llama | qwen2 | mistral | mixtral).

  Args:
    model: config.model.
    arch: short architecture name.
    dtype: the dtype the safetensors are written in.
    base: the config.json the model was imported from, if any; its other keys (token ids,
      max_position_embeddings, sliding_window...) are kept when the architecture is the same.
    max_positions: max_position_embeddings when there is no base.
    balance_weight: mixtral only: our optimizer.moe_balance_weight. Unless the base (same
      architecture) has one, router_aux_loss_coef is it divided by moe_top_k (transformers' balance
      loss counts the k slots, so it is k times ours), or transformers' default when None.

  Returns:
    The config.json contents.
  """
  check_exportable(model, arch)
  m = resolved_model(model)
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
  elif arch == "mixtral":
    moe = moe_fields(model)
    out.setdefault("sliding_window", None)
    out.update(num_local_experts=moe["num_experts"], num_experts_per_tok=moe["moe_top_k"])
    # Training-time settings of transformers only (our forward pass has no jitter): a base's are kept.
    out.setdefault("output_router_logits", False)
    out.setdefault("router_jitter_noise", 0.0)
    out.setdefault("router_aux_loss_coef", MIXTRAL_AUX_LOSS_DEFAULT if balance_weight is None
                   else balance_weight / moe["moe_top_k"])
  return out
