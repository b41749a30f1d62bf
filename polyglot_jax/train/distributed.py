"""Joining a multi-host run: the JAX_* launch variables, checked before anything connects."""

from __future__ import annotations

import logging
import os
import time

import jax

from polyglot_jax.errors import TrainingError


def maybe_initialize_distributed() -> None:
  """Joins the multi-controller runtime when this is one of several processes.

  Every process of a multi-host run sets all three of JAX_COORDINATOR_ADDRESS
  (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
  (0 .. JAX_NUM_PROCESSES-1); tools/tpu/worker_train.sh sets them on TPU VMs
  from the TPU metadata. On a GKE TPU pod (TPU_WORKER_HOSTNAMES lists several
  hosts) jax finds them itself. JAX_INITIALIZATION_TIMEOUT (seconds, default
  300) bounds the wait for the other processes.

  Raises:
    TrainingError: a variable is missing or inconsistent, or process 0 cannot
      be reached in time; checked before anything connects, so a bad launch
      stops at once with one line instead of hanging or aborting in C++.
  """
  if jax.distributed.is_initialized():
    return
  env = os.environ
  raw_timeout = env.get("JAX_INITIALIZATION_TIMEOUT", "300")
  timeout = int(raw_timeout) if raw_timeout.isdigit() else 0
  if timeout <= 0:
    raise TrainingError(f"JAX_INITIALIZATION_TIMEOUT={raw_timeout!r} must be a positive whole number of seconds")
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  given = [name for name in names if env.get(name)]
  if not given:
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
      jax.distributed.initialize(initialization_timeout=timeout)
    return
  if len(given) < len(names):
    missing = [name for name in names if name not in given]
    raise TrainingError(
        f"{' and '.join(given)} set but {' and '.join(missing)} not: a multi-host run sets all three on every "
        "process (JAX_PROCESS_ID 0..JAX_NUM_PROCESSES-1); unset them all for a single process")
  address = env["JAX_COORDINATOR_ADDRESS"]
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise TrainingError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port (process 0's address and a free port)")
  try:
    num_processes, process_id = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
  except ValueError:
    raise TrainingError(f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                        f"{env['JAX_PROCESS_ID']!r} must be whole numbers") from None
  if num_processes < 1:
    raise TrainingError(f"JAX_NUM_PROCESSES={num_processes} must be at least 1 (the number of processes launched)")
  if not 0 <= process_id < num_processes:
    raise TrainingError(
        f"JAX_PROCESS_ID={process_id} does not fit JAX_NUM_PROCESSES={num_processes}: ids run 0.."
        f"{num_processes - 1}, one per process; check the launch command of every host")
  if num_processes == 1:
    return
  # jax aborts the whole process (C++ LOG(FATAL)) when it cannot reach the
  # coordinator in time, so the other processes first check that process 0
  # listens, and stop with a readable error when it never does.
  if process_id > 0:
    import socket
    deadline = time.monotonic() + timeout
    while True:
      try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
        break
      except OSError as e:
        if time.monotonic() > deadline:
          raise TrainingError(
              f"process {process_id} of {num_processes} could not reach process 0 at JAX_COORDINATOR_ADDRESS="
              f"{address} within {timeout} s ({e.strerror or e}); start the same command on every host "
              "or fix the address") from None
        time.sleep(0.5)
  logging.info("joining a %d-process run as process %d via %s; waiting up to %d s for the others",
               num_processes, process_id, address, timeout)
  # CPU devices of different processes reach each other through gloo (jax
  # 0.10's default, set so that no other default leaves CPU collectives
  # unimplemented); TPU and GPU runs never use it.
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in env:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num_processes, process_id, initialization_timeout=timeout)
