"""Orbax checkpoints: train state + data-iterator state + what model it is.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,meta}``. Saves are
asynchronous (training goes on while arrays are written) and atomic (orbax
writes to a temporary directory and renames it when complete), so a save
killed half-way leaves no step directory that looks complete. Restoring
walks back from the newest step: a step that cannot be read is reported by
name and moved to ``WORKDIR/checkpoints_unreadable/`` (never deleted), and
the next older one is tried. Only the keep policy deletes checkpoints.

A ``gs://`` workdir is handed to orbax as the URL itself: orbax writes the
arrays with tensorstore's GCS driver and, on GCS, marks a finished step with
a commit file instead of renaming a temporary directory (a rename of a
directory on GCS would copy every object). The quarantine move goes through
``train/paths.py``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from polyglot_jax.errors import CheckpointError  # noqa: F401  (re-exported)
from polyglot_jax.train import paths

# URL schemes orbax writes natively (tensorstore driver + etils.epath); other URLs are refused.
ORBAX_SCHEMES = ("gs",)

def shape_signature(abstract_state: Any) -> dict[str, list[int]]:
  """Parameter path → shape, recorded with each checkpoint and checked on restore."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]:
    out["/".join(str(getattr(k, "key", k)) for k in path)] = list(leaf.shape)
  return out


class Checkpointer:
  """The run's orbax CheckpointManager over ``WORKDIR/checkpoints`` (a local path or ``gs://``).

  Args:
    workdir: the run's workdir.
    every_steps: save every this many steps (0: only forced saves).
    max_to_keep: newest checkpoints kept.
    async_save: write arrays on a background thread while training goes on.
  """

  def __init__(self, workdir: str, every_steps: int, max_to_keep: int, async_save: bool):
    workdir = paths.absolute(workdir)
    if paths.is_remote(workdir) and paths.scheme(workdir) not in ORBAX_SCHEMES:
      raise CheckpointError(f"--workdir {workdir}: orbax checkpoints are written to local paths or "
                            f"{', '.join(s + '://' for s in ORBAX_SCHEMES)} only; use a gs:// or local workdir")
    self.directory = paths.join(workdir, "checkpoints")
    self.quarantine = paths.join(workdir, "checkpoints_unreadable")
    self.every_steps = every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))

  def due(self, step: int, force: bool = False) -> bool:
    """Whether ``save(step, ..., force)`` would write a checkpoint.

    Args:
      step: steps done.
      force: a forced save (end of training, preemption).

    Returns:
      True when a save at ``step`` would write.
    """
    if not force and (self.every_steps <= 0 or step % self.every_steps):
      return False
    return step not in self.manager.all_steps()

  def save(self, step: int, state: Any, data_state: dict | Callable[[], dict], meta: dict,
           force: bool = False) -> bool:
    """Saves when due (or forced); ``data_state`` may be a callable, asked only then (it may be a collective).

    Args:
      step: steps done.
      state: the train state.
      data_state: the data iterator's state after the last batch trained on, or a callable giving it.
      meta: JSON metadata (shapes, languages, objective).
      force: save even when ``step`` is not a multiple of ``every_steps``.

    Returns:
      Whether a save was started.
    """
    if not self.due(step, force):
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
    src = paths.join(self.directory, str(step))
    reason = f"step {step}: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    logging.warning("checkpoint %s is unreadable (%s); moving it to %s and trying an older one",
                    src, reason, self.quarantine)
    if jax.process_index() == 0 and paths.isdir(src):
      paths.makedirs(self.quarantine)
      dst = paths.join(self.quarantine, str(step))
      suffix = 0
      while paths.exists(dst):
        suffix += 1
        dst = paths.join(self.quarantine, f"{step}.{suffix}")
      paths.rename(src, dst)
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

