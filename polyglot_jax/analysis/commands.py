"""``polyglot-jax analyze``: the logit lens and LAPE language-specific neurons on any loadable model.

    polyglot-jax analyze logit-lens --model PATH --source fr --target zh --out DIR [--k_shot 4] [--limit 50]
        [--seed 0] [--batch_size 8] [--step N]
    polyglot-jax analyze lape --model PATH --input texts.jsonl --out DIR [--top_rate 0.01] [--filter_rate 0.95]
        [--activation_bar_ratio 0.95] [--eval_fraction 0.2] [--no_table] [--seq_len 512] [--batch_size 8]
        [--seed 0] [--step N]

logit-lens writes ``DIR/logit_lens.json`` (per-layer curves and the items)
and ``DIR/logit_lens.png``. lape reads ``{"text", "lang"}`` records and
writes ``DIR/lape.json`` (neurons per language, the perplexity table),
``DIR/activation_probs.npy`` [langs, layers, width] and
``DIR/lape_neurons.png``. Both print a table. See docs/analysis.md. In an
MoE layer the neurons are numbered expert by expert (expert j's neuron f is
``j · mlp_dim + f``; ``analysis/lape.py``); lape.json records each layer's
width and its MoE layers.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from polyglot_jax.errors import DataError


def _load(args):
  import polyglot_jax
  loaded = polyglot_jax.load(args.model, args.step)
  if loaded.tokenizer is None:
    raise DataError(f"{args.model} has no SentencePiece tokenizer to encode text with; train or convert a model "
                    "that ships one (tokenizer.model)")
  return loaded


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="polyglot-jax analyze", description="interpretability tools")
  sub = parser.add_subparsers(dest="command", required=True)

  def common(p):
    p.add_argument("--model", required=True, help="training workdir, converted workdir or Hugging Face directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a training workdir (default: newest)")
    p.add_argument("--out", required=True, help="directory the JSON and PNG are written to")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)

  lens = sub.add_parser("logit-lens", help="per-layer target vs English word probability (Wendler et al.)")
  common(lens)
  lens.add_argument("--source", required=True, help="CLDR code of the prompt's source language, e.g. fr")
  lens.add_argument("--target", required=True, help="CLDR code of the language translated into, e.g. zh")
  lens.add_argument("--k_shot", type=int, default=4, help="example lines before each query")
  lens.add_argument("--limit", type=int, default=50, help="at most this many words (0: all)")

  lape = sub.add_parser("lape", help="language-specific neurons by activation probability entropy (Tang et al.)")
  common(lape)
  lape.add_argument("--input", required=True, help='JSONL of {"text", "lang"} records')
  lape.add_argument("--top_rate", type=float, default=0.01, help="fraction of all neurons selected")
  lape.add_argument("--filter_rate", type=float, default=0.95,
                    help="percentile a neuron's top activation probability must exceed")
  lape.add_argument("--activation_bar_ratio", type=float, default=0.95,
                    help="percentile a probability must exceed to assign the neuron to a language")
  lape.add_argument("--eval_fraction", type=float, default=0.2,
                    help="last fraction of each language's texts held out for the perplexity table")
  lape.add_argument("--no_table", action="store_true", help="skip the deactivation perplexity table")
  lape.add_argument("--seq_len", type=int, default=512, help="window length for activations and perplexity")
  return parser


def main(argv: list[str]) -> int:
  """Runs ``polyglot-jax analyze <logit-lens|lape> ...``; returns the exit status."""
  args = _parser().parse_args(argv)
  if args.command == "logit-lens":
    return _logit_lens(args)
  return _lape(args)


# ----------------------------------------------------------------------------------------------------------------
# logit-lens


def _logit_lens(args) -> int:
  from polyglot_jax.analysis import logit_lens
  if args.k_shot < 0 or args.limit < 0:
    raise DataError(f"--k_shot={args.k_shot} and --limit={args.limit} must be 0 or more")
  logit_lens.language_name(args.source)  # Bad codes fail before the model loads.
  logit_lens.language_name(args.target)
  loaded = _load(args)
  items = logit_lens.translation_items(args.source, args.target, args.k_shot, limit=args.limit or None,
                                       seed=args.seed, tokenizer=loaded.tokenizer)
  result = logit_lens.lens(loaded.model, loaded.tokenizer, items, batch_size=args.batch_size, progress=True)
  os.makedirs(args.out, exist_ok=True)
  record = {"model": args.model, "source": args.source, "target": args.target, "k_shot": args.k_shot,
            "seed": args.seed, **result, "items": items}
  json_path = os.path.join(args.out, "logit_lens.json")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(record, f, ensure_ascii=False, indent=1)
  png_path = os.path.join(args.out, "logit_lens.png")
  logit_lens.plot(result, png_path, title=f"{args.source} → {args.target}, {len(items)} words")
  print(f"logit lens {args.source} → {args.target} over {len(items)} words")
  print(f"{'layer':>5}  {'P(target)':>9}  {'P(en)':>9}  {'entropy':>8}")
  for layer, t, e, h in zip(result["layers"], result["target_prob"], result["english_prob"], result["entropy"]):
    print(f"{layer:>5}  {t:>9.4f}  {e:>9.4f}  {h:>8.3f}")
  print(f"wrote {json_path} and {png_path}", flush=True)
  return 0


# ----------------------------------------------------------------------------------------------------------------
# lape


def read_texts(path: str) -> dict[str, list[str]]:
  """language → texts, in file order, from ``{"text", "lang"}`` JSONL; a bad line is a DataError naming it."""
  from polyglot_jax.analysis.routing import read_records
  texts: dict[str, list[str]] = {}
  for record in read_records(path, "--input"):
    texts.setdefault(record["lang"], []).append(record["text"])
  if len(texts) < 2:
    raise DataError(f"{path}: LAPE compares languages and needs texts in two or more; found {sorted(texts)}")
  return texts


def _split(ids: list[list[int]], fraction: float) -> tuple[list[list[int]], list[list[int]], bool]:
  """(identification texts, held-out texts, held out?): the last ``fraction`` of the texts are held out."""
  n_eval = round(len(ids) * fraction)
  if n_eval <= 0 or n_eval >= len(ids):
    return ids, ids, False
  return ids[:-n_eval], ids[-n_eval:], True


def _lape(args) -> int:
  from polyglot_jax.analysis import lape
  if not 0.0 <= args.eval_fraction < 1.0:
    raise DataError(f"--eval_fraction={args.eval_fraction} must be within [0, 1)")
  for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
    if not 0.0 <= getattr(args, name) <= 1.0:
      raise DataError(f"--{name}={getattr(args, name)} must be within [0, 1]")
  texts = read_texts(args.input)
  loaded = _load(args)
  tok, model = loaded.tokenizer, loaded.model
  bos = [tok.bos_id()] if tok.bos_id() >= 0 else []
  identify, held_out, separate = {}, {}, True
  for lang, lang_texts in texts.items():
    ids = [bos + tok.encode(t) for t in lang_texts]
    identify[lang], held_out[lang], split = _split(ids, args.eval_fraction)
    separate = separate and split
  langs, probs = lape.activation_probabilities(model, identify, batch_size=args.batch_size, seq_len=args.seq_len,
                                               progress=True)
  neurons = lape.select_neurons(probs, langs, top_rate=args.top_rate, filter_rate=args.filter_rate,
                                activation_bar_ratio=args.activation_bar_ratio)
  table = None
  if not args.no_table:
    table = lape.deactivation_table(model, held_out, neurons, seed=args.seed, batch_size=args.batch_size,
                                    seq_len=args.seq_len, progress=True)
  os.makedirs(args.out, exist_ok=True)
  num_layers = model.cfg.num_layers
  cfg = model.cfg
  record = {
      "model": args.model, "input": args.input, "languages": langs,
      "num_tokens": {lang: int(sum(len(s) for s in identify[lang])) for lang in langs},
      "settings": {"top_rate": args.top_rate, "filter_rate": args.filter_rate,
                   "activation_bar_ratio": args.activation_bar_ratio, "seq_len": args.seq_len, "seed": args.seed,
                   "eval_fraction": args.eval_fraction, "held_out": separate},
      # Neuron numbering: layer i has layer_widths[i] neurons; in an MoE layer expert j's neuron f is j·mlp_dim + f.
      "layer_widths": lape.layer_widths(model), "moe_layers": list(cfg.moe_layer_ids()), "mlp_dim": cfg.mlp_dim,
      "neurons": {lang: {str(k): v for k, v in by_layer.items()} for lang, by_layer in neurons.items()},
      "neurons_per_layer": {lang: [len(by_layer.get(i, ())) for i in range(num_layers)]
                            for lang, by_layer in neurons.items()},
      "table": table,
  }
  json_path = os.path.join(args.out, "lape.json")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(record, f, ensure_ascii=False, indent=1)
  np.save(os.path.join(args.out, "activation_probs.npy"), probs.astype(np.float32))
  png_path = os.path.join(args.out, "lape_neurons.png")
  lape.plot_neurons(neurons, num_layers, png_path, title=f"LAPE neurons (top_rate {args.top_rate})")
  print("language-specific neurons: " + ", ".join(
      f"{lang} {sum(len(v) for v in neurons[lang].values())}" for lang in langs))
  if table is not None:
    if not separate:
      print("note: some language has too few texts to hold any out; perplexity is measured on the same texts")
    print(_format_table(table))
  print(f"wrote {json_path}, {png_path} and activation_probs.npy", flush=True)
  return 0


def _format_table(table: dict) -> str:
  """Rows: the language whose neurons are off; columns: perplexity change per language (random control)."""
  cols = table["languages"]
  width = 20
  lines = ["perplexity change when a row's neurons are off: deactivated − base (random neurons − base)",
           f"{'':>10}" + "".join(f"{c:>{width}}" for c in cols),
           f"{'base ppl':>10}" + "".join(f"{table['base'][c]:>{width}.3f}" for c in cols)]
  for row in table["delta"]:
    cells = "".join(f"{table['delta'][row][c]:+.3f} ({table['random_delta'][row][c]:+.3f})".rjust(width)
                    for c in cols)
    lines.append(f"{row + ' off':>10}" + cells)
  return "\n".join(lines)
