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

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import MiB, interleave, step_variant, write_json  # noqa: E402
from polyglot_jax.models.chunked_ce import resolve_chunk_size  # noqa: E402
# --quick: a model small enough to compile and step in seconds on 2 cores.
QUICK = {"model.vocab_size": 8000, "model.d_model": 64, "model.num_layers": 1, "model.num_heads": 2,
         "model.num_kv_heads": 2, "model.mlp_dim": 128, "data.seq_len": 128, "data.global_batch_size": 2}


def variant(base, overrides, chunk):
  v = step_variant(base, {**overrides, "model.ce_chunk_size": chunk})
  config, model = v["config"], v["setup"].model_cfg
  d = config.data
  micro_tokens = d.global_batch_size // config.optimizer.grad_accum_steps * d.seq_len
  v["info"].update(ce_chunk_size=chunk, logits_f32_mib=micro_tokens * model.vocab_size * 4 / MiB,
                   resolved_chunk_tokens=resolve_chunk_size(micro_tokens, model.vocab_size, chunk,
                                                            model.ce_chunk_threshold_bytes))
  return v


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
  rounds = interleave(variants, args.rounds, args.steps)
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
