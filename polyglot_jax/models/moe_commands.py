"""``polyglot-jax moe upcycle``: turn a dense checkpoint into an MoE one (models/upcycle.py)."""

from __future__ import annotations

import argparse


def _upcycle(args) -> int:
  from polyglot_jax.models import upcycle
  info = upcycle.upcycle(args.source, args.workdir, args.num_experts, args.top_k, args.layers, noise=args.noise,
                         router_std=args.router_std, seed=args.seed)
  m = info["config"].model
  print(f"wrote {args.workdir}: {m.num_experts} experts, top-{m.moe_top_k}, MoE layers {list(info['layers'])} of "
        f"{m.num_layers} (scan_layers={m.scan_layers}); {info['dense_params'] / 1e6:.3f}M → "
        f"{info['moe_params'] / 1e6:.3f}M parameters; expert 0 = the dense FFN, noise={args.noise}")
  print(f"train from it with: polyglot-jax train --config configs/moe_lpr_stage1.py --workdir STAGE1 "
        f"--config.init_from={args.workdir} --config.model.num_experts={m.num_experts} "
        f"--config.model.moe_top_k={m.moe_top_k} --config.model.moe_layers={m.moe_layers}"
        + ("" if m.scan_layers else " --config.model.scan_layers=False"))
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
  args = parser.parse_args(argv)
  return {"upcycle": _upcycle}[args.what](args)
