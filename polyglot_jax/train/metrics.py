"""Metric writers (TensorBoard events + metrics.jsonl), host-side metric reduction, MFU peaks, progress line."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from polyglot_jax import quiet

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
    with open(self.path, "a") as f:
      for step in sorted(self._pending):
        f.write(json.dumps(self._pending[step]) + "\n")
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
  writes ``eval_metrics.jsonl`` and ``tensorboard/eval``.

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
      metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard", kind)),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl" if kind == "train" else f"{kind}_metrics.jsonl")),
  ])


def _keep_tensorflow_off_accelerators() -> None:
  """TensorFlow (behind clu's TensorBoard writer) must not claim GPU/TPU memory JAX needs."""
  with quiet.tensorflow_logs():
    import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):  # Already initialised, or no such device type.
    pass


def _py(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    return v.item()
  return v


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
