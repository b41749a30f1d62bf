"""Capture a jax.profiler trace of a window of training steps (docs/profiling.md)."""

from __future__ import annotations

import logging
import os

import jax

from polyglot_jax.train import paths


class StepProfiler:
  """Traces steps [start, start + num_steps) into WORKDIR/profile; off when num_steps is 0.

  With a ``gs://`` workdir the trace is written to a local scratch directory
  first (the profiler writes local files) and copied to WORKDIR/profile when
  the window ends.

  Args:
    workdir: the run's workdir (local or a URL).
    start: steps done when the trace starts.
    num_steps: steps traced (0: off).
  """

  def __init__(self, workdir: str, start: int, num_steps: int):
    self.directory = paths.join(workdir, "profile")
    self.local_directory = os.path.join(paths.local_mirror(workdir), "profile") \
        if paths.is_remote(workdir) else self.directory
    self.start, self.end = start, start + num_steps
    self.enabled = num_steps > 0
    self.active = False

  def before_step(self, step: int) -> None:
    """``step`` is the number of steps done so far; the trace starts before step ``start`` runs."""
    if self.enabled and not self.active and self.start <= step < self.end:
      jax.profiler.start_trace(self.local_directory)
      self.active = True
      logging.info("profiling steps %d..%d into %s", step, self.end - 1, self.directory)

  def after_step(self, step: int, outputs) -> None:
    """Ends the trace once ``step`` steps are done, after the window's device work has finished."""
    if self.active and step >= self.end:
      jax.block_until_ready(outputs)  # The window's device work belongs in the trace.
      self.stop()

  def stop(self) -> None:
    """Stops an active trace and writes it (copied to the workdir when that is a URL)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      if self.local_directory != self.directory:
        paths.copy_tree(self.local_directory, self.directory)
      logging.info("profile written to %s", self.directory)
