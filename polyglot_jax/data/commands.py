"""``polyglot-jax data <subcommand>``: data-side reports and data makers.

    polyglot-jax data mixture --config configs/demo.py
    polyglot-jax data clean --input 'raw/*.jsonl' --output cleaned/
    polyglot-jax data synth-math --out DIR [--n_train 2000 --n_test 100 --languages en,fr,de,ru,zh,hi --seed 0]
    polyglot-jax data instruct --task flores=DIR --task xcopa=DIR --out FILE.jsonl [--wording english|native]
    polyglot-jax data mapo ...  (polyglot_jax/data/mapo.py)
    polyglot-jax data dictionary build --source cldr|muse|tsv|jsonl [--input PATH ...] --languages en,fr,de
        --out FILE.jsonl [--format pairs|groups] [--tokenizer spm.model] [--categories territory,month,...]
    polyglot-jax data dictionary stats --input FILE.jsonl [--tokenizer spm.model]
"""

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
  if argv and argv[0] == "mapo":
    return _mapo(argv[1:], overrides)
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
  sm = sub.add_parser("synth-math", help="write the synthetic multilingual math testbed (QAlign/MAPO/SFT splits)")
  sm.add_argument("--out", required=True, help="output folder")
  sm.add_argument("--n_train", type=int, default=2000, help="training items (each in every language)")
  sm.add_argument("--n_test", type=int, default=100, help="held-out items (test/mgsm_<lang>.tsv)")
  sm.add_argument("--languages", default="en,fr,de,ru,zh,hi", help="comma-separated language codes")
  sm.add_argument("--pivot", default="en", help="the language questions are translated into")
  sm.add_argument("--ops", default="add,sub,mul,add_sub,mul_add", help="comma-separated operations")
  sm.add_argument("--difficulty", type=int, default=2, help="number ranges: 1 (small) to 3 (large)")
  sm.add_argument("--n_exemplars", type=int, default=4, help="few-shot exemplars per language")
  sm.add_argument("--seed", type=int, default=0)
  ins = sub.add_parser("instruct", help="evaluation-format data (FLORES, XCOPA, ...) as instruction records")
  ins.add_argument("--task", action="append", required=True,
                   help="TASK=PATH, repeatable; tasks: flores, xcopa, xnli, xstorycloze, belebele")
  ins.add_argument("--out", required=True, help="output JSONL of instruction records")
  ins.add_argument("--wording", default="english", help="english (xP3) or native (xP3mt): the instruction's language")
  ins.add_argument("--pivot", default="", help="translation pivot (a FLORES file code or alias; default: English)")
  ins.add_argument("--one_direction", action="store_true", help="translate into the pivot only")
  dic = sub.add_parser("dictionary", help="word dictionaries for PreAlign: build one, or count and check coverage")
  dic.add_argument("action", choices=("build", "stats"))
  dic.add_argument("--source", default="", help="build: cldr (babel's CLDR names), muse, tsv or jsonl")
  dic.add_argument("--input", action="append", default=[], help="a dictionary file, repeatable (not for cldr)")
  dic.add_argument("--languages", default="", help="comma-separated codes; each must end with a usable pair")
  dic.add_argument("--out", default="", help="build: output JSONL of word_pairs or word_groups records")
  dic.add_argument("--format", default="", help="build: pairs or groups (default: the source's own)")
  dic.add_argument("--tokenizer", default="", help="sentencepiece model: reject words it maps to nothing; coverage")
  dic.add_argument("--categories", default="", help="cldr: comma-separated of territory,language,script,currency,"
                   "month,weekday (default: all)")
  cln = sub.add_parser("clone", help="English-Clone testbed: clone tokenizer, cloned corpus, exact dictionary")
  cln.add_argument("--tokenizer", required=True, help="the source language's SentencePiece unigram model")
  cln.add_argument("--input", action="append", required=True, help="JSONL {text, lang} files or globs")
  cln.add_argument("--lang", default="eng", help="the language whose records are cloned")
  cln.add_argument("--out", required=True, help="output folder")
  cln.add_argument("--min_count", type=int, default=2, help="corpus words seen this often enter the dictionary")
  cln.add_argument("--max_words", type=int, default=0, help="cap on dictionary words (0: none)")
  sub.add_parser("mapo", help="MAPO preference data (polyglot_jax/data/mapo.py; flags: data mapo --help)",
                 add_help=False)
  args = parser.parse_args(argv)
  if args.what == "clean":
    return _clean(args, overrides)
  if args.what == "synth-math":
    return _synth_math(args)
  if args.what == "instruct":
    return _instruct(args)
  if args.what == "clone":
    return _clone(args)
  if args.what == "dictionary":
    return _dictionary(args)
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


def _synth_math(args) -> int:
  from polyglot_jax.data import synthetic_math
  counts = synthetic_math.write_splits(
      args.out, n_train=args.n_train, n_test=args.n_test, languages=_csv(args.languages), seed=args.seed,
      pivot=args.pivot, ops=_csv(args.ops), difficulty=args.difficulty, n_exemplars=args.n_exemplars)
  print(synthetic_math.format_counts(counts))
  print(f"wrote {args.out}: qalign_stage1/2, sft_multilingual, parallel_questions, exemplars_<lang>.jsonl, "
        "test/mgsm_<lang>.tsv, manifest.json")
  return 0


def _instruct(args) -> int:
  from polyglot_jax.data import instruct
  instruct._check_wording(args.wording)
  records, report = instruct.build(instruct.parse_tasks(args.task), wording=args.wording,
                                   pivot=args.pivot or None, both_directions=not args.one_direction)
  instruct.write(records, args.out)
  print(instruct.format_report(report, args.wording))
  print(f"wrote {len(records)} instruction records to {args.out}")
  return 0


def _dictionary(args) -> int:
  from polyglot_jax.data import dictionaries
  from polyglot_jax.errors import ConfigError
  processor = dictionaries.load_processor(args.tokenizer) if args.tokenizer else None
  if args.action == "stats":
    if not args.input:
      raise ConfigError("data dictionary stats needs --input FILE.jsonl (repeatable)")
    entries, report = dictionaries.build("jsonl", args.input, _csv(args.languages))
    print(dictionaries.format_report(report))
    print(dictionaries.format_stats(dictionaries.stats(entries, processor)))
    return 0
  if not args.out:
    raise ConfigError("data dictionary build needs --out FILE.jsonl")
  entries, report = dictionaries.build(args.source, args.input, _csv(args.languages), _csv(args.categories),
                                       processor, args.format or None)
  dictionaries.write_jsonl(entries, args.out)
  print(dictionaries.format_report(report))
  print(dictionaries.format_stats(dictionaries.stats(entries, processor)))
  print(f"wrote {len(entries)} entries to {args.out}")
  return 0


def _clone(args) -> int:
  from polyglot_jax.data import clone
  from polyglot_jax.data import languages as langs
  from polyglot_jax.data.jsonl import expand_files, read_jsonl
  from polyglot_jax.errors import DataError
  lang = langs.resolve(args.lang)
  records, rejected = read_jsonl(expand_files(args.input, "--input"))
  chosen = [{"text": text, "lang": code} for text, code in records if code == lang]
  if not chosen:
    raise DataError(f"--input has no '{lang}' records to clone (languages: {sorted({c for _, c in records})}); "
                    "pick --lang from those")
  manifest = clone.write_clone(args.tokenizer, chosen, args.out, args.min_count, args.max_words)
  skipped = len(records) - len(chosen)
  print(f"cloned {manifest['records']} '{lang}' records as '{manifest['clone_code']}' (skipped {skipped} of other "
        f"languages; {sum(rejected.values())} rejected lines)")
  print(f"clone tokenizer: {manifest['vocab_size']} pieces ({manifest['base_vocab_size']} source + "
        f"{manifest['cloned_pieces']} cloned); set model.vocab_size >= {manifest['vocab_size']}")
  print(f"dictionary: {manifest['dictionary_words']} exact word pairs")
  print(f"wrote {args.out}: clone.model, clone.jsonl, dictionary.jsonl, manifest.json")
  return 0


def _mapo(argv: list[str], overrides: list[str]) -> int:
  from polyglot_jax.errors import ConfigError
  try:
    from polyglot_jax.data import mapo
  except ModuleNotFoundError as e:
    if e.name != "polyglot_jax.data.mapo":
      raise
    raise ConfigError("`polyglot-jax data mapo` is not in this checkout (no polyglot_jax/data/mapo.py); "
                      "update polyglot_jax") from None
  return mapo.main(argv + [f"--config.{o}" for o in overrides])


def _csv(text: str) -> list[str]:
  return [part.strip() for part in text.split(",") if part.strip()]
