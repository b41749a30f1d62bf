"""Metric writers (TensorBoard + metrics.jsonl), host-side reduction, lagged fetches, MFU peaks, progress line."""

from __future__ import annotations

import collections
import json
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from polyglot_jax import quiet
from polyglot_jax.train import paths

# Dense bf16 peak FLOP/s per device, from the vendors' datasheets.
PEAK_BF16_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


class JsonlWriter:
  """Appends one JSON object per step to ``metrics.jsonl`` (scalars only).

  Implements clu's MetricWriter interface (registered as a virtual subclass
  in ``make_writer``), so it sits in a clu MultiWriter beside TensorBoard.
  ``path`` may be a URL (``gs://``): rows are appended once per ``flush``
  through ``train/paths.py``.
  """

  def __init__(self, path: str):
    self.path = path
    self._pending: dict[int, dict] = {}

  def write_scalars(self, step, scalars):
    row = self._pending.setdefault(int(step), {"step": int(step)})
    row.update({k: _py(v) for k, v in scalars.items()})

  def flush(self):
    if not self._pending:
      return
    text = "".join(json.dumps(self._pending[step]) + "\n" for step in sorted(self._pending))
    with paths.open(self.path, "a") as f:
      f.write(text)
    self._pending.clear()

  def close(self):
    self.flush()

  # The other summary kinds are not part of metrics.jsonl.
  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass


def make_writer(workdir: str, kind: str = "train"):
  """clu MultiWriter: TensorBoard + JSONL on process 0; nothing on the others.

  ``kind`` train writes ``metrics.jsonl`` and ``tensorboard/train``; eval
  writes ``eval_metrics.jsonl`` and ``tensorboard/eval``. ``workdir`` may be a
  ``gs://`` URL: TensorBoard writes there natively, metrics.jsonl through
  ``train/paths.py``.

  clu's writers import TensorFlow, so they are imported here, not at module
  load (benchmarks and tests that write no metrics never load TensorFlow).
  """
  with quiet.tensorflow_logs():  # clu's writers import TensorFlow.
    from clu import metric_writers
  metric_writers.MetricWriter.register(JsonlWriter)
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  _keep_tensorflow_off_accelerators()
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(paths.join(workdir, "tensorboard", kind)),
      JsonlWriter(paths.join(workdir, "metrics.jsonl" if kind == "train" else f"{kind}_metrics.jsonl")),
  ])


def _keep_tensorflow_off_accelerators() -> None:
  """TensorFlow (behind clu's TensorBoard writer) must not claim GPU/TPU memory JAX needs."""
  from polyglot_jax.train import paths
  paths.gfile()


def _py(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    return v.item()
  return v


class _Period:
  """One log period: its accumulator, the (step, device metrics) not fetched yet, and its log step."""

  def __init__(self, window: Any):
    self.window = window
    self.pending: list[tuple[int, Any]] = []
    self.log_step: int | None = None
    self.closed_at: float | None = None


class LaggedLog:
  """Per-step metrics kept as device arrays and fetched to the host once per log period, ``lag`` periods late.

  The train loop ``add``s each step's metrics (jax arrays: nothing waits on
  the device) and ``close``s the period at each log step. A closed period is
  fetched (one ``jax.device_get`` for all its steps), absorbed step by step in
  order and ``emit``ted only once ``lag`` newer periods have closed, so the
  host dispatches up to ``lag`` log periods ahead of what it has read back.
  The rows are those an immediate fetch would give: the same steps, in the
  same order, into the same accumulator; only the time of the fetch changes.
  ``flush`` (before a checkpoint, at the end) emits every closed period and
  fetches the open one's steps too (kept for its row), so every step so far
  has been checked (``absorb`` may raise, e.g. on non-finite updates).

  Args:
    new_window: makes an empty accumulator for a period.
    absorb: ``absorb(window, step, host_metrics)`` adds one step's fetched metrics.
    emit: ``emit(log_step, window)`` writes a period's row. While it runs,
      ``emitting_closed_at`` is the ``clock()`` time at which that period was
      closed: rates timed from it cover the period's own steps, however late
      (a flush before a checkpoint, the lag) its row is written.
    lag: periods held back (0: fetch at the period's own log step).
    clock: the time source of ``emitting_closed_at`` (seconds).
  """

  def __init__(self, new_window: Callable[[], Any], absorb: Callable[[Any, int, Any], None],
               emit: Callable[[int, Any], None], lag: int = 1, clock: Callable[[], float] = time.perf_counter):
    self.new_window, self.absorb, self.emit, self.lag, self.clock = new_window, absorb, emit, lag, clock
    self.emitting_closed_at: float | None = None
    self._open = _Period(new_window())
    self._closed: collections.deque[_Period] = collections.deque()

  @property
  def held_steps(self) -> int:
    """Steps whose metrics are still on the device."""
    return len(self._open.pending) + sum(len(p.pending) for p in self._closed)

  def add(self, step: int, device_metrics: Any) -> None:
    """Keeps one step's metrics in the open period, unfetched.

    Args:
      step: steps done, this one included.
      device_metrics: the train step's metrics (a pytree of jax arrays).
    """
    self._open.pending.append((step, device_metrics))

  def close(self, log_step: int) -> None:
    """Ends the open period; fetches and emits the closed periods beyond the newest ``lag``.

    Args:
      log_step: the step the period's row is written at.
    """
    self._open.log_step = log_step
    self._open.closed_at = self.clock()
    self._closed.append(self._open)
    self._open = _Period(self.new_window())
    while len(self._closed) > self.lag:
      self._emit(self._closed.popleft())

  def flush(self) -> None:
    """Emits every closed period and fetches the open period's steps (its row comes at its own log step)."""
    while self._closed:
      self._emit(self._closed.popleft())
    self._fetch(self._open)

  def _fetch(self, period: _Period) -> None:
    if not period.pending:
      return
    pending, period.pending = period.pending, []
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), host in zip(pending, fetched):
      self.absorb(period.window, step, host)

  def _emit(self, period: _Period) -> None:
    self._fetch(period)
    self.emitting_closed_at = period.closed_at
    try:
      self.emit(period.log_step, period.window)
    finally:
      self.emitting_closed_at = None


class MatmulCeiling:
  """FLOP/s of a jit'd float32 n×n matmul on the default device."""

  def __init__(self, n: int = 4096):
    self.n = n
    self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    self.f = jax.jit(lambda x, y: x @ y)
    self.f(self.a, self.b).block_until_ready()

  def measure(self, repeats: int = 5) -> float:
    """Best FLOP/s over ``repeats`` matmuls (the ceiling, not a typical run)."""
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      self.f(self.a, self.b).block_until_ready()
      times.append(time.perf_counter() - t)
    return 2.0 * self.n ** 3 / float(np.min(times))



def peak_flops(configured_per_device: float) -> tuple[float, str]:
  """Total peak FLOP/s for MFU and where the number came from.

  Configured per-device peaks multiply by the device count. Known
  accelerators use their datasheet bf16 peak. On CPU the peak is measured:
  the float32 matmul ceiling of this process (all fake CPU devices share the
  same cores, so the ceiling is per process, not per device).
  """
  devices = jax.devices()
  if configured_per_device > 0:
    return configured_per_device * len(devices), "configured"
  kind = devices[0].device_kind
  for name, peak in PEAK_BF16_FLOPS.items():
    if kind.startswith(name):
      return peak * len(devices), f"{name} bf16 datasheet"
  if devices[0].platform == "cpu":
    return MatmulCeiling().measure() * jax.process_count(), "measured float32 matmul ceiling"
  return 0.0, f"unknown device '{kind}' (set config.metrics.peak_flops_per_device)"


class Progress:
  """One progress line per log period: step, loss, steps/s, tokens/s, MFU, ETA."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self.t0 = time.perf_counter()
    self.s0 = start_step

  def line(self, step: int, loss: float, steps_per_sec: float, tokens_per_sec: float, mfu: float) -> str:
    remaining = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
    return (f"step {step}/{self.total} | loss {loss:.4f} | {steps_per_sec:.2f} steps/s | "
            f"{tokens_per_sec:,.0f} tokens/s | MFU {mfu:.3f} | ETA {_duration(remaining)}")


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def language_table(languages, before: Mapping[str, float] | None, after: Mapping[str, float]) -> str:
  """Per-language held-out loss and perplexity, before vs after training."""
  lines = [f"{'lang':<6} {'loss before':>12} {'ppl before':>12} {'loss after':>11} {'ppl after':>11}"]
  for lang in languages:
    if lang not in after:
      continue
    b = before.get(lang) if before else None
    b_loss = f"{b:12.4f}" if b is not None else f"{'-':>12}"
    b_ppl = f"{np.exp(b):12.1f}" if b is not None else f"{'-':>12}"
    lines.append(f"{lang:<6} {b_loss} {b_ppl} {after[lang]:11.4f} {np.exp(after[lang]):11.1f}")
  return "\n".join(lines)


class MetricWindow:
  """Host-side reduction of an objective's outputs over steps (or held-out batches), as its metrics declare.

  ``add`` takes one step's (or batch's) outputs; ``summary`` divides sums by
  their normalisers, averages "mean" metrics and keeps the maximum of "max"
  ones, and names per-language metrics by language code. Sums accumulate in
  float64.
  """

  def __init__(self, metrics, languages):
    self.metrics = dict(metrics)
    self.languages = list(languages)
    self.reductions = {}
    for m in self.metrics.values():
      self.reductions[m.key] = m.reduce
      if m.normalizer:
        self.reductions.setdefault(m.normalizer, "sum")
    self.values: dict[str, np.ndarray] = {}
    self.count = 0

  def add(self, outputs) -> None:
    self.count += 1
    for key, op in self.reductions.items():
      value = np.asarray(outputs[key], np.float64)
      if key not in self.values:
        self.values[key] = value.copy()
      elif op == "max":
        self.values[key] = np.maximum(self.values[key], value)
      else:
        self.values[key] = self.values[key] + value

  def summary(self) -> dict[str, float]:
    row: dict[str, float] = {}
    if not self.count:
      return row
    for name, m in self.metrics.items():
      value = self.values[m.key]
      if m.reduce == "mean":
        value = value / self.count
      if m.per_language:
        norm = self.values[m.normalizer] if m.normalizer else np.ones_like(value)
        for i, lang in enumerate(self.languages):
          if norm[i] > 0:
            v = float(value[i] / norm[i])
            row[name.format(lang=lang)] = v
            if m.exp_name:
              row[m.exp_name.format(lang=lang)] = float(np.exp(v))
        continue
      if m.normalizer:
        norm = float(self.values[m.normalizer])
        v = float(value) / norm if norm > 0 else float("nan")
      else:
        v = float(value)
      row[name] = v
      if m.exp_name:
        row[m.exp_name] = float(np.exp(v))
    return row


def per_language(row: dict[str, float], template: str | None, languages) -> dict[str, float]:
  """{lang: row[template.format(lang=lang)]} for the languages present (the before/after table)."""
  if not template:
    return {}
  return {lang: row[template.format(lang=lang)] for lang in languages if template.format(lang=lang) in row}
