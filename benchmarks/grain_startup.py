"""Start-up of the grain backend on many records: indexing the corpus cold vs from the index cache.

    python benchmarks/grain_startup.py [--files 8] [--records 200000] [--workers 1,2,auto]

Writes ``--files`` JSONL files of short records (three languages, ~1% bad
records) to a temporary folder, sets their mtimes an hour back (a file
written within ``doc_index.RACY_NS`` of its indexing is not cached), then,
per ``--workers`` setting and on a fresh copy of the files, times
``doc_index.index_documents`` twice: cold (every record read and validated,
the per-file caches written) and warm (the caches loaded). Checks that both
calls return the same index, prints a table and writes JSON (default
benchmarks/results/grain_startup.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_json  # noqa: E402
from polyglot_jax.data import doc_index  # noqa: E402

LANGS = ("deu", "eng", "swa")


def write_corpus(folder: str, files: int, records: int) -> int:
  """``records`` short records spread over ``files`` files; returns their total bytes."""
  os.makedirs(folder)
  total = 0
  for f in range(files):
    lines = []
    for i in range(f, records, files):
      if i % 97 == 5:
        lines.append('{"text": "broken\n')
      else:
        lines.append(json.dumps({"text": f"document {i} with a few words of text in it", "lang": LANGS[i % 3]}) + "\n")
    path = os.path.join(folder, f"part-{f:03d}.jsonl")
    with open(path, "w") as handle:
      handle.write("".join(lines))
    past = time.time() - 3600
    os.utime(path, (past, past))
    total += os.path.getsize(path)
  return total


def same(a, b) -> bool:
  """Two index_documents results hold the same languages, arrays and rejection counts."""
  (ia, ra), (ib, rb) = a, b
  return (list(ia) == list(ib) and list(ra.items()) == list(rb.items())
          and all(np.array_equal(ia[k].keys, ib[k].keys) and np.array_equal(ia[k].file_ids, ib[k].file_ids)
                  and ia[k].text_bytes == ib[k].text_bytes for k in ia))


def main() -> dict:
  parser = argparse.ArgumentParser()
  parser.add_argument("--files", type=int, default=8)
  parser.add_argument("--records", type=int, default=200_000)
  parser.add_argument("--workers", default="1,2,auto", help="comma-separated: a process count, or auto (the default)")
  parser.add_argument("--out", default="benchmarks/results/grain_startup.json")
  args = parser.parse_args()
  logging.getLogger().setLevel(logging.ERROR)  # The rejected-records warnings are expected here.
  work = tempfile.mkdtemp(prefix="polyglot_grain_startup_")
  rows = []
  try:
    source = os.path.join(work, "source")
    corpus_bytes = write_corpus(source, args.files, args.records)
    for workers in args.workers.split(","):
      folder = os.path.join(work, f"workers_{workers}")
      shutil.copytree(source, folder)  # copy2: mtimes kept, no cache yet.
      if workers == "auto":
        os.environ.pop(doc_index.WORKERS_ENV, None)
      else:
        os.environ[doc_index.WORKERS_ENV] = workers
      pattern = [os.path.join(folder, "*.jsonl")]
      start = time.perf_counter()
      cold = doc_index.index_documents(pattern, [], "train_files")
      cold_s = time.perf_counter() - start
      start = time.perf_counter()
      warm = doc_index.index_documents(pattern, [], "train_files")
      warm_s = time.perf_counter() - start
      if not same(cold, warm):
        raise SystemExit("benchmarks/grain_startup.py: the cached index differs from the built one; a bug in doc_index")
      rows.append({"workers": workers, "files": args.files, "records": args.records, "corpus_mb": corpus_bytes / 1e6,
                   "documents": sum(len(v) for v in cold[0].values()), "rejected": sum(cold[1].values()),
                   "cold_s": cold_s, "warm_s": warm_s, "ratio": cold_s / warm_s})
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(f"{'workers':>8} {'files':>6} {'records':>9} {'MB':>6} {'cold s':>8} {'warm s':>8} {'ratio':>7}")
  for r in rows:
    print(f"{r['workers']:>8} {r['files']:>6} {r['records']:>9} {r['corpus_mb']:>6.1f} {r['cold_s']:>8.3f} "
          f"{r['warm_s']:>8.3f} {r['ratio']:>6.0f}x")
  result = {"rows": rows, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine()}
  write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
