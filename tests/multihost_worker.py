"""One host of tests/test_multihost.py: the real CLI, plus a record of the rows this host fed.

    python tests/multihost_worker.py ROWS.npz train --config CONFIG --workdir DIR

Every call of ``global_batch`` — where a host hands its local rows to
``make_array_from_process_local_data``, for train and eval batches alike (the
loop calls it through train/trainer.py, evaluation through train/build.py) — is
recorded, so the test can compare what each host fed with what one process
feeds alone.

With ``MULTIHOST_HANG_AFTER_CHECKPOINT=K`` in the environment the host, once its
checkpoint of step K is complete on disk, writes ``ROWS.npz.hung`` and sleeps
instead of training on, so that the test can SIGKILL it at a known point.
"""

import os
import sys
import time
from typing import Callable

import numpy as np


def record_fed_rows(global_batch, fed: list | None = None):
  """Wraps ``global_batch``; returns (wrapper, list the local rows are appended to)."""
  fed = [] if fed is None else fed

  def recording(setup, local):
    fed.append({k: np.array(local[k]) for k in ("inputs", "loss_weights")})
    return global_batch(setup, local)

  return recording, fed


def install_recorder() -> tuple[list[dict], Callable[[], None]]:
  """Records every global_batch call, wherever it is made from; returns (fed rows, undo)."""
  from polyglot_jax.train import build, trainer
  # The loop calls trainer.global_batch and evaluation build.global_batch: wrap it in every module holding it.
  modules = [m for m in (trainer, build) if hasattr(m, "global_batch")]
  originals = [m.global_batch for m in modules]
  fed: list[dict] = []
  for m, original in zip(modules, originals):
    m.global_batch = record_fed_rows(original, fed)[0]

  def undo():
    for m, original in zip(modules, originals):
      m.global_batch = original

  return fed, undo


def save_fed_rows(path: str, fed: list[dict]) -> None:
  np.savez(path, **{k: np.stack([batch[k] for batch in fed]) for k in ("inputs", "loss_weights")})


def hang_after_checkpoint(step: int, marker: str, seconds: float = 600.0) -> None:
  """Makes the checkpoint save of ``step`` wait until it is on disk, mark it, then sleep (to be killed)."""
  from polyglot_jax.train.checkpoint import Checkpointer
  save = Checkpointer.save

  def save_then_hang(self, at: int, *args, **kwargs):
    saved = save(self, at, *args, **kwargs)
    if at == step and saved:
      self.wait()  # The async write, and process 0's commit (rename) of the step directory.
      with open(marker, "w") as f:
        f.write(str(at))
      time.sleep(seconds)
      raise SystemExit(f"still alive {seconds} s after checkpoint {at}: nobody killed this host")
    return saved

  Checkpointer.save = save_then_hang


def main() -> int:
  out, argv = sys.argv[1], sys.argv[2:]
  from polyglot_jax import cli
  fed, _ = install_recorder()
  if os.environ.get("MULTIHOST_HANG_AFTER_CHECKPOINT"):
    hang_after_checkpoint(int(os.environ["MULTIHOST_HANG_AFTER_CHECKPOINT"]), out + ".hung")
  code = cli.main(argv)
  if fed:
    save_fed_rows(out, fed)
  return code


if __name__ == "__main__":
  sys.exit(main())
