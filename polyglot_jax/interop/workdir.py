"""Parameters in our workdirs (read by ``polyglot_jax.loading``, the one model-loading API).

A workdir written by ``polyglot-jax convert --from_hf`` holds

  config.json   our resolved config (model section from the HF config.json)
  params/       orbax PyTree of the parameters only, layers stacked on a leading axis
  tokenizer/    the tokenizer files, as shipped with the HF model
  hf_source/    the HF config.json (and generation_config.json) it came from

Parameters are kept apart from ``checkpoints/`` because a checkpoint there is
a full train state (optimizer moments, data-iterator state), which a
conversion has no business inventing, and which the trainer would try to
resume. A training workdir is read from ``checkpoints/<step>/state``, taking
only its ``params`` subtree.
"""

from __future__ import annotations

import json
import os

import numpy as np

from polyglot_jax.interop.hf_config import ConvertError, read_json, sliding_window

PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
SOURCE_DIR = "hf_source"


# ---------------------------------------------------------------------------
# Layer layout: stacked (scan_layers=True) ↔ one subtree per layer
# ---------------------------------------------------------------------------


def is_stacked(params: dict) -> bool:
  return not all(str(k).isdigit() for k in params["blocks"])


def stack(params: dict) -> dict:
  """{blocks: {0: tree, 1: tree...}} (keys int or digit strings) → {blocks: tree of [L, ...]}.

  Layers of different structure (an MoE model with some dense layers) are returned unstacked.
  """
  if is_stacked(params):
    return params
  import jax
  layers = [params["blocks"][k] for k in sorted(params["blocks"], key=int)]
  if len({jax.tree.structure(layer) for layer in layers}) > 1:
    return params  # Dense and MoE layers mixed (scan_layers=False) cannot stack: one subtree per layer.
  out = dict(params)
  out["blocks"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  return out


def unstack(params: dict) -> dict:
  """The scan_layers=False tree (``blocks`` keyed by int layer index) of stacked params."""
  if not is_stacked(params):
    return {**params, "blocks": {int(k): v for k, v in params["blocks"].items()}}
  import jax
  num_layers = len(jax.tree.leaves(params["blocks"])[0])
  out = dict(params)
  out["blocks"] = {i: jax.tree.map(lambda x, i=i: x[i], params["blocks"]) for i in range(num_layers)}
  return out


# ---------------------------------------------------------------------------
# Reading and writing our workdirs
# ---------------------------------------------------------------------------


def is_hf_dir(path: str) -> bool:
  """True for a directory whose config.json is a Hugging Face one (not our resolved config)."""
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    return False
  try:
    data = read_json(config)
  except ConvertError:
    return False
  return not isinstance(data.get("model"), dict) and ("architectures" in data or "model_type" in data)


def read_config(workdir: str):
  """Our locked config from ``workdir/config.json``."""
  from polyglot_jax import configs as config_lib
  path = os.path.join(workdir, "config.json")
  data = read_json(path)
  try:
    return config_lib.config_from_dict(data)
  except config_lib.ConfigError as e:
    raise ConvertError(f"{path}: {e}") from None


def checkpoint_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name, "state")))


def _restore_numpy(path: str, subtree: str | None = None) -> dict:
  """Restores an orbax PyTree (or one top-level subtree of it) as NumPy arrays on this host."""
  import jax
  import orbax.checkpoint as ocp
  from etils import epath
  # The PyTree handler itself, not a Checkpointer around it: a Checkpointer also looks for a
  # step's _CHECKPOINT_METADATA inside the item folder, where orbax never writes one, and
  # logs a warning on every read.
  handler = ocp.PyTreeCheckpointHandler()
  item_dir = epath.Path(path)
  tree = handler.metadata(item_dir).tree
  if subtree is not None:
    if subtree not in tree:
      raise ConvertError(f"{path} holds no '{subtree}' ({sorted(tree)})")
    tree = {subtree: tree[subtree]}
  item = jax.tree.map(lambda _: 0, tree)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  out = handler.restore(item_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=subtree is not None))
  return out[subtree] if subtree is not None else out


def read_params(workdir: str, step: int | None = None) -> tuple[dict, str]:
  """Stacked parameters of a converted or training workdir.

  Args:
    workdir: holds params/ (convert) and/or checkpoints/<step>/ (training).
    step: a checkpoint step; None means the newest checkpoint, else params/.

  Returns:
    (params, a description of where they came from).
  """
  steps = checkpoint_steps(workdir)
  params_dir = os.path.join(workdir, PARAMS_DIR)
  if step is not None and step not in steps:
    raise ConvertError(f"{workdir}/checkpoints has no step {step}; steps there: {steps or 'none'}")
  if steps:
    step = steps[-1] if step is None else step
    where = os.path.join(workdir, "checkpoints", str(step), "state")
    params = _restore_numpy(where, "params")
  elif os.path.isdir(params_dir):
    where = params_dir
    params = _restore_numpy(params_dir)
  else:
    raise ConvertError(f"{workdir} has neither {PARAMS_DIR}/ (from polyglot-jax convert) nor checkpoints/ "
                       "(from training)")
  return stack(params), where


def write_params(workdir: str, params: dict) -> str:
  """Writes stacked ``params`` to ``workdir/params`` (orbax); returns the path."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.path.join(workdir, PARAMS_DIR))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, stack(params))
  return path


def source_dir(path: str) -> str | None:
  """The directory holding the HF config.json of ``path``: its hf_source/ (converted), or itself (HF)."""
  if os.path.isfile(os.path.join(path, SOURCE_DIR, "config.json")):
    return os.path.join(path, SOURCE_DIR)
  if is_hf_dir(path):
    return path
  return None


def origin_hf_config(workdir: str, config) -> tuple[str | None, dict | None]:
  """(directory, contents) of the HF config.json a workdir's model came from, if it came from HF.

  A converted workdir keeps it in hf_source/; a run started with config.init_from
  finds it where it started from, when that is still there.
  """
  source = source_dir(workdir)
  if source is None and config.init_from and os.path.isdir(config.init_from):
    source = source_dir(config.init_from)
  return (source, read_json(os.path.join(source, "config.json"))) if source else (None, None)


def tokenizer_dir(path: str) -> str | None:
  """Where the HF tokenizer files of a HF directory or a converted workdir are."""
  if os.path.isdir(os.path.join(path, TOKENIZER_DIR)):
    return os.path.join(path, TOKENIZER_DIR)
  if is_hf_dir(path):
    return path
  return None


# ---------------------------------------------------------------------------
# Sliding windows
# ---------------------------------------------------------------------------


def check_window(hf: dict | None, where: str, seq_len: int) -> None:
  """Refuses rows longer than a Hugging Face model's sliding window (our decoder attends over the whole row)."""
  window = sliding_window(hf) if hf else None
  if window is not None and seq_len > window:
    raise ConvertError(f"{where} has sliding_window={window} but config.data.seq_len={seq_len}; our decoder "
                       f"attends over the whole row, so rows longer than {window} would compute something "
                       f"else; set --config.data.seq_len={window} or less")


def describe(params: dict) -> str:
  """'N parameters, dtype' for progress lines."""
  import jax
  leaves = jax.tree.leaves(params)
  return f"{sum(x.size for x in leaves) / 1e6:.2f}M parameters, {leaves[0].dtype}"


def json_dump(path: str, data: dict) -> None:
  with open(path, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)
