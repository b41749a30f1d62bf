"""``polyglot-jax moe``: MoE checkpoints.

    polyglot-jax moe upcycle --from DIR --workdir OUT --num_experts N --top_k K [--layers all] [--noise 0]
    polyglot-jax moe routing --model PATH --data FILE.jsonl --out DIR [--max_docs N] [--seq_len L]

``upcycle`` turns a dense checkpoint into an MoE one (models/upcycle.py).
``routing`` writes per-language × per-MoE-layer expert shares as
``DIR/routing.json`` and the ``DIR/routing.png`` heatmap, and prints the share
of expert 0 per language and layer (analysis/routing.py). See docs/moe.md.
"""

from __future__ import annotations

import argparse
import json
import os

from polyglot_jax.errors import ConfigError, DataError


def _upcycle(args) -> int:
  from polyglot_jax.models import upcycle
  info = upcycle.upcycle(args.source, args.workdir, args.num_experts, args.top_k, args.layers, noise=args.noise,
                         router_std=args.router_std, seed=args.seed)
  m = info["config"].model
  print(f"wrote {args.workdir}: {m.num_experts} experts, top-{m.moe_top_k}, MoE layers {list(info['layers'])} of "
        f"{m.num_layers} (scan_layers={m.scan_layers}); {info['dense_params'] / 1e6:.3f}M → "
        f"{info['moe_params'] / 1e6:.3f}M parameters; expert 0 = the dense FFN, noise={args.noise}")
  print(f"train from it with: polyglot-jax train --config configs/moe_lpr_stage1.py --workdir STAGE1 "
        f"--config.init_from={args.workdir} (init_from takes the MoE settings from it)")
  return 0


def _routing(args) -> int:
  import polyglot_jax
  from polyglot_jax import loading
  from polyglot_jax.analysis import routing
  if args.max_docs < 0 or args.batch_size < 1 or args.seq_len < 0:
    raise DataError(f"--max_docs={args.max_docs} must be ≥ 0, --batch_size={args.batch_size} ≥ 1 and "
                    f"--seq_len={args.seq_len} ≥ 0")
  saved = loading.saved_config(args.model).model  # A dense model fails here, before its weights are read.
  if not saved.num_experts:
    raise ConfigError(f"--model {args.model} is dense (config.model.num_experts=0) and has no router to inspect; "
                      "give an MoE checkpoint (`polyglot-jax moe upcycle` makes one from a dense model)")
  records = routing.read_records(args.data)
  loaded = polyglot_jax.load(args.model, args.step)
  if loaded.tokenizer is None:
    raise DataError(f"--model {args.model} ships no SentencePiece tokenizer to encode --data with; set "
                    "data.tokenizer in its config.json or copy the .model file into its tokenizer/ directory")
  seq_len = args.seq_len or loaded.config.data.seq_len
  result = routing.routing_shares(loaded.model, loaded.tokenizer, records, batch_size=args.batch_size,
                                  seq_len=seq_len, max_docs=args.max_docs, progress=True)
  os.makedirs(args.out, exist_ok=True)
  json_path, png_path = os.path.join(args.out, "routing.json"), os.path.join(args.out, "routing.png")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump({"model": args.model, "data": args.data, "max_docs": args.max_docs, **result}, f, indent=1,
              ensure_ascii=False)
  routing.plot(result, png_path, title=f"{os.path.basename(os.path.normpath(args.model))}: expert routing per "
                                       "language")
  print(routing.expert_table(result))
  for code, docs in result["unknown_languages"].items():
    print(f"note: '{code}' ({docs} docs) is not a registered language code; its tokens are counted under it")
  print(f"wrote {json_path} and {png_path}", flush=True)
  return 0


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="polyglot-jax moe")
  sub = parser.add_subparsers(dest="what", required=True)
  u = sub.add_parser("upcycle", help="dense checkpoint → MoE: expert 0 = the FFN, experts 1..N-1 copies, new router")
  u.add_argument("--from", dest="source", required=True,
                 help="dense model: a training workdir (newest checkpoint), a converted workdir or a HF directory")
  u.add_argument("--workdir", required=True, help="new directory for config.json + params/ (read by init_from)")
  u.add_argument("--num_experts", type=int, required=True, help="experts per MoE layer (N)")
  u.add_argument("--top_k", type=int, default=2, help="experts per token, 1..N")
  u.add_argument("--layers", default="all", help="MoE layers: all | every:K | a list like 0,2,5")
  u.add_argument("--noise", type=float, default=0.0,
                 help="experts 1..N-1 get Gaussian noise of std NOISE * std of each weight (0: exact copies)")
  u.add_argument("--router_std", type=float, default=None, help="std of the fresh router; default: model init_std")
  u.add_argument("--seed", type=int, default=0, help="seed of the router and the noise")
  r = sub.add_parser("routing", help="per-language x per-layer expert shares of an MoE model (JSON + heatmap)")
  r.add_argument("--model", required=True, help="MoE model: a training workdir, or a converted/upcycled workdir")
  r.add_argument("--step", type=int, default=None, help="checkpoint step of a training workdir (default: newest)")
  r.add_argument("--data", required=True, help='JSONL of {"text", "lang"} records')
  r.add_argument("--out", required=True, help="directory routing.json and routing.png are written to")
  r.add_argument("--max_docs", type=int, default=0, help="at most this many documents per language (0: all)")
  r.add_argument("--seq_len", type=int, default=0,
                 help="longest window run at once; longer documents are split (0: the model's data.seq_len)")
  r.add_argument("--batch_size", type=int, default=8, help="rows per forward pass")
  args = parser.parse_args(argv)
  return {"upcycle": _upcycle, "routing": _routing}[args.what](args)
