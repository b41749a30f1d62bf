"""The host loop: metrics fetched one log period late, batches made in a prefetch thread, gs://-style workdirs.

The lagged metrics are checked against the values an immediate per-step
fetch gives (the loop's old behaviour), computed on the fly in the same run.
The prefetcher is checked on every iterator kind the backends make (order,
the state of the batches taken rather than made, resume from it, errors).
Workdir URLs are exercised with TensorFlow's in-memory ``ram://`` file system,
the offline stand-in for a bucket that ``tf.io.gfile`` offers: config.json,
metrics, TensorBoard events and eval files of a stopped and resumed run live
there. Orbax cannot write ``ram://`` (its arrays go through tensorstore, which
knows local files and gs:// only), so those runs keep their checkpoints in a
local directory, and ``Checkpointer`` refuses a ``ram://`` workdir with a
one-line error.
"""

import json
import os
import re
import threading
import time
import traceback
import uuid

import jax
import numpy as np
import pytest

from polyglot_jax import configs as config_lib
from polyglot_jax.data import stream as stream_lib
from polyglot_jax.data.backends import InterleavedBatches, make_data
from polyglot_jax.data.mixed_batches import ROW_LANG, PackedBatches
from polyglot_jax.errors import CheckpointError, DataError
from polyglot_jax.train import metrics as metrics_lib
from polyglot_jax.train import paths, trainer
from polyglot_jax.train.checkpoint import Checkpointer
from polyglot_jax.train.prefetch import Prefetcher, snapshotter

# ---------------------------------------------------------------- lagged metrics


class _Sum:
  """A toy accumulator: the steps and values it absorbed."""

  def __init__(self):
    self.steps, self.total = [], 0.0

  def absorb(self, step, m):
    if not np.isfinite(m["x"]):
      raise ValueError(f"step {step}: x is not finite")
    self.steps.append(step)
    self.total += float(m["x"])


def _lagged(lag, log_every, n, values):
  rows = []
  log = metrics_lib.LaggedLog(_Sum, lambda w, s, m: w.absorb(s, m),
                              lambda step, w: rows.append((step, list(w.steps), w.total)), lag=lag)
  held = []
  for step in range(1, n + 1):
    log.add(step, {"x": jax.numpy.asarray(values[step - 1])})
    if step % log_every == 0 or step == n:
      log.close(step)
      held.append(log.held_steps)
  log.flush()
  return rows, held


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_lagged_log_rows_equal_immediate_fetches(lag):
  values = np.random.default_rng(0).normal(size=11).astype(np.float32)
  immediate, window = [], _Sum()
  for step in range(1, 12):  # The old loop: fetch every step, write at each log step.
    window.absorb(step, {"x": values[step - 1]})
    if step % 3 == 0 or step == 11:
      immediate.append((step, list(window.steps), window.total))
      window = _Sum()
  rows, held = _lagged(lag, 3, 11, values)
  assert rows == immediate
  # Right after each log step, the last `lag` periods are still on the device.
  sizes = [3, 3, 3, 2]
  assert held == [sum(sizes[max(i + 1 - lag, 0):i + 1]) for i in range(4)]


def test_lagged_log_times_each_row_by_its_own_period():
  # Rows are written late (the lag) or early (the flush before a checkpoint), but each row's
  # emitting_closed_at is the time its own period closed, so a rate over consecutive rows covers
  # exactly that period's steps. (Timing rows by when they are written gave a checkpoint step's row
  # ~0 s and the next row two periods' time.)
  now = {"t": 0.0}
  rows = []
  log = metrics_lib.LaggedLog(_Sum, lambda w, s, m: w.absorb(s, m),
                              lambda step, w: rows.append((step, log.emitting_closed_at, now["t"])),
                              lag=1, clock=lambda: now["t"])
  for step in range(1, 9):
    now["t"] += 2.0  # Every step takes 2 s.
    log.add(step, {"x": np.float32(step)})
    if step % 2 == 0:
      log.close(step)
      if step == 4:
        now["t"] += 30.0  # A checkpoint after step 4: flush writes row 4 right away, then saves.
        log.flush()
  log.flush()
  closed = [(step, at) for step, at, _ in rows]
  assert closed == [(2, 4.0), (4, 8.0), (6, 42.0), (8, 46.0)]
  assert [written for *_, written in rows] == [8.0, 38.0, 46.0, 46.0]  # When the rows were written.
  assert log.emitting_closed_at is None


def test_lagged_log_flush_fetches_the_open_period_without_writing_it():
  rows = []
  log = metrics_lib.LaggedLog(_Sum, lambda w, s, m: w.absorb(s, m),
                              lambda step, w: rows.append((step, list(w.steps))), lag=1)
  for step in (1, 2):
    log.add(step, {"x": np.float32(step)})
  log.close(2)
  log.add(3, {"x": np.float32(3)})
  log.flush()  # Before a checkpoint: the closed period is written, step 3 fetched but kept for its row.
  assert rows == [(2, [1, 2])] and log.held_steps == 0
  log.add(4, {"x": np.float32(4)})
  log.close(4)
  log.flush()
  assert rows == [(2, [1, 2]), (4, [3, 4])]
  log.add(5, {"x": np.float32(np.nan)})
  with pytest.raises(ValueError, match="step 5: x is not finite"):
    log.flush()  # A check in absorb (the non-finite guard) runs before the checkpoint.


# ---------------------------------------------------------------- prefetching


def _doc_stream(position):
  """Documents of 3..40 tokens in 2 languages, from document ``position`` on (endless)."""
  i = position
  while True:
    rng = np.random.default_rng(i)
    yield rng.integers(3, 100, size=int(rng.integers(3, 40))), i % 2
    i += 1


def _stream(packing="greedy"):
  return stream_lib.StreamBatches(_doc_stream, seq_len=16, local_batch_size=3, bos_id=1, eos_id=2, pad_id=0,
                                  fingerprint={"test": 1}, process_index=0, process_count=1, packing=packing,
                                  open_rows=4)


def _packed():
  rng = np.random.default_rng(0)
  rows = {"inputs": rng.integers(0, 50, size=(40, 8)), ROW_LANG: np.arange(40) % 3}
  return PackedBatches(rows, [0.5, 0.3, 0.2], global_batch_size=4, seed=3)


ITERATORS = {
    "packed": _packed,
    "stream_greedy": _stream,
    "stream_best_fit": lambda: _stream("best_fit"),
    "interleaved": lambda: InterleavedBatches({"a/": _stream("best_fit"), "b/": _packed()}),
}


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _wait_full(prefetcher):
  """Waits until the producer has filled the queue (it is then ahead of the batches taken)."""
  deadline = time.time() + 10
  while not prefetcher._queue.full():
    assert time.time() < deadline, "the producer never filled the queue"
    time.sleep(0.005)


@pytest.mark.parametrize("kind", list(ITERATORS))
def test_prefetch_keeps_order_and_the_state_of_the_batches_taken(kind):
  make = ITERATORS[kind]
  reference, states = make(), []
  batches = []
  for _ in range(9):
    batches.append(next(reference))
    states.append(json.loads(json.dumps(reference.get_state())))
  assert snapshotter(make()) is not None
  with Prefetcher(make(), depth=2) as prefetcher:
    assert prefetcher.threaded
    for k in range(5):
      assert _equal(next(prefetcher), batches[k])
    _wait_full(prefetcher)  # The producer has made batches 6..8; the state is still after batch 5.
    assert json.loads(json.dumps(prefetcher.get_state())) == states[4]
    saved = prefetcher.get_state()
  resumed = make()
  resumed.set_state(json.loads(json.dumps(saved)))  # Through JSON, as in a checkpoint.
  for k in range(5, 9):
    assert _equal(next(resumed), batches[k]), k
  # A restored iterator handed to a new prefetcher starts where it was set.
  again = make()
  again.set_state(json.loads(json.dumps(saved)))
  with Prefetcher(again, depth=2) as prefetcher:
    assert json.loads(json.dumps(prefetcher.get_state())) == states[4]
    assert _equal(next(prefetcher), batches[5])


class _Failing:
  """Batches 0, 1, 2, then a DataError (or the end of the data); snapshots through the iterator protocol."""

  def __init__(self, fail_at=3, end=False):
    self.i, self.fail_at, self.end = 0, fail_at, end
    self.thread = None

  def __iter__(self):
    return self

  def __next__(self):
    self.thread = threading.current_thread()
    if self.i == self.fail_at:
      if self.end:
        raise StopIteration
      raise DataError("data/shard-00003.jsonl: line 7 is not JSON; fix or drop the line")
    self.i += 1
    return {"x": np.full(2, self.i - 1)}

  def get_state(self):
    return {"i": self.i}

  def state_snapshot(self):
    state = self.get_state()
    return lambda: state


def test_prefetch_errors_surface_in_the_main_thread_with_the_original_message():
  source = _Failing()
  prefetcher = Prefetcher(source, depth=2)
  assert [int(next(prefetcher)["x"][0]) for _ in range(3)] == [0, 1, 2]
  assert source.thread is not threading.main_thread()  # Batches were made by the producer.
  with pytest.raises(DataError) as e:
    next(prefetcher)
  assert str(e.value) == "data/shard-00003.jsonl: line 7 is not JSON; fix or drop the line"  # The CLI's one line.
  assert any("prefetch thread" in note for note in e.value.__notes__)  # Shown with a traceback only.
  frames = [frame.name for frame in traceback.extract_tb(e.value.__traceback__)]
  assert frames[-2:] == ["_produce", "__next__"]  # The producer's frames, down to the failing iterator.
  with pytest.raises(DataError):  # Every later call too: the producer is gone.
    next(prefetcher)
  assert prefetcher.get_state() == {"i": 3}
  prefetcher.close()
  assert not prefetcher._thread.is_alive()
  # The end of the data ends the iteration in the main thread.
  assert [int(b["x"][0]) for b in Prefetcher(_Failing(end=True), depth=2)] == [0, 1, 2]


def test_prefetch_close_stops_a_waiting_producer_and_unknown_iterators_run_inline():
  prefetcher = Prefetcher(_Failing(fail_at=10 ** 9), depth=2)
  next(prefetcher)
  _wait_full(prefetcher)  # The producer is blocked on the full queue.
  prefetcher.close()
  assert not prefetcher._thread.is_alive()
  with pytest.raises(RuntimeError, match="closed"):
    next(prefetcher)

  class Plain:  # No snapshot protocol: made on demand in the main thread.
    def __init__(self):
      self.i = 0

    def __next__(self):
      self.i += 1
      return self.i

    def get_state(self):
      return {"i": self.i}

  inline = Prefetcher(Plain(), depth=2)
  assert not inline.threaded and next(inline) == 1 and inline.get_state() == {"i": 1}


# ---------------------------------------------------------------- paths and ram:// workdirs


def _ram(name):
  return f"ram://polyglot_test_{uuid.uuid4().hex[:8]}/{name}"


def test_paths_local_and_url(tmp_path):
  assert paths.scheme("gs://b/run") == "gs" and paths.scheme("/tmp/x") == "" and paths.scheme("file:///tmp") == ""
  assert paths.absolute("gs://b/run/") == "gs://b/run" and paths.join("gs://b/run", "a", "b") == "gs://b/run/a/b"
  assert paths.absolute("rel") == os.path.abspath("rel")
  assert paths.local_mirror("gs://b/run") == paths.local_mirror("gs://b/run/")
  assert paths.local_mirror("gs://b/run") != paths.local_mirror("gs://b/run2")
  url = _ram("tree")
  src = tmp_path / "src"
  (src / "sub").mkdir(parents=True)
  (src / "a.txt").write_text("ä\n")
  (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
  assert paths.copy_tree(str(src), url) == 2
  assert paths.listdir(url) == ["a.txt", "sub"] and paths.isdir(paths.join(url, "sub"))
  assert paths.read_text(paths.join(url, "a.txt")) == "ä\n"
  back = tmp_path / "back"
  assert paths.copy_tree(url, str(back)) == 2
  assert (back / "sub" / "b.bin").read_bytes() == b"\x00\x01"
  paths.rename(paths.join(url, "sub"), paths.join(url, "moved"))
  assert paths.listdir(url) == ["a.txt", "moved"]


def test_checkpointer_refuses_a_url_orbax_cannot_write():
  with pytest.raises(CheckpointError, match=r"^--workdir ram://\S+: orbax checkpoints are written to local paths "
                                            r"or gs:// only; use a gs:// or local workdir$"):
    Checkpointer(_ram("run"), 2, 3, False)


def test_demo_corpus_is_kept_in_a_url_workdir_and_copied_to_each_host(make_config, monkeypatch):
  from polyglot_jax.data import in_memory
  built = []

  def fake_prepare(config, workdir):  # Stands in for the corpus build (process 0 builds what is missing).
    train_path, eval_path, spm = in_memory.demo_paths(config, workdir)
    os.makedirs(os.path.dirname(train_path), exist_ok=True)
    for path in (train_path, eval_path, spm + ".model", spm + ".vocab"):
      if not os.path.exists(path):
        built.append(os.path.basename(path))
        with open(path, "w") as f:
          f.write(os.path.basename(path))

  monkeypatch.setattr(in_memory, "prepare_demo", fake_prepare)
  config = make_config(data__source="demo")
  url = _ram("run")
  local = trainer._data_workdir(config, url)
  assert local == paths.local_mirror(url) and not paths.is_remote(local)
  assert sorted(built) == ["eval.jsonl", "spm.model", "spm.vocab", "train.jsonl"]
  assert paths.listdir(paths.join(url, "demo_data")) == ["eval.jsonl", "spm.model", "spm.vocab", "train.jsonl"]
  # A new host (empty local mirror) gets the stored corpus; nothing is built again.
  import shutil
  shutil.rmtree(local)
  built.clear()
  assert trainer._data_workdir(config, url) == local and built == []
  assert open(os.path.join(local, "demo_data", "spm.model")).read() == "spm.model"


# ---------------------------------------------------------------- end to end


STEPS, STOP, LOG_EVERY = 6, 5, 2
TIMING = {"tokens_per_sec", "real_tokens_per_sec", "steps_per_sec", "mfu", "mfu_real_tokens"}


class _SpyLog(metrics_lib.LaggedLog):
  """The trainer's LaggedLog, plus the old immediate per-step fetch into a second window (the reference)."""

  runs: list = []

  def __init__(self, new_window, absorb, emit, lag):
    self.reference, self.emitted, self.held = {}, {}, {}
    self._eager, self._absorb_eager, self._new = new_window(), absorb, new_window

    def emit_spy(step, window):
      self.emitted[step] = _window_values(window)
      emit(step, window)

    super().__init__(new_window, absorb, emit_spy, lag)
    _SpyLog.runs.append(self)

  def add(self, step, device_metrics):
    super().add(step, device_metrics)
    self._absorb_eager(self._eager, step, jax.device_get(device_metrics))

  def close(self, log_step):
    self.reference[log_step] = _window_values(self._eager)
    self._eager = self._new()
    super().close(log_step)
    self.held[log_step] = self.held_steps


def _window_values(window):
  return {**window.summary(), "real_tokens": window.real_tokens, "token_slots": window.token_slots}


class _SpyPrefetcher(Prefetcher):
  """Records the batches taken, and makes the producer run ahead before the state is read."""

  taken: list = []
  states: list = []

  def __next__(self):
    batch = super().__next__()
    _SpyPrefetcher.taken.append(batch)
    return batch

  def get_state(self):
    if self.threaded and not self._closed:
      _wait_full(self)
    state = super().get_state()
    _SpyPrefetcher.states.append((len(_SpyPrefetcher.taken), self.iterator.step, state["step"]))
    return state


@pytest.mark.slow
def test_stop_and_resume_in_a_ram_workdir(make_config, tmp_path, monkeypatch, capsys):
  local_checkpoints = str(tmp_path / "ckpt")

  class LocalCheckpointer(Checkpointer):  # Orbax cannot write ram://: the checkpoints stay local.
    def __init__(self, workdir, *args):
      assert workdir.startswith("ram://")
      super().__init__(local_checkpoints, *args)

  monkeypatch.setattr(trainer, "Checkpointer", LocalCheckpointer)
  monkeypatch.setattr(metrics_lib, "LaggedLog", _SpyLog)
  monkeypatch.setattr(trainer, "Prefetcher", _SpyPrefetcher)
  _SpyLog.runs, _SpyPrefetcher.taken, _SpyPrefetcher.states = [], [], []
  config = make_config(train__num_steps=STEPS, train__log_every_steps=LOG_EVERY, checkpoint__every_steps=4,
                       data__eval_max_rows=1, train__stop_after_steps=STOP)
  workdir = _ram("run")

  first = trainer.train_and_evaluate(config, workdir)
  assert first["stopped"] == "stop_after_steps" and first["step"] == STOP
  config.unlock()
  config.train.stop_after_steps = 0
  second = trainer.train_and_evaluate(config, workdir)
  assert second["step"] == STEPS
  printed = capsys.readouterr().out

  # Lagged metrics: every written row is what the immediate fetch gave, at the same steps.
  for log in _SpyLog.runs:
    assert log.emitted == log.reference
  assert sorted(_SpyLog.runs[0].emitted) == [2, 4] and sorted(_SpyLog.runs[1].emitted) == [6]
  assert _SpyLog.runs[0].held[2] == 2  # Step 1-2's metrics were still on the device after step 2.
  rows = [json.loads(line) for line in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()]
  assert [r["step"] for r in rows] == [2, 4, 6]
  reference = {**_SpyLog.runs[0].reference, **_SpyLog.runs[1].reference}
  for row in rows:
    for key, value in reference[row["step"]].items():
      if key in row:
        assert row[key] == value, (row["step"], key)
  assert set(row) >= TIMING | {"learning_rate", "loss", "grad_norm", "skipped_steps"}
  losses = dict(re.findall(r"step (\d+)/6 \| loss ([0-9.]+)", printed))
  assert losses == {str(s): f"{reference[s]['loss']:.4f}" for s in (2, 4, 6)}

  # Prefetching: the producer was ahead, the checkpoints hold the state of the batches trained on.
  taken, made, saved = _SpyPrefetcher.states[0]
  assert (taken, saved) == (4, 4) and made > taken
  assert [(t, s) for t, _, s in _SpyPrefetcher.states] == [(4, 4), (5, 5), (6, 6)]
  fresh = make_data(config, str(tmp_path / "data")).train
  for k, batch in enumerate(_SpyPrefetcher.taken):  # Run 1's five batches, then run 2's one: the straight order.
    assert _equal(batch, next(fresh)), k

  # The workdir files are in ram://, and nothing was written locally in their place.
  assert paths.read_text(paths.join(workdir, "config.json")) == config_lib.to_json(config)
  names = set(paths.listdir(workdir))
  assert {"config.json", "metrics.jsonl", "eval_metrics.jsonl", "eval_before.json", "eval_results.json",
          "tensorboard"} <= names and "checkpoints" not in names
  results = json.loads(paths.read_text(paths.join(workdir, "eval_results.json")))
  assert results["step"] == STEPS and results["before"] == first_before(workdir) == second["eval_before"]
  assert results["after"] == second["eval_after"]
  events = paths.listdir(paths.join(workdir, "tensorboard", "train"))
  assert events and all(name.startswith("events.out.tfevents") for name in events)
  assert not os.path.exists("ram:")  # A URL taken for a local path would have made this directory.
  assert sorted(int(s) for s in os.listdir(os.path.join(local_checkpoints, "checkpoints")) if s.isdigit()) == [4, 5, 6]


def first_before(workdir):
  return json.loads(paths.read_text(paths.join(workdir, "eval_before.json")))
