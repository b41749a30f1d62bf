"""One host of tests/test_multihost.py: the real CLI, plus a record of the rows this host fed.

    python tests/multihost_worker.py ROWS.npz train --config CONFIG --workdir DIR

Every call of ``trainer.global_batch`` — where a host hands its local rows to
``make_array_from_process_local_data``, for train and eval batches alike — is
recorded, so the test can compare what each host fed with what one process
feeds alone.
"""

import sys

import numpy as np


def record_fed_rows(global_batch):
  """Wraps ``global_batch``; returns (wrapper, list the local rows are appended to)."""
  fed = []

  def recording(setup, local):
    fed.append({k: np.array(local[k]) for k in ("inputs", "loss_weights")})
    return global_batch(setup, local)

  return recording, fed


def save_fed_rows(path: str, fed: list[dict]) -> None:
  np.savez(path, **{k: np.stack([batch[k] for batch in fed]) for k in ("inputs", "loss_weights")})


def main() -> int:
  out, argv = sys.argv[1], sys.argv[2:]
  from polyglot_jax import cli
  from polyglot_jax.train import trainer
  trainer.global_batch, fed = record_fed_rows(trainer.global_batch)
  code = cli.main(argv)
  if fed:
    save_fed_rows(out, fed)
  return code


if __name__ == "__main__":
  sys.exit(main())
