"""Wall time of each eval-harness task on one model.

    python -m benchmarks.eval_tasks --model runs/demo --data tests/fixtures/eval \\
        [--tasks xcopa=xcopa xstorycloze=xstorycloze mgsm=mgsm flores=flores perplexity=perplexity]
        [--limit 0] [--batch_size 16] [--out benchmarks/results/eval_tasks.json]

Task paths are relative to --data. Each task runs twice: the first run
includes compiles, the second is the steady state. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from benchmarks.common import write_json

DEFAULT_TASKS = ("xcopa=xcopa", "xstorycloze=xstorycloze", "mgsm=mgsm", "flores=flores", "perplexity=perplexity")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", required=True)
  parser.add_argument("--data", default="tests/fixtures/eval")
  parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
  parser.add_argument("--limit", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--out", default="benchmarks/results/eval_tasks.json")
  args = parser.parse_args()

  import jax

  import polyglot_jax
  from polyglot_jax.eval import harness
  loaded = polyglot_jax.load(args.model)
  options = harness.EvalOptions(limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
  tasks = [(name, os.path.join(args.data, path)) for name, path in harness.parse_tasks(args.tasks)]
  rows = []
  for name, path in tasks:
    timings = []
    for _ in range(2):
      t = time.perf_counter()
      result = harness.evaluate_model(loaded.model, loaded.tokenizer, [(name, path)], options,
                                      max_len=int(loaded.config.data.seq_len), progress=False)[name]
      timings.append(time.perf_counter() - t)
    items = sum(row.get("n", 0) for row in result["per_language"].values())
    rows.append({"task": name, "languages": len(result["per_language"]), "items": items,
                 "first_s": round(timings[0], 2), "steady_s": round(timings[1], 2),
                 "items_per_s": round(items / timings[1], 2), result["metric"]: result["mean"]})
  print(f"{'task':>12} {'langs':>6} {'items':>6} {'first s':>8} {'steady s':>9} {'items/s':>8}  main metric")
  for r in rows:
    metric = [k for k in r if k not in ("task", "languages", "items", "first_s", "steady_s", "items_per_s")][0]
    print(f"{r['task']:>12} {r['languages']:>6} {r['items']:>6} {r['first_s']:>8} {r['steady_s']:>9} "
          f"{r['items_per_s']:>8}  {metric} {r[metric]}")
  flags = " ".join(f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items())
  write_json({"command": f"python -m benchmarks.eval_tasks {flags}",
              "model": args.model, "devices": [str(d) for d in jax.devices()], "machine": platform.machine(),
              "cpus": os.cpu_count(), "rows": rows}, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
