"""One way to load a model: ``polyglot_jax.load(path)``.

``path`` is any of
- a training workdir (``config.json`` + ``checkpoints/<step>/``): the newest
  step, or ``step``;
- a converted workdir (``polyglot-jax convert --from_hf``: ``config.json`` +
  ``params/``);
- a Hugging Face directory (``config.json`` + ``*.safetensors``).

Every command that reads a model goes through here: ``config.init_from``
(``read_params`` and ``model_settings``), and generate / score / eval /
analysis / upcycle.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
from typing import Any, Iterable

import numpy as np
from ml_collections import ConfigDict

from polyglot_jax.errors import ConfigError, ConvertError

# config.model fields a checkpoint fixes (the network); the others (dtype, scan, remat, attention
# block) are the run's own choice and may differ from the checkpoint's.
ARCHITECTURE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                       "rope_theta", "norm_eps", "tie_embeddings", "qkv_bias")
# config.model MoE fields a checkpoint fixes: the experts and their layers shape the parameters, top-k
# the function. A Mixtral directory states them; a dense Hugging Face one has none, so a run from it keeps its own.
# moe_dispatch, moe_grouped_matmul and moe_capacity_factor stay the run's choice, like dtype.
MOE_FIELDS = ("num_experts", "moe_top_k", "moe_layers", "moe_shared_experts")


@dataclasses.dataclass
class Loaded:
  """A loaded model.

  Attributes:
    model: the ``Decoder`` with the checkpoint's parameters; ``model(token_ids)``
      with int32 [B, L] ids gives float32 logits [B, L, V].
    config: the config the model was trained or converted with (its
      ``model`` section describes the network).
    tokenizer: a SentencePieceProcessor, or None when the checkpoint ships none
      we can read.
    params: the parameters (nested dict, layers stacked when ``scan_layers``).
    source: where the parameters were read from.
  """
  model: Any
  config: ConfigDict
  tokenizer: Any
  params: dict
  source: str


def _interop():
  from polyglot_jax.interop import hf as hf_lib
  from polyglot_jax.interop import hf_config, workdir
  return hf_lib, hf_config, workdir


def kind_of(path: str) -> str:
  """"hf", "converted" or "training" for a loadable directory; a ConvertError otherwise."""
  _, _, workdir = _interop()
  if not os.path.isdir(path):
    raise ConvertError(f"'{path}' is not a directory; give a training workdir, a converted workdir or a "
                       "Hugging Face model directory")
  if workdir.is_hf_dir(path):
    return "hf"
  if os.path.isfile(os.path.join(path, "config.json")):
    if workdir.checkpoint_steps(path):
      return "training"
    if os.path.isdir(os.path.join(path, workdir.PARAMS_DIR)):
      return "converted"
  raise ConvertError(f"'{path}' is neither a Hugging Face model directory (config.json + *.safetensors) nor a "
                     "workdir of ours (config.json + params/ or checkpoints/)")


def model_settings(path: str) -> dict[str, Any]:
  """The architecture fields (``ARCHITECTURE_FIELDS``) of the model at ``path``."""
  _, hf_config, workdir = _interop()
  if kind_of(path) == "hf":
    hf_json = os.path.join(path, "config.json")
    return hf_config.model_fields(hf_config.read_json(hf_json), hf_json)
  return hf_config.resolved_model(workdir.read_config(path).model)


def saved_config(path: str) -> ConfigDict:
  """The locked config of the model at ``path`` (an HF directory gets the defaults plus its model fields)."""
  from polyglot_jax import configs as config_lib
  _, _, workdir = _interop()
  if kind_of(path) == "hf":
    config = config_lib.default_config()
    config.lock()
    for key, value in model_settings(path).items():
      config_lib.set_key(config, f"model.{key}", value, from_string=False)
    return config
  return workdir.read_config(path)


def apply_init_from(config: ConfigDict, explicit: Iterable[str] = ()) -> ConfigDict:
  """Takes config.model's architecture from the checkpoint at ``config.init_from``.

  A user starting from a checkpoint does not retype its shape: every
  ``ARCHITECTURE_FIELDS`` entry of ``config.model`` is set from the
  checkpoint, and so is every ``MOE_FIELDS`` entry when the checkpoint is
  one of ours or a Mixtral directory (a dense Hugging Face directory keeps the run's MoE settings). A
  checkpoint with only some MoE layers also sets ``scan_layers=False``
  unless the user set it. Only a key the user set explicitly (``explicit``:
  dotted keys of command-line overrides) and that contradicts the
  checkpoint is an error, naming the key and both values. An empty ``config.data.tokenizer``
  (outside the demo source, which builds its own) becomes the checkpoint's
  SentencePiece model when it ships one: a fine-tuning run reads its data
  with the tokenizer the model was trained with.

  Args:
    config: the run's config (locked); changed in place.
    explicit: dotted config keys given explicitly (e.g. ``model.d_model``).

  Returns:
    config.
  """
  if not config.init_from:
    return config
  theirs = model_settings(config.init_from)
  fields = ARCHITECTURE_FIELDS
  saved_model = None
  if kind_of(config.init_from) != "hf":
    saved_model = saved_config(config.init_from).model
    theirs.update({key: saved_model[key] for key in MOE_FIELDS})
    fields += MOE_FIELDS
  else:  # A Mixtral directory states its MoE settings; a dense one leaves the run's own.
    fields += tuple(key for key in MOE_FIELDS if key in theirs)
  explicit = set(explicit)
  with config.unlocked():
    for key in fields:
      value = theirs[key]
      ours = config.model[key]
      if f"model.{key}" in explicit:
        if key == "head_dim" and ours <= 0:
          continue
        same = math.isclose(ours, value, rel_tol=1e-9) if isinstance(value, float) else ours == value
        if not same:
          raise ConfigError(f"--config.model.{key}={ours!r} contradicts config.init_from='{config.init_from}', "
                            f"whose model has {key}={value!r}; drop the flag or start from another checkpoint")
      config.model[key] = type(ours)(value) if not isinstance(ours, bool) else bool(value)
    if saved_model is not None and _partly_moe(saved_model) and "model.scan_layers" not in explicit:
      config.model.scan_layers = False  # Scanned layers must all be alike; an explicit True fails in ModelConfig.
    if not config.data.tokenizer and config.data.source != "demo":
      found = find_tokenizer(config.init_from, saved_config(config.init_from))
      if found:
        config.data.tokenizer = os.path.abspath(found)
  return config


def _partly_moe(model: ConfigDict) -> bool:
  """Some layers of the model are MoE and some dense (such a checkpoint is stored unrolled)."""
  from polyglot_jax.models.config import ModelConfig
  cfg = ModelConfig.from_config(model)
  return 0 < len(cfg.moe_layer_ids()) < cfg.num_layers


def read_params(path: str, config: ConfigDict, step: int | None = None) -> dict:
  """The parameters at ``path`` as NumPy arrays laid out for ``config.model``.

  Args:
    path: a training workdir, a converted workdir or a Hugging Face directory.
    config: config.model must describe the same network (the first field that
      differs is named); config.data.seq_len must fit a sliding window.
    step: a training checkpoint step; None: the newest (or params/).

  Returns:
    Nested dict with the structure and shapes of the Decoder's parameters
    (layers stacked when config.model.scan_layers).
  """
  hf_lib, hf_config, workdir = _interop()
  from polyglot_jax.models.layers import dtype_of
  kind = kind_of(path)
  if kind == "hf":
    hf_json = os.path.join(path, "config.json")
    hf = hf_config.read_json(hf_json)
    fields = hf_config.model_fields(hf, hf_json)
    hf_config.check_same_model(config.model, fields, hf_json, hf_config.HF_NAMES)
    workdir.check_window(hf, hf_json, config.data.seq_len)
    params = hf_lib.read_params(path, fields, np.dtype(dtype_of(config.model.param_dtype)),
                                progress=logging.info)
  else:
    theirs = workdir.read_config(path)
    hf_config.check_same_model(config.model, hf_config.resolved_model(theirs.model),
                               os.path.join(path, "config.json"))
    source, hf = workdir.origin_hf_config(path, theirs)
    if source:
      workdir.check_window(hf, os.path.join(source, "config.json"), config.data.seq_len)
    params, _ = workdir.read_params(path, step)
  return params if config.model.scan_layers else workdir.unstack(params)


def find_tokenizer(path: str, config: ConfigDict | None = None) -> str | None:
  """The SentencePiece .model file that goes with the model at ``path``, if any."""
  _, _, workdir = _interop()
  candidates = []
  if config is not None and config.data.tokenizer:
    candidates.append(config.data.tokenizer)
  if config is not None and config.data.source == "demo":
    root = config.data.demo_dir or os.path.join(path, "demo_data")
    candidates.append(os.path.join(root, "spm.model"))
  tok_dir = workdir.tokenizer_dir(path)
  if tok_dir:
    candidates.extend(sorted(glob.glob(os.path.join(tok_dir, "*.model"))))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  return None


def load(path: str, step: int | None = None, *, mesh=None, dtype: str | None = None,
         tokenizer: bool = True) -> Loaded:
  """Loads the model at ``path`` ready to call.

  Args:
    path: a training workdir, a converted workdir or a Hugging Face directory.
    step: a training checkpoint step; None: the newest.
    mesh: a jax Mesh to shard the parameters over with the config's logical
      axis rules; None uses the mesh set with ``jax.set_mesh`` if any, else
      one device.
    dtype: compute dtype override ("float32", "bfloat16"); None keeps the config's.
    tokenizer: also load the SentencePiece tokenizer when one is found.

  Returns:
    A ``Loaded`` with ``.model``, ``.config``, ``.tokenizer``, ``.params``, ``.source``.
  """
  import jax
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec

  from polyglot_jax import mesh as mesh_lib
  from polyglot_jax.models.config import ModelConfig
  from polyglot_jax.models.decoder import Decoder

  config = saved_config(path)
  kind = kind_of(path)
  with config.unlocked():
    if dtype:
      config.model.dtype = dtype
    if kind == "hf":
      # Read at the stored precision a Hugging Face config names, float32 otherwise.
      config.model.param_dtype = "float32"
  params = read_params(path, config, step)
  model_cfg = ModelConfig.from_config(config.model)
  if mesh is None:
    active = jax.sharding.get_mesh()
    mesh = active if active is not None and not active.empty else \
        mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])
  rules = mesh_lib.rules_tuple(config.logical_axis_rules)
  with mesh_lib.activate(mesh, rules):
    abstract_model = nnx.eval_shape(lambda: Decoder(model_cfg, nnx.Rngs(params=0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  want = nnx.to_pure_dict(abstract_params)
  arrays = jax.tree.map(lambda x, spec, s: jax.device_put(np.asarray(x, dtype=spec.dtype), s), params, want, shardings)
  model = nnx.merge(graphdef, arrays)
  processor = None
  if tokenizer:
    spm_path = find_tokenizer(path, config)
    if spm_path:
      import sentencepiece as spm
      processor = spm.SentencePieceProcessor(model_file=spm_path)
  return Loaded(model=model, config=config, tokenizer=processor, params=arrays, source=path)
