"""``polyglot-jax tokenizer train|report``."""

from __future__ import annotations

import argparse
import json
import os


def _train(args) -> int:
  from polyglot_jax.data.jsonl import DataError, expand_files, read_jsonl
  from polyglot_jax.tokenizer.train import train_sentencepiece
  records, rejected = read_jsonl(expand_files(args.input, "--input"))
  if not records:
    raise DataError(f"--input {args.input} holds no usable {{\"text\", \"lang\"}} records")
  path = train_sentencepiece(records, args.output, args.vocab_size, model_type=args.model_type, alpha=args.alpha,
                             byte_fallback=not args.no_byte_fallback,
                             character_coverage=args.character_coverage)
  print(f"wrote {path} ({args.vocab_size} pieces, {args.model_type}, alpha={args.alpha}); "
        f"rejected input lines: {dict(rejected) or 0}")
  return 0


def _report(args) -> int:
  import sentencepiece as spm

  from polyglot_jax.data import languages
  from polyglot_jax.errors import DataError
  from polyglot_jax.tokenizer import report as report_lib
  if not os.path.isfile(args.tokenizer):
    raise DataError(f"tokenizer '{args.tokenizer}' does not exist")
  processor = spm.SentencePieceProcessor(model_file=args.tokenizer)
  records = []
  with open(args.input, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        records.append({"id": r["id"], "lang": languages.resolve(r["lang"]), "text": r["text"]})
      except (json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{args.input}:{lineno}: expected a JSON object with id, lang and text ({e})") from None
  report = report_lib.tokenizer_report(lambda s: processor.encode(s), report_lib.parallel_sentences(records),
                                       reference=languages.resolve(args.reference))
  os.makedirs(args.out, exist_ok=True)
  report_lib.save_report(report, os.path.join(args.out, "report.json"))
  report_lib.write_chart(report, os.path.join(args.out, "parity.png"), os.path.basename(args.tokenizer))
  print(report_lib.format_report(report))
  print(f"wrote {args.out}/report.json and {args.out}/parity.png")
  return 0


def _extend(args) -> int:
  from polyglot_jax.data.jsonl import DataError, expand_files, read_jsonl
  from polyglot_jax.tokenizer import extend
  records, _ = read_jsonl(expand_files(args.input, "--input"))
  if not records:
    raise DataError(f"--input {args.input} holds no usable {{\"text\", \"lang\"}} records")
  path, pieces = extend.add_pieces(args.tokenizer, records, args.num_pieces, args.output)
  print(f"wrote {path}: {len(pieces)} new pieces, e.g. {pieces[:10]}")
  if args.workdir:
    if not args.new_workdir:
      raise DataError("--workdir needs --new_workdir (the grown checkpoint goes there; the old one is kept)")
    info = extend.extend_checkpoint(args.workdir, args.new_workdir, args.tokenizer, path)
    print(f"wrote {args.new_workdir}: step {info['step']}, vocab_size {info['vocab_size']}; train on with "
          f"polyglot-jax train --config C --workdir {args.new_workdir} "
          f"--config.model.vocab_size={info['vocab_size']} --config.data.tokenizer={path}")
  return 0


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="polyglot-jax tokenizer")
  sub = parser.add_subparsers(dest="what", required=True)
  t = sub.add_parser("train", help="train a SentencePiece model on text sampled across languages")
  t.add_argument("--input", action="append", required=True, help="JSONL {text, lang} files or globs")
  t.add_argument("--output", required=True, help="model path prefix (writes PREFIX.model / .vocab)")
  t.add_argument("--vocab_size", type=int, default=32000)
  t.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
  t.add_argument("--alpha", type=float, default=0.3, help="language sampling exponent: 0 equal, 1 proportional")
  t.add_argument("--character_coverage", type=float, default=0.9995)
  t.add_argument("--no_byte_fallback", action="store_true")
  r = sub.add_parser("report", help="fertility, parity and bytes/token per language on parallel text")
  r.add_argument("--tokenizer", required=True)
  r.add_argument("--input", required=True, help="JSONL {id, lang, text}: the same ids in every language")
  r.add_argument("--reference", default="eng")
  r.add_argument("--out", required=True, help="directory for report.json and parity.png")
  e = sub.add_parser("extend", help="add pieces for new text; optionally grow a checkpoint's embedding to match")
  e.add_argument("--tokenizer", required=True, help="the trained unigram .model to extend")
  e.add_argument("--input", action="append", required=True, help="JSONL {text, lang} of the new language(s)")
  e.add_argument("--num_pieces", type=int, default=1000)
  e.add_argument("--output", required=True, help="new model path prefix")
  e.add_argument("--workdir", default="", help="training workdir whose newest checkpoint to grow")
  e.add_argument("--new_workdir", default="", help="where the grown checkpoint and config.json go")
  args = parser.parse_args(argv)
  return {"train": _train, "report": _report, "extend": _extend}[args.what](args)
