"""Capture a jax.profiler trace of a window of training steps (docs/profiling.md)."""

from __future__ import annotations

import logging
import os

import jax


class StepProfiler:
  """Traces steps [start, start + num_steps) into WORKDIR/profile; off when num_steps is 0."""

  def __init__(self, workdir: str, start: int, num_steps: int):
    self.directory = os.path.join(workdir, "profile")
    self.start, self.end = start, start + num_steps
    self.enabled = num_steps > 0
    self.active = False

  def before_step(self, step: int) -> None:
    """``step`` is the number of steps done so far; the trace starts before step ``start`` runs."""
    if self.enabled and not self.active and self.start <= step < self.end:
      jax.profiler.start_trace(self.directory)
      self.active = True
      logging.info("profiling steps %d..%d into %s", step, self.end - 1, self.directory)

  def after_step(self, step: int, outputs) -> None:
    if self.active and step >= self.end:
      jax.block_until_ready(outputs)  # The window's device work belongs in the trace.
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile written to %s", self.directory)
