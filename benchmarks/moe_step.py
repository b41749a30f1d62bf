"""MoE vs dense train step at the same active parameters, both dispatch modes, interleaved in one run.

    python benchmarks/moe_step.py [--config configs/bench.py] [--experts 8] [--top_k 2] [--rounds 3]
        [--steps 5] [--out benchmarks/results/moe_step.json]
    python benchmarks/moe_step.py --quick   # a tiny model, one round: checks the script runs

Three real lm train steps (the code `polyglot-jax train` runs) on random
tokens, from the same config:
- ``dense``: every FFN a SwiGLU of width ``top_k · F``;
- ``dropless`` and ``capacity``: every FFN ``--experts`` SwiGLU experts of
  width F with top-``k`` routing (``model.moe_dispatch``), F = the config's
  ``mlp_dim`` // top_k.
A token therefore runs the same FFN matmul FLOPs in all three (plus the
router's d·N). The ratio is the median over rounds of each round's MoE/dense
step time; memory is XLA's account of the compiled step. The issue's target
is ≤ 1.3× on CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import QUICK, interleave, step_variant, write_json  # noqa: E402
from polyglot_jax import configs as config_lib  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py")
  parser.add_argument("--experts", type=int, default=8)
  parser.add_argument("--top_k", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="tiny model, one round of 2 steps")
  parser.add_argument("--out", default="benchmarks/results/moe_step.json")
  args = parser.parse_args()
  base = dict(QUICK) if args.quick else {}
  if args.quick:
    args.rounds, args.steps = 1, 2
    if args.out == parser.get_default("out"):
      args.out = "benchmarks/results/moe_step_quick.json"
  mlp_dim = base.get("model.mlp_dim") or config_lib.load_config(args.config, []).model.mlp_dim
  expert_dim = mlp_dim // args.top_k
  moe = {"model.num_experts": args.experts, "model.moe_top_k": args.top_k, "model.mlp_dim": expert_dim}
  arms = {"dense": {**base, "model.mlp_dim": expert_dim * args.top_k},
          "dropless": {**base, **moe, "model.moe_dispatch": "dropless"},
          "capacity": {**base, **moe, "model.moe_dispatch": "capacity"}}
  variants = {}
  for name, overrides in arms.items():
    print(f"compiling {name} ...", flush=True)
    variants[name] = step_variant(args.config, overrides)
  rounds = interleave(variants, args.rounds, args.steps)
  median = {n: statistics.median(row[n] for row in rounds) for n in variants}
  ratio = {n: statistics.median(row[n] / row["dense"] for row in rounds) for n in variants}
  print(f"\n{'step':<10} {'params M':>9} {'temp MiB':>9} {'live MiB':>9} {'compile s':>10} {'step ms':>8} "
        f"{'tokens/s':>9} {'vs dense':>9}")
  for n, v in variants.items():
    i = v["info"]
    print(f"{n:<10} {i['params_M']:>9.1f} {i['temp_mib']:>9.0f} {i['live_mib']:>9.0f} {i['compile_s']:>10.1f} "
          f"{median[n] * 1000:>8.0f} {v['tokens'] / median[n]:>9.0f} {ratio[n]:>9.3f}")
  write_json({"command": "python benchmarks/moe_step.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "devices": [str(d) for d in jax.devices()], "arms": arms,
              "variants": {n: v["info"] for n, v in variants.items()}, "rounds_s": rounds, "median_s": median,
              "tokens_per_s": {n: variants[n]["tokens"] / median[n] for n in variants},
              "ratio_vs_dense": ratio}, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
