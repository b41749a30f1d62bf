"""Multi-host on CPU: 2 processes × 4 devices train exactly like 1 process × 8 devices.

The two hosts are real processes joined by jax's multi-controller runtime (a
coordinator on a free loopback port, gloo collectives), each running the real
`polyglot-jax train` through tests/multihost_worker.py, which also records the
rows each host fed. The one-process reference runs in this pytest process
(8 fake devices, conftest.py) while the hosts run.

A second group resumes a 2-host grain run from a checkpoint after both hosts
were SIGKILLed, and checks it ends exactly where an uninterrupted 2-host run does.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, tiny_config
from multihost_worker import install_recorder
from polyglot_jax import configs as config_lib
from polyglot_jax.train import trainer

pytestmark = pytest.mark.slow

NUM_HOSTS = 2
STEPS = 6
# Same mesh, same program, same rows: only the order in which gloo and the
# in-process all-reduce add partial sums differs. Seen: ≤ 2e-7 relative.
RTOL = 1e-5
HOST_TIMEOUT_S = 240
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")

CONFIG_FILE = '''"""The test's tiny config, rebuilt from its JSON form."""
import json
from polyglot_jax.configs import config_from_dict


def get_config():
  with open({path!r}) as f:
    return config_from_dict(json.load(f))
'''


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def host_env(num_devices: int, **jax_vars) -> dict:
  """This process's environment with its own device count and JAX_* variables."""
  # The session's compilation cache (conftest.py) stays: hosts of later launches reuse the compiled steps.
  keep = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in keep}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3", **{k: str(v) for k, v in jax_vars.items()})
  return env


def write_config_file(config, root) -> str:
  json_path, py_path = root / "config.json", root / "tiny_config.py"
  json_path.write_text(config_lib.to_json(config))
  py_path.write_text(CONFIG_FILE.format(path=str(json_path)))
  return str(py_path)


def read_losses(workdir) -> dict[int, dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row for row in map(json.loads, f)}


def launch_hosts(root, name: str, config_file: str, workdir: str, **env_vars) -> list[subprocess.Popen]:
  """Starts NUM_HOSTS workers of `train` in workdir; their logs go to root/{name}_host{pid}.log."""
  port = free_port()
  hosts = []
  for pid in range(NUM_HOSTS):
    env = host_env(8 // NUM_HOSTS, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=NUM_HOSTS,
                   JAX_PROCESS_ID=pid, JAX_INITIALIZATION_TIMEOUT=60, **env_vars)
    with open(root / f"{name}_host{pid}.log", "w") as log:
      # A session of its own, so cleanup can kill the host and anything it started.
      hosts.append(subprocess.Popen(
          [sys.executable, WORKER, str(root / f"{name}_rows{pid}.npz"), "train", "--config", config_file,
           "--workdir", workdir], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
  return hosts


def wait_hosts(root, name: str, hosts: list[subprocess.Popen], deadline: float) -> None:
  """Waits for every host to exit 0 before the deadline (time.monotonic()); fails with its log otherwise."""
  for pid, host in enumerate(hosts):
    try:
      host.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pytest.fail(f"{name} host {pid} still running after the deadline; log:\n{_tail(root / f'{name}_host{pid}.log')}")
    log = _tail(root / f"{name}_host{pid}.log")
    assert host.returncode == 0, f"{name} host {pid} exited {host.returncode}; log:\n{log}"


def kill_hosts(hosts: list[subprocess.Popen]) -> None:
  for host in hosts:
    if host.poll() is None:
      os.killpg(host.pid, signal.SIGKILL)
      host.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_data):
  root = tmp_path_factory.mktemp("multihost")
  config = tiny_config(demo_data, train__num_steps=STEPS, train__log_every_steps=1, checkpoint__every_steps=0)
  config_file = write_config_file(config, root)
  multi, single = str(root / "two_hosts"), str(root / "one_host")
  hosts = []
  try:
    hosts = launch_hosts(root, "multi", config_file, multi)
    # The reference, 1 process × 8 devices, while the hosts run.
    single_fed, undo = install_recorder()
    try:
      single_summary = trainer.train_and_evaluate(config, single)
    finally:
      undo()
    wait_hosts(root, "multi", hosts, time.monotonic() + HOST_TIMEOUT_S)
  finally:
    kill_hosts(hosts)
  host_fed = [np.load(root / f"multi_rows{pid}.npz") for pid in range(NUM_HOSTS)]
  single_fed = {k: np.stack([batch[k] for batch in single_fed]) for k in ("inputs", "loss_weights")}
  return {"multi": multi, "single": single, "single_summary": single_summary, "host_fed": host_fed,
          "single_fed": single_fed}


def _tail(path, lines: int = 40) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def test_two_hosts_follow_the_one_host_loss_trajectory(runs):
  multi, single = read_losses(runs["multi"]), read_losses(runs["single"])
  assert sorted(multi) == sorted(single) == list(range(1, STEPS + 1))
  for step in single:
    keys = ["loss", "grad_norm"] + sorted(k for k in single[step] if k.startswith("loss/"))
    assert keys[2:] and set(keys) <= set(multi[step])
    for key in keys:
      np.testing.assert_allclose(multi[step][key], single[step][key], rtol=RTOL, err_msg=f"step {step} {key}")
  # The held-out evaluation is sharded over the hosts too.
  with open(os.path.join(runs["multi"], "eval_results.json")) as f:
    multi_eval = json.load(f)
  after = runs["single_summary"]["eval_after"]
  assert sorted(multi_eval["after"]) == sorted(after)
  for lang, loss in after.items():
    np.testing.assert_allclose(multi_eval["after"][lang], loss, rtol=RTOL, err_msg=lang)


def test_host_shards_are_disjoint_and_make_up_the_one_host_batch(runs):
  host0, host1 = runs["host_fed"]
  single = runs["single_fed"]
  # Train and eval batches alike: one call of global_batch per batch, in the same order everywhere.
  # More batches than train steps: the eval batches (before and after training) are there too.
  assert len(host0["inputs"]) == len(host1["inputs"]) == len(single["inputs"]) > STEPS
  local = single["inputs"].shape[1] // NUM_HOSTS
  assert host0["inputs"].shape[1] == host1["inputs"].shape[1] == local
  both_fed = 0
  for k, batch in enumerate(single["inputs"]):
    # Host p feeds rows [p*local, (p+1)*local) of the global batch.
    np.testing.assert_array_equal(np.concatenate([host0["inputs"][k], host1["inputs"][k]]), batch)
    np.testing.assert_array_equal(
        np.concatenate([host0["loss_weights"][k], host1["loss_weights"][k]]), single["loss_weights"][k])
    # No real row (padding rows of the last eval batch carry no weight) is fed by both hosts.
    rows = [{row.tobytes() for row, w in zip(h["inputs"][k], h["loss_weights"][k]) if w.sum() > 0}
            for h in (host0, host1)]
    assert not rows[0] & rows[1], f"batch {k}: both hosts fed the same row"
    both_fed += bool(rows[0] and rows[1])
  assert both_fed >= STEPS  # Every train batch (and most eval batches) really is split.


RESUME_STEPS = 4
KILL_AFTER = 2  # The hosts are SIGKILLed once checkpoint 2 is on disk; the relaunch trains steps 3 and 4.
RESUME_TIMEOUT_S = 420  # All three 2-host launches together (seen: 90-140 s on 2 busy cores).


def restore_final_state(config, workdir, step):
  """The train state in workdir/checkpoints/step, restored onto 8 devices in this process."""
  import jax
  from polyglot_jax import mesh as mesh_lib
  from polyglot_jax.train.checkpoint import Checkpointer, shape_signature
  setup = trainer.build(config, len(config.data.languages), mesh=mesh_lib.make_mesh({"fsdp": -1}))
  ckpt = Checkpointer(workdir, 0, 10, False)
  try:
    restored_step, state, data_state, meta = ckpt.restore(setup.abstract_state, shape_signature(setup.abstract_state))
  finally:
    ckpt.close()
  assert restored_step == step and data_state["step"] == step
  assert meta["languages"] == list(config.data.languages)
  return jax.device_get(state)


def test_two_hosts_resume_after_sigkill_exactly(tmp_path, demo_data):
  """2 hosts, grain data, async checkpoints: killed after checkpoint 2, resumed to 4 == 4 straight."""
  t0 = time.monotonic()
  config = tiny_config(demo_data, data__backend="grain", data__languages=("deu", "eng", "rus"), data__eval_files=(),
                       data__size_sample_docs=16, train__num_steps=RESUME_STEPS, train__log_every_steps=1,
                       checkpoint__every_steps=KILL_AFTER, checkpoint__async_save=True)
  config_file = write_config_file(config, tmp_path)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  deadline = time.monotonic() + RESUME_TIMEOUT_S
  hosts = []
  try:
    # The uninterrupted reference and the run to be killed, side by side (separate coordinators).
    hosts = launch_hosts(tmp_path, "straight", config_file, straight)
    doomed = launch_hosts(tmp_path, "killed", config_file, resumed, MULTIHOST_HANG_AFTER_CHECKPOINT=KILL_AFTER)
    hosts += doomed
    markers = [tmp_path / f"killed_rows{pid}.npz.hung" for pid in range(NUM_HOSTS)]
    while not all(m.exists() for m in markers):
      for pid, host in enumerate(doomed):
        if host.poll() is not None:
          pytest.fail(f"killed host {pid} exited {host.returncode} before checkpoint {KILL_AFTER}; log:\n"
                      f"{_tail(tmp_path / f'killed_host{pid}.log')}")
      if time.monotonic() > deadline:
        pytest.fail(f"no checkpoint {KILL_AFTER} within {RESUME_TIMEOUT_S} s; log:\n"
                    f"{_tail(tmp_path / 'killed_host0.log')}")
      time.sleep(0.2)
    for host in doomed:  # Both hosts at once, as when a slice is lost.
      os.killpg(host.pid, signal.SIGKILL)
    for host in doomed:
      assert host.wait() == -signal.SIGKILL
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == [str(KILL_AFTER)]
    assert sorted(read_losses(resumed)) == list(range(1, KILL_AFTER + 1))
    # The same command again, in the same workdir.
    hosts += launch_hosts(tmp_path, "resume", config_file, resumed)
    wait_hosts(tmp_path, "straight", hosts[:NUM_HOSTS], deadline)
    wait_hosts(tmp_path, "resume", hosts[2 * NUM_HOSTS:], deadline)
  finally:
    kill_hosts(hosts)
  wall = time.monotonic() - t0
  assert f"resumed from checkpoint step {KILL_AFTER}" in (tmp_path / "resume_host0.log").read_text()

  # Every step's logged loss, bit for bit: steps 1-2 from the killed launch, 3-4 from the resumed one.
  straight_rows, resumed_rows = read_losses(straight), read_losses(resumed)
  assert sorted(straight_rows) == sorted(resumed_rows) == list(range(1, RESUME_STEPS + 1))
  for step, row in straight_rows.items():
    keys = ["loss", "grad_norm"] + sorted(k for k in row if k.startswith("loss/"))
    assert {k: resumed_rows[step][k] for k in keys} == {k: row[k] for k in keys}, f"step {step}"
  # The final checkpoints: parameters, Adam moments, rng and counters, bit for bit.
  a = restore_final_state(config, straight, RESUME_STEPS)
  b = restore_final_state(config, resumed, RESUME_STEPS)
  import jax
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  print(f"2-host kill/resume: three launches in {wall:.0f} s")


def test_process_id_outside_the_process_count_stops_at_start(tmp_path, demo_data):
  config_file = write_config_file(tiny_config(demo_data), tmp_path)
  workdir = tmp_path / "run"
  env = host_env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=2)
  result = subprocess.run([sys.executable, "-m", "polyglot_jax", "train", "--config", config_file,
                           "--workdir", str(workdir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last == ("error: JAX_PROCESS_ID=2 does not fit JAX_NUM_PROCESSES=2: ids run 0..1, one per process; "
                  "check the launch command of every host")
  assert not workdir.exists()  # Stopped before anything was written.


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2"},
     "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES set but JAX_PROCESS_ID not: a multi-host run sets all three"),
    ({"JAX_PROCESS_ID": "0"},
     "JAX_PROCESS_ID set but JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES not"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "JAX_COORDINATOR_ADDRESS='127.0.0.1' is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two' and JAX_PROCESS_ID='0' must be whole numbers"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"},
     "JAX_PROCESS_ID=-1 does not fit JAX_NUM_PROCESSES=2"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES=0 must be at least 1"),
    ({"JAX_INITIALIZATION_TIMEOUT": "soon"},
     "JAX_INITIALIZATION_TIMEOUT='soon' must be a positive whole number of seconds"),
])
def test_bad_multihost_environment_is_one_line(monkeypatch, env, message):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_INITIALIZATION_TIMEOUT"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(trainer.TrainingError) as info:
    trainer.maybe_initialize_distributed()
  assert str(info.value).startswith(message) and "\n" not in str(info.value)
  assert not _distributed_is_initialized()


def test_missing_coordinator_is_an_error_not_a_hang(monkeypatch):
  port = free_port()  # Nobody listens there: process 0 never started.
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", f"127.0.0.1:{port}")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  monkeypatch.setenv("JAX_INITIALIZATION_TIMEOUT", "1")
  t = time.monotonic()
  with pytest.raises(trainer.TrainingError, match=rf"process 1 of 2 could not reach process 0 at "
                     rf"JAX_COORDINATOR_ADDRESS=127.0.0.1:{port} within 1 s \(.*\); start the same command"):
    trainer.maybe_initialize_distributed()
  assert time.monotonic() - t < 10
  assert not _distributed_is_initialized()


def test_single_process_environment_is_left_alone(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  trainer.maybe_initialize_distributed()
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
  monkeypatch.setenv("JAX_PROCESS_ID", "0")
  trainer.maybe_initialize_distributed()  # One process needs no coordinator.
  assert not _distributed_is_initialized()


def _distributed_is_initialized() -> bool:
  import jax
  return jax.distributed.is_initialized()
