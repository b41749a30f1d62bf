"""Hugging Face safetensors ↔ our parameter tree (layers stacked on a leading axis).

Every tensor maps one to one; only layouts change (see docs/interop.md):

  HF (torch Linear, [out, in])                ours
  model.embed_tokens.weight      [V, E]       embedding              [V, E]
  model.layers.i.self_attn.q_proj.weight [H·D, E]  blocks/attn/q_proj [i, E, H, D]  (transpose, split heads)
  ... k_proj / v_proj            [K·D, E]     blocks/attn/{k,v}_proj [i, E, K, D]
  ... o_proj                     [E, H·D]     blocks/attn/o_proj     [i, H, D, E]
  ... {q,k,v}_proj.bias          [H·D]        blocks/attn/{q,k,v}_bias [i, H, D]
  ... mlp.{gate,up}_proj.weight  [F, E]       blocks/mlp/{gate,up}_proj [i, E, F]
  ... mlp.down_proj.weight       [E, F]       blocks/mlp/down_proj   [i, F, E]
  ... input_layernorm / post_attention_layernorm  blocks/{attn,mlp}_norm/scale [i, E]
  model.norm.weight              [E]          final_norm/scale       [E]
  lm_head.weight                 [V, E]       lm_head                [E, V]  (untied only)

Mixtral (every layer MoE) has, in place of mlp.*, the original per-expert
layout that transformers writes by default and every version reads:

  ... block_sparse_moe.gate.weight        [N, E]  blocks/moe/router         [i, E, N]     (transpose)
  ... block_sparse_moe.experts.j.w1.weight [F, E] blocks/moe/gate_proj      [i, j, E, F]  (transpose)
  ... block_sparse_moe.experts.j.w3.weight [F, E] blocks/moe/up_proj        [i, j, E, F]  (transpose)
  ... block_sparse_moe.experts.j.w2.weight [E, F] blocks/moe/down_proj      [i, j, F, E]  (transpose)

The import also reads transformers 5's fused layout (``save_original_format=False``):
``mlp.gate.weight`` [N, E], ``mlp.experts.gate_up_proj`` [N, 2F, E] (gate rows
first) and ``mlp.experts.down_proj`` [N, E, F], as views onto the names above.

Both sides use the half-split RoPE layout, so q/k need no row permutation.
Files are read with ``safetensors`` in NumPy mode: no torch, never pickle.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from polyglot_jax.interop.hf_config import ConvertError, moe_fields, resolved_model

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
PROGRESS_SECONDS = 10.0  # Within a shard, a progress line at most this often.
# Tensors some exporters add that carry nothing (recomputed from rope_theta).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# Per layer: our path under blocks/ → (HF name under model.layers.<i>., layout kind).
LAYER_TENSORS = {
    ("attn", "q_proj"): ("self_attn.q_proj.weight", "in_heads"),
    ("attn", "k_proj"): ("self_attn.k_proj.weight", "in_heads"),
    ("attn", "v_proj"): ("self_attn.v_proj.weight", "in_heads"),
    ("attn", "o_proj"): ("self_attn.o_proj.weight", "out_heads"),
    ("attn", "q_bias"): ("self_attn.q_proj.bias", "bias"),
    ("attn", "k_bias"): ("self_attn.k_proj.bias", "bias"),
    ("attn", "v_bias"): ("self_attn.v_proj.bias", "bias"),
    ("attn_norm", "scale"): ("input_layernorm.weight", "same"),
    ("mlp", "gate_proj"): ("mlp.gate_proj.weight", "linear"),
    ("mlp", "up_proj"): ("mlp.up_proj.weight", "linear"),
    ("mlp", "down_proj"): ("mlp.down_proj.weight", "linear"),
    ("mlp_norm", "scale"): ("post_attention_layernorm.weight", "same"),
}
# Per MoE layer (Mixtral): our path under blocks/ → (HF name under model.layers.<i>., layout kind); {j} is the expert.
MOE_TENSORS = {
    ("moe", "router"): ("block_sparse_moe.gate.weight", "linear"),
    ("moe", "gate_proj"): ("block_sparse_moe.experts.{j}.w1.weight", "linear"),
    ("moe", "up_proj"): ("block_sparse_moe.experts.{j}.w3.weight", "linear"),
    ("moe", "down_proj"): ("block_sparse_moe.experts.{j}.w2.weight", "linear"),
}
# transformers 5's fused Mixtral tensors (under model.layers.<i>.), read as views onto MOE_TENSORS' names.
FUSED_ROUTER = "mlp.gate.weight"
FUSED_GATE_UP = "mlp.experts.gate_up_proj"
FUSED_DOWN = "mlp.experts.down_proj"
TOP_TENSORS = {
    ("embedding",): ("model.embed_tokens.weight", "same"),
    ("final_norm", "scale"): ("model.norm.weight", "same"),
    ("lm_head",): ("lm_head.weight", "linear"),
}


def layer_shapes(model: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our per-layer parameter shapes (without the layer axis) for config.model.

  With num_experts > 0 every layer's FFN is the MoE layer (Mixtral: no shared experts);
  a model with only some MoE layers is refused before this is asked (hf_config.check_exportable).
  """
  m = resolved_model(model)
  e, h, k, d, f = m["d_model"], m["num_heads"], m["num_kv_heads"], m["head_dim"], m["mlp_dim"]
  shapes = {("attn", "q_proj"): (e, h, d), ("attn", "k_proj"): (e, k, d), ("attn", "v_proj"): (e, k, d),
            ("attn", "o_proj"): (h, d, e), ("attn_norm", "scale"): (e,), ("mlp", "gate_proj"): (e, f),
            ("mlp", "up_proj"): (e, f), ("mlp", "down_proj"): (f, e), ("mlp_norm", "scale"): (e,)}
  n = moe_fields(model)["num_experts"]
  if n:
    for name in ("gate_proj", "up_proj", "down_proj"):
      del shapes[("mlp", name)]
    shapes.update({("moe", "router"): (e, n), ("moe", "gate_proj"): (n, e, f), ("moe", "up_proj"): (n, e, f),
                   ("moe", "down_proj"): (n, f, e)})
  if m["qkv_bias"]:
    shapes.update({("attn", "q_bias"): (h, d), ("attn", "k_bias"): (k, d), ("attn", "v_bias"): (k, d)})
  return shapes


def top_shapes(model: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[int, ...]]:
  m = resolved_model(model)
  shapes = {("embedding",): (m["vocab_size"], m["d_model"]), ("final_norm", "scale"): (m["d_model"],)}
  if not m["tie_embeddings"]:
    shapes[("lm_head",)] = (m["d_model"], m["vocab_size"])
  return shapes


def hf_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape of one of our (per-layer) parameters of layout ``kind``."""
  if kind == "same":
    return ours
  if kind == "linear":
    return ours[::-1]
  if kind == "in_heads":  # [E, H, D] ← [H·D, E]
    return (math.prod(ours[1:]), ours[0])
  if kind == "out_heads":  # [H, D, E] ← [E, H·D]
    return (ours[-1], math.prod(ours[:-1]))
  if kind == "bias":  # [H, D] ← [H·D]
    return (math.prod(ours),)
  raise ValueError(kind)


def to_ours(kind: str, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
  if kind in ("linear", "in_heads", "out_heads"):
    x = x.T
  return x.reshape(ours)


def to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  """Our per-layer parameter → its HF tensor (C-contiguous, ready to write)."""
  if kind == "in_heads":
    x = x.reshape(x.shape[0], -1).T
  elif kind == "out_heads":
    x = x.reshape(-1, x.shape[-1]).T
  elif kind == "linear":
    x = x.T
  elif kind == "bias":
    x = x.reshape(-1)
  return np.ascontiguousarray(x)


Index = tuple[int, ...] | None


def tensor_plan(model: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], Index, str, tuple[int, ...]]]:
  """HF name → (our path, index into our array, layout kind, shape of that slice of ours), in file order.

  The index is None for a top-level tensor, (layer,) for a layer's tensor and
  (layer, expert) for one expert's weight of an MoE layer.
  """
  num_layers = resolved_model(model)["num_layers"]
  tops, layers = top_shapes(model), layer_shapes(model)
  plan = {}
  embed = ("embedding",)
  plan[TOP_TENSORS[embed][0]] = (embed, None, TOP_TENSORS[embed][1], tops[embed])
  for i in range(num_layers):
    for path, shape in layers.items():
      if path in MOE_TENSORS:
        name, kind = MOE_TENSORS[path]
        if "{j}" in name:
          for j in range(shape[0]):
            plan[f"model.layers.{i}.{name.format(j=j)}"] = (("blocks",) + path, (i, j), kind, shape[1:])
          continue
      else:
        name, kind = LAYER_TENSORS[path]
      plan[f"model.layers.{i}.{name}"] = (("blocks",) + path, (i,), kind, shape)
  for path in (("final_norm", "scale"), ("lm_head",)):
    if path in tops:
      name, kind = TOP_TENSORS[path]
      plan[name] = (path, None, kind, tops[path])
  return plan


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def safetensors_files(hf_dir: str) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
  """File name → {tensor name: (safetensors dtype, shape)}, read from each file's header.

  Refuses pickle-only checkpoints and names shard files that the index lists but are absent.
  """
  from safetensors import safe_open
  index_path = os.path.join(hf_dir, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map", {})
    files = sorted(set(weight_map.values()))
    missing = [name for name in files if not os.path.isfile(os.path.join(hf_dir, name))]
    if missing:
      raise ConvertError(f"{index_path} lists {len(files)} shard files but {len(missing)} are missing from "
                         f"{hf_dir}: {', '.join(missing[:5])}; download them too")
  elif os.path.isfile(os.path.join(hf_dir, SINGLE_FILE)):
    files = [SINGLE_FILE]
  else:  # consolidated*.safetensors are Mistral's own format, shipped beside the HF one.
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.safetensors"))
                   if not os.path.basename(p).startswith("consolidated"))
  if not files:
    pickles = sorted(os.path.basename(p) for pattern in PICKLE_PATTERNS for p in glob.glob(os.path.join(hf_dir, pattern)))
    if pickles:
      raise ConvertError(
          f"{hf_dir} holds only pickle checkpoints ({', '.join(pickles[:3])}), which we never load (pickle runs "
          "code); convert them to safetensors first with transformers: "
          "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)")
    raise ConvertError(f"{hf_dir} has no *.safetensors files (nor {INDEX_FILE})")
  out = {}
  for name in files:
    with safe_open(os.path.join(hf_dir, name), framework="np") as f:
      out[name] = {key: (f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape())) for key in f.keys()}
  return out


def _fused_views(hf_dir: str, files: Mapping[str, Mapping[str, tuple]], model: Mapping[str, Any]):
  """Headers with transformers 5's fused Mixtral tensors replaced by views named as MOE_TENSORS names them.

  Args:
    hf_dir: the directory (for messages).
    files: safetensors_files' output.
    model: the checkpoint's config.model fields.

  Returns:
    (headers in the form of ``files``, view name → (tensor name in the file, index into it)).
  """
  n = moe_fields(model)["num_experts"]
  if not n:
    return files, {}
  m = resolved_model(model)
  e, f = m["d_model"], m["mlp_dim"]
  pattern = re.compile(r"^(model\.layers\.\d+)\.(" + "|".join(
      re.escape(x) for x in (FUSED_ROUTER, FUSED_GATE_UP, FUSED_DOWN)) + r")$")
  want = {FUSED_ROUTER: (n, e), FUSED_GATE_UP: (n, 2 * f, e), FUSED_DOWN: (n, e, f)}
  present = {name for tensors in files.values() for name in tensors}
  headers, views = {}, {}
  for file_name, tensors in files.items():
    headers[file_name] = {}
    for name, (dtype, shape) in tensors.items():
      match = pattern.match(name)
      if not match:
        headers[file_name][name] = (dtype, shape)
        continue
      layer, fused = match.groups()
      if shape != want[fused]:
        raise ConvertError(f"{file_name}: tensor {name} has shape {list(shape)}, want {list(want[fused])} "
                           "(from config.json)")
      if fused == FUSED_ROUTER:
        parts = {f"{layer}.{MOE_TENSORS['moe', 'router'][0]}": ((), (n, e))}
      else:
        parts = {}
        for j in range(n):
          expert = f"{layer}.block_sparse_moe.experts.{j}"
          if fused == FUSED_GATE_UP:  # Gate rows first, then up (transformers chunks it in two).
            parts[f"{expert}.w1.weight"] = ((j, slice(0, f)), (f, e))
            parts[f"{expert}.w3.weight"] = ((j, slice(f, 2 * f)), (f, e))
          else:
            parts[f"{expert}.w2.weight"] = ((j,), (e, f))
      for view, (index, view_shape) in parts.items():
        if view in present:
          raise ConvertError(f"{hf_dir}: holds both {view} and the fused {name}; keep one layout")
        headers[file_name][view] = (dtype, view_shape)
        views[view] = (name, index)
  return headers, views


def _check_tensors(hf_dir: str, files: Mapping[str, Mapping[str, tuple]], plan: Mapping[str, Any], tied: bool) -> None:
  """Names, dtypes and shapes from the file headers, all checked before any data is read."""
  present = {name for tensors in files.values() for name in tensors}
  missing = [name for name in plan if name not in present]
  if missing:
    raise ConvertError(f"{hf_dir}: tensor {missing[0]} is missing ({len(missing)} missing in all) although "
                       "config.json implies it; is the checkpoint complete?")
  unexpected = sorted(name for name in present - set(plan)
                      if not name.endswith(IGNORED_SUFFIXES) and not (tied and name == "lm_head.weight"))
  if unexpected:
    name = unexpected[0]
    why = ""
    if name.endswith(".bias"):
      why = " (a bias our decoder does not have: attention or MLP biases beyond Qwen2's q/k/v are not supported)"
    raise ConvertError(f"{hf_dir}: tensor {name} has no place in our model{why}; "
                       f"{len(unexpected)} unexpected in all")
  for file_name, tensors in files.items():
    for name, (dtype, shape) in tensors.items():
      if name not in plan:
        continue
      if dtype not in FLOAT_DTYPES:
        raise ConvertError(f"{file_name}: tensor {name} has dtype {dtype}; only float tensors convert "
                           f"({', '.join(FLOAT_DTYPES)}), quantized checkpoints are not supported")
      _, _, kind, ours = plan[name]
      want = hf_shape(kind, ours)
      if shape != want:
        raise ConvertError(f"{file_name}: tensor {name} has shape {list(shape)}, want {list(want)} "
                           "(from config.json)")


def read_params(hf_dir: str, model: Mapping[str, Any], dtype, progress: Callable[[str], None] = print) -> dict:
  """Reads a HF checkpoint directory into our stacked parameter tree.

  Args:
    hf_dir: directory with *.safetensors (and model.safetensors.index.json when sharded).
    model: config.model fields the checkpoint must have (from its config.json).
    dtype: NumPy dtype of the returned arrays (float32 or ml_dtypes.bfloat16).
    progress: called with one line per shard read.

  Returns:
    Nested dict of NumPy arrays with the structure of ``nnx.to_pure_dict`` of a
    scan_layers=True Decoder.
  """
  from safetensors import safe_open
  files, views = _fused_views(hf_dir, safetensors_files(hf_dir), model)
  plan = tensor_plan(model)
  tied = resolved_model(model)["tie_embeddings"]
  _check_tensors(hf_dir, files, plan, tied)
  num_layers = resolved_model(model)["num_layers"]
  params: dict = {}
  for path, shape in top_shapes(model).items():
    _set(params, path, np.empty(shape, dtype))
  for path, shape in layer_shapes(model).items():
    _set(params, ("blocks",) + path, np.empty((num_layers,) + shape, dtype))
  done_bytes = 0
  last = time.monotonic()
  for n, (file_name, names) in enumerate(files.items(), 1):
    wanted = [name for name in names if name in plan]
    with safe_open(os.path.join(hf_dir, file_name), framework="np") as f:
      for k, name in enumerate(wanted, 1):
        path, index, kind, shape = plan[name]
        if name in views:  # A slice of a fused tensor: read only that part.
          real, part = views[name]
          stored = f.get_slice(real)[part] if part else f.get_tensor(real)
        else:
          stored = f.get_tensor(name)
        x = _finite(_cast(to_ours(kind, stored, shape), dtype), f"{file_name}: tensor {name}")
        target = _get(params, path)
        if index is None:
          target[...] = x
        else:
          target[index] = x
        done_bytes += x.nbytes
        logging.debug("read %s %s", name, x.shape)
        if time.monotonic() - last > PROGRESS_SECONDS:  # A large shard: say it is still going.
          progress(f"  {file_name}: {k}/{len(wanted)} tensors")
          last = time.monotonic()
    progress(f"read shard {n}/{len(files)} {file_name}: {len(wanted)} tensors ({done_bytes / 2**30:.2f} GiB so far)")
    last = time.monotonic()
  return params


def _cast(x: np.ndarray, dtype) -> np.ndarray:
  with np.errstate(over="ignore", invalid="ignore"):  # Overflow is reported by _finite, by tensor name.
    return x.astype(dtype)


def _finite(x: np.ndarray, what: str) -> np.ndarray:
  # A float16 cast overflows past 65504; a broken checkpoint carries NaNs. Either way, say which tensor.
  if not np.isfinite(x).all():
    raise ConvertError(f"{what} has non-finite values in {x.dtype} (overflow in a narrower --dtype, or a "
                       "broken checkpoint)")
  return x


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def hf_tensors(params: dict, model: Mapping[str, Any], dtype) -> Iterator[tuple[str, Callable[[], np.ndarray], int]]:
  """(HF name, thunk giving the tensor, its size in bytes) for our stacked params, in file order."""
  itemsize = np.dtype(dtype).itemsize
  plan = tensor_plan(model)
  _check_tree(params, plan)
  for name, (path, index, kind, shape) in plan.items():
    leaf = _get(params, path)
    got = tuple(leaf.shape[len(index):] if index is not None else leaf.shape)
    if got != tuple(shape):
      per = {None: "", 1: " per layer", 2: " per layer and expert"}[None if index is None else len(index)]
      raise ConvertError(f"parameter {'/'.join(path)} has shape {list(leaf.shape)}, config.model implies "
                         f"{list(shape)}{per}")

    def thunk(leaf=leaf, index=index, kind=kind, name=name):
      x = np.asarray(leaf[index] if index is not None else leaf)
      return _finite(to_hf(kind, _cast(x, dtype)), f"tensor {name}")
    yield name, thunk, math.prod(shape) * itemsize


def _check_tree(params: dict, plan: Mapping[str, Any]) -> None:
  """Every parameter has a place in the HF layout and vice versa (a stacked tree, as workdir.read_params gives)."""
  if not isinstance(params.get("blocks"), Mapping) or not params["blocks"] or \
      all(str(key).isdigit() for key in params["blocks"]):
    raise ConvertError("the parameters are not stacked over layers (layers of different structure?); "
                       "only models whose layers are all alike export")
  ours: set[tuple[str, ...]] = set()

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, prefix + (str(key),))
      else:
        ours.add(prefix + (str(key),))
  walk(params, ())
  wanted = {path for path, _, _, _ in plan.values()}
  for path in sorted(ours ^ wanted):
    where = "has no place in the Hugging Face layout" if path in ours else "is missing from the parameters"
    raise ConvertError(f"parameter {'/'.join(path)} {where}, although config.model implies the layout; "
                       "the checkpoint does not match its config")


def write_params(params: dict, model: Mapping[str, Any], out_dir: str, dtype, max_shard_bytes: int,
                 progress: Callable[[str], None] = print) -> list[str]:
  """Writes our stacked params as HF safetensors, sharded with an index past ``max_shard_bytes``.

  Args:
    params: our nested dict (stacked layers) of arrays.
    model: config.model.
    out_dir: existing directory.
    dtype: NumPy dtype of the written tensors.
    max_shard_bytes: shard size limit (a single tensor larger than it gets a shard of its own).
    progress: called with one line per shard written.

  Returns:
    The written file names.
  """
  from safetensors.numpy import save_file
  tensors = list(hf_tensors(params, model, dtype))
  shards: list[list] = [[]]
  size = 0
  for item in tensors:
    if shards[-1] and size + item[2] > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(item)
    size += item[2]
  n = len(shards)
  names = [SINGLE_FILE] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
  weight_map = {}
  for i, (file_name, shard) in enumerate(zip(names, shards), 1):
    data = {name: thunk() for name, thunk, _ in shard}
    # format=pt: transformers refuses safetensors without it.
    save_file(data, os.path.join(out_dir, file_name), metadata={"format": "pt"})
    weight_map.update({name: file_name for name in data})
    progress(f"wrote shard {i}/{n} {file_name}: {len(data)} tensors, "
             f"{sum(x.nbytes for x in data.values()) / 2**30:.2f} GiB")
  if n > 1:
    total = sum(item[2] for item in tensors)
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
  return names + ([INDEX_FILE] if n > 1 else [])
