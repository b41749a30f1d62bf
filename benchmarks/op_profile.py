"""Time per XLA op in the real train step, from a jax.profiler trace, without TensorBoard's profile plugin.

    python benchmarks/op_profile.py [--config configs/bench.py] [--steps 1] [--top 25] [--config.a.b=v ...]
    python benchmarks/op_profile.py --trace DIR   # summarise a trace already written under DIR
    python benchmarks/op_profile.py --quick       # a tiny model: checks the script runs

Traces ``--steps`` steps of the compiled step (after its warm-up) with
``jax.profiler.trace(..., create_perfetto_trace=True)``, reads the Perfetto
JSON it writes (``*.trace.json.gz``) and prints two tables: time by op class
(an op's name without its ``.N`` suffix: ``ynn_fusion`` and ``dot`` are the
CPU backend's matmuls, ``*_fusion`` the elementwise/reduce fusions, ``copy``
and ``transpose`` layout changes, ``while`` the cross-entropy chunk loop) and
the top ops with their HLO shapes. Writes JSON.

How to read it: each op's time is summed over the threads that ran it (op
time per step exceeds the wall time on 2 cores), and tracing can slow the
step, small ops more than large ones (a peer-shape step took 6.66 s and
10.5 s traced in two runs, ~6.5 s untraced). Use the shares to find what to
work on, and time any change with an interleaved A/B (train_step.py,
step_breakdown.py), never from the trace.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import QUICK, parse_override, step_variant, write_json  # noqa: E402
from polyglot_jax.cli import _split_config_overrides  # noqa: E402
from polyglot_jax.plan import hlo  # noqa: E402

# Trace events that are not XLA ops: the runtime's own spans and Python frames.
_NOT_OPS = re.compile(r"^(\$|end: )|Thunk|Slinky|PjRt|Pjit|MutexLock|ThreadpoolListener|Handle input|Wait for|"
                      r"ParseArguments|AllocateOutput|PythonRefManager|CreateOutputs")


def op_times(trace_dir: str) -> dict[str, tuple[float, int]]:
  """{op name: (seconds summed over threads, events)} from the Perfetto trace under ``trace_dir``.

  Args:
    trace_dir: a folder holding ``plugins/profile/<run>/*.trace.json.gz`` (``jax.profiler.trace`` with
      ``create_perfetto_trace=True``); the newest file is read.

  Returns:
    Per-op totals of the trace's complete events ("ph": "X"), runtime spans left out.
  """
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
  if not files:
    raise SystemExit(f"--trace {trace_dir}: no *.trace.json.gz under it; trace with "
                     "jax.profiler.trace(dir, create_perfetto_trace=True)")
  with gzip.open(files[-1]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    if e.get("ph") == "X" and not _NOT_OPS.search(e.get("name", "")):
      totals[e["name"]][0] += e.get("dur", 0) / 1e6
      totals[e["name"]][1] += 1
  return {name: (t, n) for name, (t, n) in totals.items()}


def by_class(ops: dict[str, tuple[float, int]]) -> dict[str, float]:
  """Seconds per op class: the op name without its trailing ``.N``."""
  out: dict[str, float] = collections.Counter()
  for name, (t, _) in ops.items():
    out[re.sub(r"\.\d+$", "", name)] += t
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py")
  parser.add_argument("--steps", type=int, default=1)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--trace", default="", help="summarise this trace folder instead of tracing")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default="benchmarks/results/op_profile.json")
  rest, overrides = _split_config_overrides(sys.argv[1:])
  args = parser.parse_args(rest)
  shapes, wall = {}, None
  if args.trace:
    trace_dir = args.trace
  else:
    import jax

    values = {"model.mlp_dim": 2048, **(QUICK if args.quick else {}),
              **{k: parse_override(val) for k, val in (o.split("=", 1) for o in overrides)}}
    print("compiling the step ...", flush=True)
    v = step_variant(args.config, values)
    trace_dir = tempfile.mkdtemp(prefix="op_profile_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      t = time.perf_counter()
      for _ in range(args.steps):
        v["state"], m = v["compiled"](v["state"], v["batch"])
      jax.block_until_ready(m)
      wall = (time.perf_counter() - t) / args.steps
    comps, _ = hlo.parse_computations(v["compiled"].as_text())
    shapes = {name: shape for comp in comps.values() for name, shape in comp.shapes.items()}
  ops = op_times(trace_dir)
  steps = 1 if args.trace else args.steps
  total = sum(t for t, _ in ops.values())
  classes = by_class(ops)
  print(f"\ntrace {trace_dir}: {total / steps:.3f} s of op time per step (summed over threads)"
        + (f", {wall:.3f} s wall per traced step" if wall else ""))
  print(f"\n{'op class':<36} {'s/step':>8} {'share':>7}")
  for name, t in list(classes.items())[:args.top]:
    print(f"{name:<36} {t / steps:>8.3f} {100 * t / total:>6.1f}%")
  print(f"\n{'op':<36} {'s/step':>8} {'share':>7}  shape")
  top = sorted(ops.items(), key=lambda kv: -kv[1][0])[:args.top]
  for name, (t, _) in top:
    print(f"{name:<36} {t / steps:>8.3f} {100 * t / total:>6.1f}%  {shapes.get(name, '')}")
  out = args.out
  if args.quick and out == parser.get_default("out"):
    out = "benchmarks/results/op_profile_quick.json"
  write_json({"command": "python benchmarks/op_profile.py " + " ".join(sys.argv[1:]), "trace": trace_dir,
              "wall_s_per_step": wall, "op_s_per_step": total / steps,
              "classes_s_per_step": {k: t / steps for k, t in classes.items()},
              "top_ops": [{"op": n, "s_per_step": t / steps, "shape": shapes.get(n, "")} for n, (t, _) in top]},
             out)
  print("wrote", out)


if __name__ == "__main__":
  main()
