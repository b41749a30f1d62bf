"""Orbax checkpoints: train state + data-iterator state + what model it is.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,meta}``. Saves are
asynchronous (training goes on while arrays are written) and atomic (orbax
writes to a temporary directory and renames it when complete), so a save
killed half-way leaves no step directory that looks complete. Restoring
walks back from the newest step: a step that cannot be read is reported by
name and moved to ``WORKDIR/checkpoints_unreadable/`` (never deleted), and
the next older one is tried. Only the keep policy deletes checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from polyglot_jax.errors import CheckpointError  # noqa: F401  (re-exported)




def shape_signature(abstract_state: Any) -> dict[str, list[int]]:
  """Parameter path → shape, recorded with each checkpoint and checked on restore."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]:
    out["/".join(str(getattr(k, "key", k)) for k in path)] = list(leaf.shape)
  return out


class Checkpointer:

  def __init__(self, workdir: str, every_steps: int, max_to_keep: int, async_save: bool):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.quarantine = os.path.abspath(os.path.join(workdir, "checkpoints_unreadable"))
    self.every_steps = every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))

  def save(self, step: int, state: Any, data_state: dict | Callable[[], dict], meta: dict,
           force: bool = False) -> bool:
    """Saves when due (or forced); ``data_state`` may be a callable, asked only then (it may be a collective)."""
    if not force and (self.every_steps <= 0 or step % self.every_steps):
      return False
    if step in self.manager.all_steps():
      return False
    if callable(data_state):
      data_state = data_state()
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                meta=ocp.args.JsonSave(meta)),
        force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state: Any, expected_shapes: dict[str, list[int]]):
    """Restores the newest readable checkpoint onto ``abstract_state``'s shardings.

    Returns:
      (step, state, data_state, meta) or None when there is no checkpoint.
    """
    self.manager.reload()
    steps = sorted(self.manager.all_steps(), reverse=True)
    problems = []
    for step in steps:
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as e:  # Unreadable metadata: a partial or corrupt step.
        problems.append(self._set_aside(step, e))
        continue
      _check_shapes(self.directory, step, meta.get("shapes", {}), expected_shapes)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # Missing or truncated array files.
        problems.append(self._set_aside(step, e))
        continue
      return step, restored["state"], restored["data"], meta
    if problems:
      raise CheckpointError(
          f"no readable checkpoint in {self.directory} ({'; '.join(problems)}); the unreadable steps were "
          f"moved to {self.quarantine}; restore one by hand or use a new workdir")
    return None

  def _set_aside(self, step: int, error: Exception) -> str:
    src = os.path.join(self.directory, str(step))
    reason = f"step {step}: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    logging.warning("checkpoint %s is unreadable (%s); moving it to %s and trying an older one",
                    src, reason, self.quarantine)
    if jax.process_index() == 0 and os.path.isdir(src):
      os.makedirs(self.quarantine, exist_ok=True)
      dst = os.path.join(self.quarantine, str(step))
      suffix = 0
      while os.path.exists(dst):
        suffix += 1
        dst = os.path.join(self.quarantine, f"{step}.{suffix}")
      shutil.move(src, dst)
    self.manager.reload()
    return reason


def _check_shapes(directory: str, step: int, saved: dict, expected: dict) -> None:
  if not saved:
    return
  for name in sorted(set(saved) | set(expected)):
    if saved.get(name) != expected.get(name):
      raise CheckpointError(
          f"checkpoint {directory}/{step} holds a different model: parameter '{name}' is "
          f"{saved.get(name, 'absent')} there and {expected.get(name, 'absent')} in this config; "
          "use a new --workdir or the checkpoint's config")

