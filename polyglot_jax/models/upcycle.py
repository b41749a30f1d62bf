"""Dense → MoE upcycling (Komatsuzaki et al. 2023; MoE-LPR's first move).

Each chosen layer's SwiGLU becomes N experts: expert 0 is the original FFN
bit for bit, experts 1..N−1 are copies (optionally with Gaussian noise of
std ``noise``·std of the weight), and a fresh router (normal, std
``router_std``) sends each token to its top-k. Identical experts with
top-k weights that sum to 1 give the dense FFN back, so without noise the
upcycled model computes what the dense one did (up to float rounding).

The result is written as a converted-style workdir (``config.json`` +
``params/``, see interop/workdir.py), which ``polyglot_jax.load`` reads and
a new run starts from with ``config.init_from``. Checkpoint surgery
(``train/surgery.py``) does not fit: it needs a training workdir, and it
carries the step and optimizer state over, while an upcycled model starts a
new run (new trainable set, new schedule) from step 0 — and may come from a
converted Hugging Face model.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from polyglot_jax.errors import ConfigError, ConvertError

EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")


def upcycle_params(params: dict, layer_ids, num_experts: int, *, noise: float = 0.0, router_std: float = 0.02,
                   seed: int = 0) -> dict:
  """MoE parameters from dense ones (NumPy, one subtree per layer).

  Args:
    params: dense parameters with ``blocks`` keyed by layer index (``interop.workdir.unstack``).
    layer_ids: the layers whose ``mlp`` becomes ``moe``.
    num_experts: N.
    noise: experts 1..N−1 get N(0, (noise · std of the original weight)²) added; 0 = exact copies.
    router_std: std of the fresh [E, N] router.
    seed: seed of the router and the noise.

  Returns:
    Parameters with ``blocks[i].moe = {router [E, N], gate_proj/up_proj [N, E, F], down_proj [N, F, E]}``
    on the chosen layers; every other parameter is the input's.
  """
  rng = np.random.default_rng(seed)
  blocks = {}
  for i in sorted(params["blocks"], key=int):
    block = dict(params["blocks"][i])
    if int(i) in set(layer_ids):
      mlp = block.pop("mlp")
      moe = {}
      for name in EXPERT_WEIGHTS:
        w = np.asarray(mlp[name])
        experts = np.repeat(w[None], num_experts, axis=0)
        if noise > 0 and num_experts > 1:
          jitter = rng.normal(size=experts[1:].shape) * (noise * float(np.std(w, dtype=np.float64)))
          experts[1:] = (experts[1:].astype(np.float64) + jitter).astype(w.dtype)
        moe[name] = experts
      gate = np.asarray(mlp["gate_proj"])
      moe["router"] = (rng.normal(size=(gate.shape[0], num_experts)) * router_std).astype(gate.dtype)
      block["moe"] = moe
    blocks[int(i)] = block
  return {**params, "blocks": blocks}


def moe_config(config, num_experts: int, top_k: int, layers: str):
  """A copy of ``config`` (locked) whose model has the MoE settings; one-line errors name the flag."""
  from polyglot_jax.models.config import ModelConfig
  if config.model.num_experts:
    raise ConfigError(f"the model already has config.model.num_experts={config.model.num_experts}; "
                      "moe upcycle takes a dense checkpoint")
  if num_experts < 1:
    raise ConfigError(f"--num_experts={num_experts}; use 1 or more")
  if not 1 <= top_k <= num_experts:
    raise ConfigError(f"--top_k={top_k} must be in 1..--num_experts={num_experts}")
  new = config.copy_and_resolve_references()
  with new.unlocked():
    new.model.num_experts = num_experts
    new.model.moe_top_k = top_k
    new.model.moe_layers = layers
    new.model.moe_shared_experts = 0
    try:
      ids = ModelConfig.from_config({**new.model.to_dict(), "scan_layers": False}).moe_layer_ids()
    except ValueError as e:
      raise ConfigError(f"--layers {layers}: {e}") from None
    if len(ids) != new.model.num_layers:
      new.model.scan_layers = False  # Scanned layers must all be alike; a mix of dense and MoE is unrolled.
  new.lock()
  return new, ids


def check_dense_shapes(params: dict, model, where: str) -> None:
  """ConvertError naming the first layer whose FFN does not have the shapes ``model`` (config.model) says."""
  e, f, n = model.d_model, model.mlp_dim, model.num_layers
  blocks = params["blocks"]
  if len(blocks) != n:
    raise ConvertError(f"{where} has {len(blocks)} layers but its config says num_layers={n}")
  want = {"gate_proj": (e, f), "up_proj": (e, f), "down_proj": (f, e)}
  for i in sorted(blocks, key=int):
    mlp = blocks[i].get("mlp")
    if mlp is None:
      raise ConvertError(f"{where}: layer {i} has no dense FFN (blocks.{i}.mlp); moe upcycle takes a dense model")
    for name, shape in want.items():
      got = tuple(np.shape(mlp[name]))
      if got != shape:
        raise ConvertError(f"{where}: blocks.{i}.mlp.{name} has shape {got} but its config says {shape} "
                           f"(d_model={e}, mlp_dim={f}); the checkpoint does not match its config")


def upcycle(source: str, out: str, num_experts: int, top_k: int, layers: str = "all", *, noise: float = 0.0,
            router_std: float | None = None, seed: int = 0) -> dict:
  """Writes ``out`` (config.json + params/): the dense model at ``source`` upcycled to an MoE.

  Args:
    source: a training workdir (newest checkpoint), a converted workdir or a Hugging Face directory.
    out: the new workdir; must not hold a model yet.
    num_experts, top_k, layers: config.model.num_experts / moe_top_k / moe_layers of the result
      (a layer subset makes the layers unrolled: scan_layers=False).
    noise: relative std of the noise on experts 1..N−1 (0: exact copies).
    router_std: std of the fresh router; None: the model's init_std.
    seed: seed of the router and the noise.

  Returns:
    {"layers": MoE layer ids, "dense_params", "moe_params": parameter counts, "config": the new config}.
  """
  from polyglot_jax import configs as config_lib
  from polyglot_jax import loading
  from polyglot_jax.interop import workdir
  if os.path.isfile(os.path.join(out, "config.json")):
    raise ConvertError(f"--workdir {out} already holds a model (config.json); pick a new directory")
  config = loading.saved_config(source)
  new_config, ids = moe_config(config, num_experts, top_k, layers)
  dense = workdir.unstack(loading.read_params(source, config))
  check_dense_shapes(dense, config.model, source)
  std = config.model.init_std if router_std is None else router_std
  params = upcycle_params(dense, ids, num_experts, noise=noise, router_std=std, seed=seed)
  _check_against_model(params, new_config)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "config.json"), "w") as f:
    f.write(config_lib.to_json(new_config))
  workdir.write_params(out, params)  # Stacked when every layer is alike, one subtree per layer otherwise.
  _copy_tokenizer(source, config, out)
  return {"layers": ids, "dense_params": _count(dense), "moe_params": _count(params), "config": new_config}


def _count(tree) -> int:
  import jax
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def _check_against_model(params: dict, config) -> None:
  """The upcycled tree has exactly the Decoder's parameter names and shapes under the new config."""
  import jax
  from flax import nnx

  from polyglot_jax import mesh as mesh_lib
  from polyglot_jax.interop import workdir
  from polyglot_jax.models.config import ModelConfig
  from polyglot_jax.models.decoder import Decoder
  cfg = ModelConfig.from_config(config.model)
  one = mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])
  with mesh_lib.activate(one, mesh_lib.rules_tuple(config.logical_axis_rules)):
    abstract = nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=0)))
  want = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  want = want if cfg.scan_layers else workdir.unstack(want)
  got = params if not cfg.scan_layers else workdir.stack(params)
  w, g = _shapes(want), _shapes(got)
  for name in sorted(w.keys() | g.keys()):
    if w.get(name) != g.get(name):
      raise ConvertError(f"upcycled parameter {name} has shape {g.get(name)} but the MoE model needs "
                         f"{w.get(name)}; the checkpoint does not match its config")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """'blocks/moe/router' → shape, for every leaf."""
  import jax
  from polyglot_jax.train.state import path_names
  return {"/".join(path_names(p)): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _copy_tokenizer(source: str, config, out: str) -> None:
  """Copies the source's tokenizer (and Hugging Face config) so that ``polyglot_jax.load(out)`` finds them."""
  from polyglot_jax import loading
  from polyglot_jax.interop import tokenizer_files, workdir
  target = os.path.join(out, workdir.TOKENIZER_DIR)
  tok_dir = workdir.tokenizer_dir(source)
  if tok_dir and tokenizer_files.present(tok_dir):
    tokenizer_files.copy(tok_dir, target)
  else:
    found = loading.find_tokenizer(source, config)
    if found:
      os.makedirs(target, exist_ok=True)
      shutil.copyfile(found, os.path.join(target, os.path.basename(found)))
  hf_dir = workdir.source_dir(source)
  if hf_dir:
    os.makedirs(os.path.join(out, workdir.SOURCE_DIR), exist_ok=True)
    for name in ("config.json", "generation_config.json"):
      if os.path.isfile(os.path.join(hf_dir, name)):
        shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out, workdir.SOURCE_DIR, name))
