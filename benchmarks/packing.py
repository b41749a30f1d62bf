"""Padding of greedy vs best-fit packing on the demo corpus (rows of configs/demo.py).

    python benchmarks/packing.py [--demo_dir DIR] [--seq_len 256] [--out benchmarks/results/packing.json]

Builds the demo corpus and its tokenizer (once, in --demo_dir), packs the
training and held-out records per language with each packing mode (exactly as
the packed backend does) and prints rows and padding per mode. Writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_json  # noqa: E402
from polyglot_jax import configs as config_lib  # noqa: E402
from polyglot_jax.data import in_memory  # noqa: E402
from polyglot_jax.data.mixed_batches import ROW_LANG  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def padding(rows) -> float:
  seg = rows["segment_ids"]
  return float((seg == 0).mean())


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--demo_dir", default="/tmp/polyglot_packing_bench")
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--out", default="benchmarks/results/packing.json")
  args = parser.parse_args()
  results = []
  for mode in ("greedy", "best_fit"):
    config = config_lib.load_config(os.path.join(REPO, "configs", "demo.py"),
                                    [f"data.demo_dir={args.demo_dir}", f"data.seq_len={args.seq_len}",
                                     f"data.packing={mode}"])
    data = in_memory.load_text_data(config, args.demo_dir)
    train = {k: v for k, v in data.train_rows.items() if k != ROW_LANG}
    held = {k: v for k, v in data.eval_rows.items() if k != ROW_LANG}
    results.append({"packing": mode, "train_rows": len(train["inputs"]), "train_padding": padding(train),
                    "eval_rows": len(held["inputs"]), "eval_padding": padding(held),
                    "train_tokens": int((train["segment_ids"] > 0).sum())})
  print(f"{'packing':<10} {'train rows':>10} {'padding':>8} {'eval rows':>10} {'padding':>8} {'tokens':>9}")
  for r in results:
    print(f"{r['packing']:<10} {r['train_rows']:>10} {r['train_padding']:>8.1%} {r['eval_rows']:>10} "
          f"{r['eval_padding']:>8.1%} {r['train_tokens']:>9}")
  saved = 1 - results[1]["train_rows"] / results[0]["train_rows"]
  print(f"best_fit needs {saved:.1%} fewer training rows for the same tokens")
  write_json({"seq_len": args.seq_len, "results": results, "rows_saved": saved}, args.out)


if __name__ == "__main__":
  main()
