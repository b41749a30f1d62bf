"""Train step with chunked cross-entropy on vs off: compiled memory and step time, interleaved in one run.

    python benchmarks/chunked_ce.py [--config configs/bench.py] [--chunk -1] [--rounds 3] [--steps 5]
        [--out benchmarks/results/chunked_ce.json]
    python benchmarks/chunked_ce.py --quick   # a tiny model, one round: checks the script runs

Two real train steps (the code `polyglot-jax train` runs) of the lm objective on
random tokens, the same config except ``model.ce_chunk_size``: ``off`` (0, the
full float32 [tokens, vocab] logits) and ``on`` (``--chunk``; -1 = auto, which
chunks the bench config's 8×512 tokens × 32000 vocab = 500 MiB of logits into
chunks of 512 tokens). Memory is XLA's own account of the compiled step
(``memory_analysis``: temporaries, and arguments + outputs − aliased donated
buffers); step time is the median per round, rounds interleaved, and the
on/off ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_json  # noqa: E402
from polyglot_jax import configs as config_lib  # noqa: E402
from polyglot_jax.models.chunked_ce import resolve_chunk_size  # noqa: E402
from polyglot_jax.train.trainer import abstract_batch, build, global_batch  # noqa: E402

MiB = 2**20
# --quick: a model small enough to compile and step in seconds on 2 cores.
QUICK = {"model.vocab_size": 8000, "model.d_model": 64, "model.num_layers": 1, "model.num_heads": 2,
         "model.num_kv_heads": 2, "model.mlp_dim": 128, "data.seq_len": 128, "data.global_batch_size": 2}


def variant(base, overrides, chunk):
  config = config_lib.load_config(base, [])
  with config.unlocked():
    for key, value in {**overrides, "model.ce_chunk_size": chunk, "objective": "lm",
                       "checkpoint.async_save": False}.items():
      config_lib.set_key(config, key, value, from_string=False)
  setup = build(config, num_languages=1)
  d = config.data
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, config.model.vocab_size, (d.global_batch_size, d.seq_len + 1)).astype(np.int32)
  ones = np.ones((d.global_batch_size, d.seq_len), np.int32)
  local = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": ones, "segment_ids": ones,
           "positions": np.tile(np.arange(d.seq_len, dtype=np.int32), (d.global_batch_size, 1)),
           "lang_ids": 0 * ones}
  batch = global_batch(setup, local)
  t = time.perf_counter()
  compiled = setup.train_step.lower(setup.abstract_state, abstract_batch(setup)).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  state = setup.init_fn()
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  model = setup.model_cfg
  micro_tokens = d.global_batch_size // config.optimizer.grad_accum_steps * d.seq_len
  resolved = resolve_chunk_size(micro_tokens, model.vocab_size, chunk, model.ce_chunk_threshold_bytes)
  info = {"ce_chunk_size": chunk, "resolved_chunk_tokens": resolved, "compile_s": compile_s,
          "temp_mib": mem.temp_size_in_bytes / MiB,
          "live_mib": (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                       - mem.alias_size_in_bytes) / MiB,
          "logits_f32_mib": micro_tokens * model.vocab_size * 4 / MiB}
  return {"compiled": compiled, "state": state, "batch": batch, "info": info,
          "tokens": d.global_batch_size * d.seq_len}


def time_steps(v, steps):
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    v["state"], m = v["compiled"](v["state"], v["batch"])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py")
  parser.add_argument("--chunk", type=int, default=-1, help="config.model.ce_chunk_size of the 'on' variant")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="tiny model, chunks of 64, one round of 2 steps")
  parser.add_argument("--out", default="benchmarks/results/chunked_ce.json")
  args = parser.parse_args()
  overrides, chunk = {}, args.chunk
  if args.quick:
    overrides, chunk, args.rounds, args.steps = QUICK, 64, 1, 2
    if args.out == parser.get_default("out"):
      args.out = "benchmarks/results/chunked_ce_quick.json"
  variants = {"off": variant(args.config, overrides, 0), "on": variant(args.config, overrides, chunk)}
  rounds = []
  for r in range(args.rounds):
    row = {n: time_steps(v, args.steps) for n, v in variants.items()}
    rounds.append(row)
    print(f"round {r + 1}: " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in row.items()), flush=True)
  median = {n: statistics.median(row[n] for row in rounds) for n in variants}
  ratio = statistics.median(row["on"] / row["off"] for row in rounds)
  print(f"\n{'chunked CE':<11} {'chunk':>6} {'logits MiB':>11} {'temp MiB':>9} {'live MiB':>9} "
        f"{'compile s':>10} {'step ms':>8} {'tokens/s':>9}")
  for n, v in variants.items():
    i = v["info"]
    print(f"{n:<11} {i['resolved_chunk_tokens']:>6} {i['logits_f32_mib']:>11.0f} {i['temp_mib']:>9.0f} "
          f"{i['live_mib']:>9.0f} {i['compile_s']:>10.1f} {median[n] * 1000:>8.0f} {v['tokens'] / median[n]:>9.0f}")
  print(f"step time on/off: {ratio:.3f} (median of per-round ratios)")
  write_json({"command": "python benchmarks/chunked_ce.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "devices": [str(d) for d in jax.devices()], "overrides": overrides,
              "variants": {n: v["info"] for n, v in variants.items()}, "rounds_s": rounds, "median_s": median,
              "tokens_per_s": {n: variants[n]["tokens"] / median[n] for n in variants},
              "step_ratio_on_off": ratio}, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
