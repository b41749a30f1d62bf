"""Train-step throughput and MFU on the current devices.

    python benchmarks/train_step.py --config configs/bench.py [--steps 10] [--config.model.remat_policy=dots]

Builds the real train step (same code as ``polyglot-jax train``) on random
tokens, reports the first-step compile time, the median step time over
``--steps`` steps after one warm-up, tokens/s, and MFU. On CPU the MFU peak is
the float32 matmul ceiling measured in this process (a jit'd 4096×4096
matmul), sampled before the steps and again after every step, so both are
measured under the same (shared, drifting) machine conditions. ``mfu`` is
the median step's FLOP/s over the median ceiling; ``mfu_best`` is the
fastest step over the best ceiling sample. Every sample is in the JSON.
On GPU/TPU the peak is the datasheet bf16 peak (or --peak_flops).
Prints a table and writes JSON (default benchmarks/results/train_step.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_json  # noqa: E402
from polyglot_jax import configs as config_lib  # noqa: E402
from polyglot_jax.cli import _split_config_overrides  # noqa: E402
from polyglot_jax.models.flops import train_flops_per_token  # noqa: E402
from polyglot_jax.train import metrics as metrics_lib  # noqa: E402
from polyglot_jax.train.trainer import abstract_batch, build, global_batch  # noqa: E402


def main(argv=None) -> dict:
  rest, overrides = _split_config_overrides(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--peak_flops", type=float, default=0.0, help="total peak FLOP/s; 0: measure/look up")
  parser.add_argument("--out", default="benchmarks/results/train_step.json")
  args = parser.parse_args(rest)
  config = config_lib.load_config(args.config, overrides)

  measure_ceiling = not args.peak_flops and not config.metrics.peak_flops_per_device \
      and jax.devices()[0].platform == "cpu"
  if measure_ceiling:
    ceiling = metrics_lib.MatmulCeiling()
    peak, peak_source = ceiling.measure(repeats=5), "measured float32 matmul ceiling"
  elif args.peak_flops:
    peak, peak_source = args.peak_flops, "given"
  else:
    peak, peak_source = metrics_lib.peak_flops(config.metrics.peak_flops_per_device)
  ceilings = [peak] if measure_ceiling else []
  setup = build(config, num_languages=1)
  d = config.data
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, config.model.vocab_size, (d.global_batch_size, d.seq_len + 1)).astype(np.int32)
  local = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "loss_weights": np.ones((d.global_batch_size, d.seq_len), np.int32),
           "segment_ids": np.ones((d.global_batch_size, d.seq_len), np.int32),
           "positions": np.tile(np.arange(d.seq_len, dtype=np.int32), (d.global_batch_size, 1)),
           "lang_ids": np.zeros((d.global_batch_size, d.seq_len), np.int32)}
  batch = global_batch(setup, local)

  t = time.perf_counter()
  compiled = setup.train_step.lower(setup.abstract_state, abstract_batch(setup)).compile()
  compile_s = time.perf_counter() - t
  state = setup.init_fn()
  state, m = compiled(state, batch)  # Warm-up.
  jax.block_until_ready(m)
  tokens_per_step = d.global_batch_size * d.seq_len
  flops_per_token = train_flops_per_token(setup.model_cfg, d.seq_len)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
    if measure_ceiling:
      ceilings.append(ceiling.measure(repeats=3))
  step_s = float(np.median(times))
  tokens_per_s = tokens_per_step / step_s
  step_flops = tokens_per_step * flops_per_token
  if measure_ceiling:
    peak = float(np.median(ceilings))
    mfu_best = step_flops / float(np.min(times)) / float(np.max(ceilings))
  else:
    mfu_best = step_flops / float(np.min(times)) / peak if peak else float("nan")
  mfu = tokens_per_s * flops_per_token / peak if peak else float("nan")
  result = {
      "config": args.config, "overrides": overrides, "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "machine": platform.machine(),
      "jax": jax.__version__, "params_M": sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
      "compile_s": compile_s, "median_step_s": step_s, "min_step_s": float(np.min(times)),
      "tokens_per_s": tokens_per_s, "train_flops_per_token": flops_per_token,
      "achieved_flops_per_s": tokens_per_s * flops_per_token, "peak_flops_per_s": peak,
      "peak_source": peak_source, "mfu": mfu, "mfu_best": mfu_best, "ceilings_flops_per_s": ceilings, "step_times_s": times,
      "loss": float(m["loss"]), "steps_timed": args.steps,
  }
  print(f"{'metric':<24}{'value':>20}")
  for key in ("params_M", "compile_s", "median_step_s", "tokens_per_s", "achieved_flops_per_s",
              "peak_flops_per_s", "mfu", "mfu_best"):
    print(f"{key:<24}{result[key]:>20.4g}")
  print(f"peak: {peak_source}")
  write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
