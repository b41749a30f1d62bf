"""Input-pipeline throughput: read JSONL + tokenize + pack + mix, on one core.

    python benchmarks/data_pipeline.py [--repeat 4] [--trainer_tokens_per_sec 4400]

Builds the demo corpus (offline), trains its tokenizer, then times the packed
backend end to end on ``--repeat`` copies of the training file: JSONL parsing,
SentencePiece encoding (one thread), packing per language, and drawing mixed
batches of the demo's shape until every row has been served once. Prints a
table and writes JSON (default benchmarks/results/data_pipeline.json), with
the ratio to the trainer's tokens/s on the demo config (measured by
``polyglot-jax train --config configs/demo.py``; pass it in).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_json  # noqa: E402
from polyglot_jax.data import mixing  # noqa: E402
from polyglot_jax.data.demo_corpus import build_demo_corpus  # noqa: E402
from polyglot_jax.data.packing import pack_documents  # noqa: E402
from polyglot_jax.data.pipeline import PackedBatches, read_jsonl  # noqa: E402
from polyglot_jax.tokenizer.train import train_sentencepiece  # noqa: E402


def main() -> dict:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeat", type=int, default=4, help="copies of the demo training file to read")
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--trainer_tokens_per_sec", type=float, default=0.0)
  parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
  args = parser.parse_args()
  import sentencepiece as spm

  work = tempfile.mkdtemp(prefix="polyglot_data_bench_")
  build_demo_corpus(work)
  records, _ = read_jsonl([os.path.join(work, "train.jsonl")])
  model = train_sentencepiece(records, os.path.join(work, "spm"), 4096)
  big = os.path.join(work, "big.jsonl")
  with open(os.path.join(work, "train.jsonl"), "rb") as src:
    data = src.read()
  with open(big, "wb") as dst:
    for _ in range(args.repeat):
      dst.write(data)
  processor = spm.SentencePieceProcessor(model_file=model, num_threads=1)

  timings = {}
  t0 = time.perf_counter()
  records, _ = read_jsonl([big])
  timings["read"] = time.perf_counter() - t0
  t = time.perf_counter()
  ids = processor.encode([text for text, _ in records], num_threads=1)
  timings["tokenize"] = time.perf_counter() - t
  languages = sorted({lang for _, lang in records})
  lang_id = {lang: i for i, lang in enumerate(languages)}
  t = time.perf_counter()
  parts = []
  for lang in languages:
    docs = [(tokens, lang_id[l]) for tokens, (_, l) in zip(ids, records) if l == lang]
    parts.append(pack_documents(docs, args.seq_len, processor.bos_id(), processor.eos_id()))
  rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  timings["pack"] = time.perf_counter() - t
  t = time.perf_counter()
  sizes = {lang: float(rows["loss_weights"][rows["lang_ids"][:, 0] == i].sum()) for i, lang in enumerate(languages)}
  rates = mixing.temperature(sizes, 0.3)
  batches = PackedBatches(rows, [rates[lang] for lang in languages], args.batch, seed=0)
  steps = max(1, len(rows["inputs"]) // args.batch)
  for _ in range(steps):
    next(batches)
  timings["mix_batches"] = time.perf_counter() - t
  total = time.perf_counter() - t0
  tokens = int(sum(len(x) + 1 for x in ids))
  result = {"documents": len(records), "tokens": tokens, "seconds": timings, "total_seconds": total,
            "tokens_per_sec": tokens / total, "rows": int(len(rows["inputs"])), "batches_drawn": steps,
            "trainer_tokens_per_sec": args.trainer_tokens_per_sec}
  if args.trainer_tokens_per_sec:
    result["ratio_to_trainer"] = result["tokens_per_sec"] / args.trainer_tokens_per_sec
  print(f"{'stage':<14}{'seconds':>10}")
  for stage, sec in timings.items():
    print(f"{stage:<14}{sec:>10.3f}")
  print(f"{'total':<14}{total:>10.3f}")
  print(f"documents {len(records):,}, tokens {tokens:,}: {result['tokens_per_sec']:,.0f} tokens/s on one core")
  if "ratio_to_trainer" in result:
    print(f"ratio to the trainer's {args.trainer_tokens_per_sec:,.0f} tokens/s: {result['ratio_to_trainer']:.1f}x")
  write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
