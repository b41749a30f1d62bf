"""Input-pipeline throughput of each data backend: read + tokenize + mix + pack, on one core.

    taskset -c 0 python benchmarks/data_pipeline.py [--backend all] [--repeat 4] [--trainer_tokens_per_sec 4400]

Builds the demo corpus (offline), trains its tokenizer, and writes ``--repeat``
copies of the training file. Then, per backend:

- packed: JSONL parsing, SentencePiece encoding (one thread), packing per
  language, and drawing mixed batches of the demo's shape until every row has
  been served once;
- grain / seqio: the backend's setup (indexing and validating every record,
  sizing each language from a sample, building the mixture) timed apart, then
  batches drawn until as many tokens as the corpus holds have been served.

Prints a table and writes JSON (default benchmarks/results/data_pipeline.json),
with the ratio to the trainer's tokens/s on the demo config (measured by
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
from polyglot_jax.data.jsonl import read_jsonl
from polyglot_jax.data.mixed_batches import PackedBatches  # noqa: E402
from polyglot_jax.tokenizer.train import train_sentencepiece  # noqa: E402


def main() -> dict:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeat", type=int, default=4, help="copies of the demo training file to read")
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--trainer_tokens_per_sec", type=float, default=0.0)
  parser.add_argument("--backend", default="all", choices=("all", "packed", "grain", "seqio"))
  parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
  args = parser.parse_args()
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
  backends = ("packed", "grain", "seqio") if args.backend == "all" else (args.backend,)
  results = {}
  for backend in backends:
    bench = bench_packed if backend == "packed" else bench_streaming
    results[backend] = bench(args, backend, big, model)
  print(f"\n{'backend':<8}{'setup s':>9}{'stream s':>10}{'tokens':>12}{'tokens/s':>12}{'x trainer':>11}")
  for backend, r in results.items():
    ratio = f"{r['ratio_to_trainer']:.0f}x" if "ratio_to_trainer" in r else "-"
    print(f"{backend:<8}{r['setup_seconds']:>9.2f}{r['stream_seconds']:>10.2f}{r['tokens']:>12,}"
          f"{r['tokens_per_sec']:>12,.0f}{ratio:>11}")
  out = {"backends": results, "repeat": args.repeat, "seq_len": args.seq_len, "batch": args.batch,
         "trainer_tokens_per_sec": args.trainer_tokens_per_sec}
  write_json(out, args.out)
  return out


def bench_packed(args, backend: str, big: str, model: str) -> dict:
  import sentencepiece as spm
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
            "setup_seconds": 0.0, "stream_seconds": total,
            "tokens_per_sec": tokens / total, "rows": int(len(rows["inputs"])), "batches_drawn": steps}
  print("packed: " + ", ".join(f"{stage} {sec:.2f} s" for stage, sec in timings.items()))
  return _with_ratio(result, args)


def bench_streaming(args, backend: str, big: str, model: str) -> dict:
  """Setup, then batches until the corpus's worth of tokens has been served."""
  from polyglot_jax import configs as config_lib
  from polyglot_jax.data.backends import make_data
  config = config_lib.default_config()
  values = {"data.backend": backend, "data.train_files": (big,), "data.tokenizer": model,
            "data.seq_len": args.seq_len, "data.global_batch_size": args.batch, "model.vocab_size": 4096,
            "data.mixture.method": "temperature", "data.grain_read_threads": 1}
  for key, value in values.items():
    config_lib.set_key(config, key, value, from_string=False)
  records, _ = read_jsonl([big])
  import sentencepiece as spm
  target = sum(len(x) + 1 for x in spm.SentencePieceProcessor(model_file=model).encode([t for t, _ in records]))
  t = time.perf_counter()
  data = make_data(config, tempfile.mkdtemp(prefix=f"polyglot_{backend}_bench_"))
  setup = time.perf_counter() - t
  t = time.perf_counter()
  tokens, steps = 0, 0
  while tokens < target:
    tokens += int(next(data.train)["loss_weights"].sum())
    steps += 1
  stream = time.perf_counter() - t
  result = {"documents": len(records), "tokens": tokens, "setup_seconds": setup, "stream_seconds": stream,
            "total_seconds": setup + stream, "tokens_per_sec": tokens / stream,
            "tokens_per_sec_with_setup": tokens / (setup + stream), "batches_drawn": steps}
  print(f"{backend}: setup {setup:.2f} s, {steps} batches in {stream:.2f} s")
  return _with_ratio(result, args)


def _with_ratio(result: dict, args) -> dict:
  if args.trainer_tokens_per_sec:
    result["ratio_to_trainer"] = result["tokens_per_sec"] / args.trainer_tokens_per_sec
  return result


if __name__ == "__main__":
  main()
