"""Checkpoint surgery: the one home for turning a training checkpoint into a new run's checkpoint.

``rewrite_checkpoint`` restores the newest checkpoint of a workdir under its
own config, lets an edit change the config and the state (grow the
vocabulary for ``tokenizer extend``; split FFNs into experts for MoE
upcycling), and saves the result as step-N checkpoint of a new workdir with
no data-iterator state (the new run reads its data from the start). The old
workdir is never written to.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np
from ml_collections import ConfigDict

from polyglot_jax.errors import CheckpointError
from polyglot_jax.train.state import TrainState, path_names

# edit(config, state as NumPy) → (new config, new params, new opt_state); the config may be changed in place.
Edit = Callable[[ConfigDict, TrainState], tuple[ConfigDict, dict, object]]


def rewrite_checkpoint(workdir: str, new_workdir: str, edit: Edit) -> dict:
  """Writes ``new_workdir`` from the newest checkpoint of ``workdir`` changed by ``edit``.

  Args:
    workdir: a training workdir (config.json + checkpoints/).
    new_workdir: where the edited checkpoint and its config.json go.
    edit: gets the (unlocked) config and the restored state as NumPy arrays;
      returns the new config, parameters and optimizer state. Step, PRNG key
      and skip counters carry over; the objective's extra state is made
      again from the new parameters.

  Returns:
    {"step", "config"}: the step written and the new config.
  """
  from polyglot_jax import configs as config_lib
  from polyglot_jax import mesh as mesh_lib
  from polyglot_jax.train.build import build
  from polyglot_jax.train.checkpoint import Checkpointer, shape_signature
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{config_path} is missing; checkpoint surgery needs the workdir of a training run")
  with open(config_path) as f:
    config = config_lib.config_from_dict(json.load(f))
  mesh = mesh_lib.make_mesh({"fsdp": -1})
  setup = build(config, 1, mesh=mesh)
  ckpt = Checkpointer(workdir, 0, 1, False)
  restored = ckpt.restore(setup.abstract_state, shape_signature(setup.abstract_state))
  ckpt.close()
  if restored is None:
    raise CheckpointError(f"no checkpoint in {workdir}/checkpoints to start from")
  step, state, _, meta = restored
  config.unlock()
  config, params, opt_state = edit(config, jax.device_get(state))
  config.lock()
  new_setup = build(config, 1, mesh=mesh)
  params = jax.device_put(params, new_setup.state_shardings.params)
  new = TrainState(step=state.step, params=params, opt_state=opt_state, rng=state.rng,
                   skipped_steps=state.skipped_steps, consecutive_skips=state.consecutive_skips,
                   extra=new_setup.init_extra(params))
  new = jax.device_put(new, new_setup.state_shardings)
  os.makedirs(new_workdir, exist_ok=True)
  out = Checkpointer(new_workdir, 0, 3, False)
  out.save(step, new, {}, {"shapes": shape_signature(new_setup.abstract_state),
                           "languages": meta.get("languages", [])}, force=True)
  out.close()
  with open(os.path.join(new_workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  return {"step": step, "config": config}


def pad_rows(tree, name: str, axis: int, size: int):
  """Zero-pads every leaf whose last path key is ``name`` along ``axis`` to ``size`` (optimizer moments)."""
  def pad(path, x):
    names = path_names(path)
    x = np.asarray(x)
    if names and names[-1] == name and x.shape[axis] < size:
      widths = [(0, 0)] * x.ndim
      widths[axis] = (0, size - x.shape[axis])
      return np.pad(x, widths)
    return x
  return jax.tree_util.tree_map_with_path(pad, tree)
