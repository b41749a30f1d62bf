"""DPO step time per pair vs an SFT step on the same tokens, measured in one run (interleaved rounds).

    python benchmarks/dpo_step.py [--config configs/bench.py] [--pairs 4] [--seq_len 256] [--rounds 3] [--steps 5]
        [--out benchmarks/results/dpo_step.json]

Three real train steps (the code `polyglot-jax train` runs) on random tokens:
- sft: objective sft on 2·pairs rows of seq_len (the chosen and rejected rows as SFT rows);
- dpo_live: objective dpo, reference = a frozen copy of the policy (one more forward pass);
- dpo_precomputed: objective dpo, reference log-probs read from the batch.
Each round times every variant's median step; the ratios are per round, then
their median is reported (targets: live ≤ 2.2×, precomputed ≤ 1.2× the SFT step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import time_steps, write_json  # noqa: E402
from polyglot_jax import configs as config_lib  # noqa: E402
from polyglot_jax.train.trainer import abstract_batch, build, global_batch  # noqa: E402


def text_rows(rng, rows, seq_len, vocab, prompt):
  tokens = rng.integers(4, vocab, (rows, seq_len + 1)).astype(np.int32)
  weights = np.ones((rows, seq_len), np.int32)
  weights[:, :prompt] = 0
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": weights,
          "segment_ids": np.ones((rows, seq_len), np.int32),
          "positions": np.tile(np.arange(seq_len, dtype=np.int32), (rows, 1)),
          "lang_ids": np.zeros((rows, seq_len), np.int32)}


def variant(base, name, pairs, seq_len):
  config = config_lib.load_config(base, [])
  with config.unlocked():
    config.data.seq_len = seq_len
    config.checkpoint.async_save = False
    if name == "sft":
      config.objective, config.data.kind, config.data.global_batch_size = "sft", "instruction", 2 * pairs
    else:
      config.objective, config.data.kind, config.data.global_batch_size = "dpo", "preference", pairs
      config.dpo.reference = "policy" if name == "dpo_live" else "precomputed"
  setup = build(config, num_languages=1)
  rng = np.random.default_rng(0)
  vocab, prompt = config.model.vocab_size, seq_len // 4
  if name == "sft":
    local = text_rows(rng, 2 * pairs, seq_len, vocab, prompt)
  else:
    local = {}
    for side in ("chosen", "rejected"):
      local.update({f"{side}_{k}": v for k, v in text_rows(rng, pairs, seq_len, vocab, prompt).items()})
    local["ref_logp_chosen"] = np.full((pairs,), -50.0, np.float32)
    local["ref_logp_rejected"] = np.full((pairs,), -55.0, np.float32)
    local["has_ref_logp"] = np.ones((pairs,), np.int32)
  batch = global_batch(setup, {k: v for k, v in local.items() if k in setup.objective.batch_spec()})
  compiled = setup.train_step.lower(setup.abstract_state, abstract_batch(setup)).compile()
  state = setup.init_fn()
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  return {"compiled": compiled, "state": state, "batch": batch}




def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py")
  parser.add_argument("--pairs", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results/dpo_step.json")
  args = parser.parse_args()
  names = ("sft", "dpo_live", "dpo_precomputed")
  variants = {n: variant(args.config, n, args.pairs, args.seq_len) for n in names}
  rounds = []
  for r in range(args.rounds):
    row = {n: time_steps(variants[n], args.steps) for n in names}
    rounds.append(row)
    print(f"round {r + 1}: " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in row.items()), flush=True)
  ratio = {n: statistics.median(row[n] / row["sft"] for row in rounds) for n in names[1:]}
  median = {n: statistics.median(row[n] for row in rounds) for n in names}
  print(f"\n{'step':<16} {'median ms':>10} {'per pair ms':>12} {'× sft':>7}")
  for n in names:
    print(f"{n:<16} {median[n] * 1000:>10.0f} {median[n] * 1000 / args.pairs:>12.1f} "
          f"{ratio.get(n, 1.0):>7.2f}")
  write_json({"command": "python benchmarks/dpo_step.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "devices": [str(d) for d in jax.devices()], "pairs": args.pairs, "seq_len": args.seq_len,
              "rounds_s": rounds, "median_s": median, "ratio_to_sft": ratio,
              "targets": {"dpo_live": 2.2, "dpo_precomputed": 1.2}}, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
