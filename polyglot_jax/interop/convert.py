"""The two directions of ``polyglot-jax convert``: HF directory → our workdir, and back."""

from __future__ import annotations

import os
import shutil
from typing import Callable

import numpy as np

from polyglot_jax.interop import hf as hf_lib
from polyglot_jax.interop import tokenizer_files
from polyglot_jax.interop import workdir as workdir_lib
from polyglot_jax.interop.hf_config import (ARCHITECTURES, ConvertError, architecture_of, check_exportable, hf_config,
                                            model_fields, moe_fields, read_json, resolved_model, sliding_window)

DTYPES = ("float32", "bfloat16", "float16")
GENERATION_CONFIG = "generation_config.json"


def numpy_dtype(name: str) -> np.dtype:
  if name not in DTYPES:
    raise ConvertError(f"dtype '{name}' is not supported; use one of {', '.join(DTYPES)}")
  from polyglot_jax.models.layers import dtype_of
  return np.dtype(dtype_of(name))


def _fresh_dir(path: str, flag: str) -> None:
  if os.path.isdir(path) and os.listdir(path):
    raise ConvertError(f"{flag} {path} is not empty; give a new directory (nothing is overwritten)")


def import_hf(hf_dir: str, out: str, dtype: str = "float32", progress: Callable[[str], None] = print) -> dict:
  """Converts a Hugging Face checkpoint directory into a workdir of ours (layout in workdir.py).

  Args:
    hf_dir: config.json + *.safetensors (+ model.safetensors.index.json) + tokenizer files.
    out: the new workdir; must be absent or empty.
    dtype: storage dtype of the parameters (also written as config.model.param_dtype).
    progress: called with one line per shard and step.

  Returns:
    {"architecture", "model": config.model fields, "tokenizer": data.tokenizer or "",
     "sliding_window", "params": path of params/}.
  """
  from polyglot_jax import configs as config_lib
  np_dtype = numpy_dtype(dtype)
  if not os.path.isdir(hf_dir):
    raise ConvertError(f"--from_hf {hf_dir} is not a directory")
  hf_json = os.path.join(hf_dir, "config.json")
  hf = read_json(hf_json)
  arch = architecture_of(hf, hf_json)
  fields = model_fields(hf, hf_json)
  tokenizer_files.check_fits(hf_dir, fields["vocab_size"])
  _fresh_dir(out, "--workdir")
  progress(f"{hf_dir}: {arch}, {fields['num_layers']} layers, d_model {fields['d_model']}, "
           f"{fields['num_heads']}/{fields['num_kv_heads']} q/kv heads, vocab {fields['vocab_size']}"
           + (f", {fields['num_experts']} experts top-{fields['moe_top_k']}" if fields.get("num_experts") else ""))
  params = hf_lib.read_params(hf_dir, fields, np_dtype, progress)

  config = config_lib.default_config()
  config.lock()
  for key, value in fields.items():
    config_lib.set_key(config, f"model.{key}", value, from_string=False)
  config.model.param_dtype = dtype
  window = sliding_window(hf)
  if window is not None and config.data.seq_len > window:
    config.data.seq_len = window
  os.makedirs(out, exist_ok=True)
  copied = tokenizer_files.copy(hf_dir, os.path.join(out, workdir_lib.TOKENIZER_DIR))
  spm_path = os.path.abspath(os.path.join(out, workdir_lib.TOKENIZER_DIR, tokenizer_files.SENTENCEPIECE_FILE))
  if tokenizer_files.SENTENCEPIECE_FILE in copied:
    config.data.tokenizer = spm_path
  path = workdir_lib.write_params(out, params)
  progress(f"wrote {path}: {workdir_lib.describe(params)}")
  source = os.path.join(out, workdir_lib.SOURCE_DIR)
  os.makedirs(source, exist_ok=True)
  shutil.copyfile(hf_json, os.path.join(source, "config.json"))
  if os.path.isfile(os.path.join(hf_dir, GENERATION_CONFIG)):
    shutil.copyfile(os.path.join(hf_dir, GENERATION_CONFIG), os.path.join(source, GENERATION_CONFIG))
  with open(os.path.join(out, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  progress(f"copied tokenizer files {copied or 'none (no tokenizer files found)'}")
  return {"architecture": arch, "model": fields, "tokenizer": config.data.tokenizer,
          "sliding_window": window, "params": path}


def _tokenizer_plan(workdir: str, config, vocab_size: int) -> list[tuple[str, str]]:
  """(source path, name in the HF directory) of each tokenizer file to export, checked to fit the embedding.

  In order: the converted workdir's tokenizer/; the SentencePiece model the run
  trained with (config.data.tokenizer, or the demo corpus's model for
  data.source=demo; HF files beside a tokenizer.model come too); the
  tokenizer of the init_from source.
  """
  spm_model = config.data.tokenizer
  if not spm_model and config.data.source == "demo":
    from polyglot_jax.loading import find_tokenizer
    spm_model = find_tokenizer(workdir, config) or ""
  candidates = [workdir_lib.tokenizer_dir(workdir)]
  if spm_model and os.path.isfile(spm_model):
    if os.path.basename(spm_model) != tokenizer_files.SENTENCEPIECE_FILE:
      import sentencepiece as spm
      size = spm.SentencePieceProcessor(model_file=spm_model).vocab_size()
      if size > vocab_size:
        raise ConvertError(f"{spm_model} has {size} tokens but the embedding has {vocab_size} rows (vocab_size)")
      return [(spm_model, tokenizer_files.SENTENCEPIECE_FILE)]
    candidates.append(os.path.dirname(os.path.abspath(spm_model)))
  if config.init_from and os.path.isdir(config.init_from):
    candidates.append(workdir_lib.tokenizer_dir(config.init_from))
  for directory in candidates:
    if directory and tokenizer_files.present(directory):
      tokenizer_files.check_fits(directory, vocab_size)
      return [(os.path.join(directory, name), name) for name in tokenizer_files.present(directory)]
  return []


def default_architecture(model, base: dict | None) -> str:
  """--architecture when none is given: mixtral for an MoE model; else the imported one, else qwen2
  with q/k/v biases and llama without.

  Args:
    model: config.model.
    base: the HF config.json the model came from, if any.

  Returns:
    A short architecture name.
  """
  if moe_fields(model)["num_experts"]:
    return "mixtral"
  imported = ARCHITECTURES.get(((base or {}).get("architectures") or [None])[0])
  if imported and imported != "mixtral":
    return imported
  return "qwen2" if resolved_model(model)["qkv_bias"] else "llama"


def export_hf(workdir: str, out: str, step: int | None = None, architecture: str | None = None,
              dtype: str | None = None, max_shard_gb: float = 5.0,
              progress: Callable[[str], None] = print) -> dict:
  """Writes a workdir's parameters as a Hugging Face checkpoint directory.

  Args:
    workdir: a converted workdir (params/) or a training workdir (checkpoints/).
    out: the HF directory to write; must be absent or empty.
    step: checkpoint step (default: the newest checkpoint, else params/).
    architecture: llama | qwen2 | mistral | mixtral; default: mixtral for an MoE model, else
      the one it was imported from, else qwen2 with q/k/v biases and llama without.
    dtype: dtype of the written tensors; default: the stored parameters' dtype.
    max_shard_gb: safetensors shard size limit (GB); larger checkpoints get an index.
    progress: called with one line per shard and step.

  Returns:
    {"architecture", "files", "tokenizer": copied tokenizer files, "source": where the params came from}.
  """
  if not os.path.isdir(workdir):
    raise ConvertError(f"--workdir {workdir} is not a directory")
  config = workdir_lib.read_config(workdir)
  model = resolved_model(config.model)
  source, base = workdir_lib.origin_hf_config(workdir, config)
  if architecture is None:
    architecture = default_architecture(config.model, base)
  check_exportable(config.model, architecture)  # Before the parameters are read.
  params, where = workdir_lib.read_params(workdir, step)
  dtype = dtype or str(np.asarray(params["embedding"]).dtype)
  np_dtype = numpy_dtype(dtype)
  hf = hf_config(config.model, architecture, dtype, base, max(2048, config.data.seq_len),
                 balance_weight=config.optimizer.get("moe_balance_weight"))
  plan = _tokenizer_plan(workdir, config, model["vocab_size"])
  _fresh_dir(out, "--out")
  os.makedirs(out, exist_ok=True)
  progress(f"{where}: {workdir_lib.describe(params)} → {hf['architectures'][0]} in {out}")
  for src, name in plan:
    shutil.copyfile(src, os.path.join(out, name))
  copied = [name for _, name in plan]
  files = hf_lib.write_params(params, config.model, out, np_dtype, int(max_shard_gb * 1e9), progress)
  workdir_lib.json_dump(os.path.join(out, "config.json"), hf)
  if source and os.path.isfile(os.path.join(source, GENERATION_CONFIG)):
    shutil.copyfile(os.path.join(source, GENERATION_CONFIG), os.path.join(out, GENERATION_CONFIG))
  progress(f"copied tokenizer files {copied or 'none (set config.data.tokenizer to carry one)'}")
  return {"architecture": architecture, "files": files, "tokenizer": copied, "source": where}
