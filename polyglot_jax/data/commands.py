"""``polyglot-jax data <subcommand>``: data-side reports."""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from polyglot_jax import configs as config_lib


def mixture_report(config, workdir: str) -> list[dict]:
  """Per language: training tokens, mixture rate, expected tokens and epochs for the run."""
  from polyglot_jax.data.backends import make_data
  data = make_data(config, workdir)
  run_tokens = config_lib.resolve_steps(config) * config.data.global_batch_size * config.data.seq_len
  rows = []
  for lang in data.languages:
    size, rate = int(round(data.sizes.get(lang, 0))), data.rates[lang]
    expected = rate * run_tokens
    rows.append({"lang": lang, "tokens": size, "rate": rate, "expected_tokens": expected,
                 "epochs": expected / size if size else 0.0})
  return rows


def format_mixture(rows: list[dict], method: str, max_epochs: float | None = None) -> str:
  lines = [f"mixture: {method}",
           f"{'lang':<6} {'tokens':>12} {'rate':>8} {'expected tokens':>16} {'epochs':>8}"]
  for r in rows:
    lines.append(f"{r['lang']:<6} {r['tokens']:>12,} {r['rate']:>8.4f} {r['expected_tokens']:>16,.0f} {r['epochs']:>8.2f}")
  total = sum(r["expected_tokens"] for r in rows)
  lines.append(f"{'total':<6} {sum(r['tokens'] for r in rows):>12,} {1.0:>8.4f} {total:>16,.0f}")
  if max_epochs is not None and any(r["epochs"] > max_epochs * (1 + 1e-9) for r in rows):
    lines.append(f"note: the run needs more tokens than max_epochs={max_epochs} of every language allows; "
                 "the rates keep UniMax's proportions and every language repeats more often")
  return "\n".join(lines)


def main(argv: list[str], overrides: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="polyglot-jax data")
  sub = parser.add_subparsers(dest="what", required=True)
  mix = sub.add_parser("mixture", help="per-language size, rate, expected tokens and epochs of a run")
  mix.add_argument("--config", required=True)
  mix.add_argument("--workdir", default="", help="where source=demo builds its corpus (default: a temp dir)")
  mix.add_argument("--json", default="", help="also write the table as JSON here")
  cl = sub.add_parser("clean", help="filter, deduplicate and PII-mask JSONL {text, lang} files")
  cl.add_argument("--input", action="append", required=True, help="JSONL files or globs")
  cl.add_argument("--output", required=True, help="directory for kept.jsonl, rejected.jsonl, report.json")
  cl.add_argument("--config", default="", help="config file whose `clean` section sets the thresholds")
  cl.add_argument("--no_lid", action="store_true", help="skip language identification")
  args = parser.parse_args(argv)
  if args.what == "clean":
    return _clean(args, overrides)
  config = config_lib.load_config(args.config, overrides)
  workdir = args.workdir or tempfile.mkdtemp(prefix="polyglot_mixture_")
  rows = mixture_report(config, workdir)
  method = config.data.mixture.method
  print(format_mixture(rows, method, config.data.mixture.max_epochs if method == "unimax" else None))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump({"method": config.data.mixture.method, "languages": rows}, f, indent=2)
  return 0


def _clean(args, overrides) -> int:
  from polyglot_jax.data.clean.cleaner import clean, format_report
  from polyglot_jax.data.jsonl import expand_files
  if args.config:
    config = config_lib.load_config(args.config, overrides)
  else:
    config = config_lib.default_config()
    config.lock()
    config_lib.apply_overrides(config, overrides)
  report = clean(expand_files(args.input, "--input"), args.output, config.clean, use_lid=not args.no_lid)
  print(format_report(report))
  print(f"wrote {args.output}/kept.jsonl, rejected.jsonl and report.json")
  return 0
