"""``polyglot-jax plan``: will this config fit and how fast will it run on a TPU slice, without the slice.

    polyglot-jax plan --config configs/scale_8b.py --topology v5p-128 [--mesh fsdp=32,tensor=2]
    polyglot-jax plan --config configs/scale_1b.py --topology v5e-64 --search [--max_compiles 24]
    polyglot-jax plan ... --json plan.json [--config.data.global_batch_size=512 ...]
    polyglot-jax plan --config configs/scale_8b.py --topology v5p-128 --mesh fsdp=16,tensor=4 --sequence_parallel search

Prints the step table (HBM per chip, FLOPs, the compiler's step-time
estimate, tokens/s/chip, MFU, collectives) and the run plan (tokens, steps,
tokens and epochs per language, days). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _progress(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def main(argv: list[str], overrides: list[str]) -> int:
  """Runs ``polyglot-jax plan``; PlanError and ConfigError reach the CLI, which prints them as one line."""
  parser = argparse.ArgumentParser(prog="polyglot-jax plan", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="ml_collections config file (configs/*.py)")
  parser.add_argument("--topology", required=True, help="Cloud TPU slice, e.g. v5p-256, v5e-16, v4-32, v6e-64")
  parser.add_argument("--mesh", default="", help="mesh axis sizes, e.g. fsdp=64,tensor=4 (default: config.mesh)")
  parser.add_argument("--search", action="store_true", help="try mesh shapes, remat policies and micro-batches")
  parser.add_argument("--max_compiles", type=int, default=16, help="--search: compile budget")
  parser.add_argument("--remat", default="none,dots,full", help="--search: remat policies to try, in order")
  parser.add_argument("--sequence_parallel", default="", choices=("", "on", "off", "search"),
                      help="shard the residual stream's length over the tensor axis ('act_length' → tensor): "
                           "on | off | search (plan both, keep the faster one that fits); default: the config's "
                           "rules for a plan, search for --search")
  parser.add_argument("--no_cost", action="store_true", help="skip the cost compiles (memory and fit only)")
  parser.add_argument("--json", default="", help="also write the plan as JSON here")
  parser.add_argument("--language_rows", type=int, default=0, help="show only this many language rows (0: all)")
  args = parser.parse_args(argv)

  import jax

  from polyglot_jax.errors import PlanError
  # The compile targets the TPU slice's devices from libtpu; nothing runs on a
  # local device, so JAX never needs to probe for a local TPU.
  jax.config.update("jax_platforms", "cpu")
  from polyglot_jax import configs as config_lib
  from polyglot_jax.plan import aot, report, run_plan, search, topologies
  config = config_lib.load_config(args.config, overrides)
  tpu = topologies.get(args.topology)
  started = time.perf_counter()
  out = {"config": args.config, "overrides": list(overrides), "topology": tpu.name, "chips": tpu.chips,
         "hbm_bytes_per_chip": tpu.hbm_bytes, "peak_bf16_flops_per_chip": tpu.generation.peak_bf16_flops}
  if args.search:
    if args.mesh:
      raise PlanError("--mesh and --search both given: --search tries the mesh shapes itself; drop one")
    remats = tuple(r for r in args.remat.split(",") if r)
    unknown = [r for r in remats if r not in search.REMAT_ORDER]
    if unknown or not remats:
      raise PlanError(f"--remat {args.remat}: policies are {', '.join(search.REMAT_ORDER)}")
    result = search.search(config, tpu.name, remats=remats, max_compiles=args.max_compiles,
                           sequence_parallel=args.sequence_parallel or "search", log=_progress)
    print(report.format_search(result, tpu))
    out["search"] = {"ranked": [p.to_dict() for p in result.ranked], "tried": [p.to_dict() for p in result.tried],
                     "rejected": result.rejected, "untried": result.untried, "compiles": result.compiles}
    best = result.ranked[0] if result.ranked else None
    if best is not None:
      print(f"\nbest: mesh {aot.mesh_text(best.mesh)}, remat {best.remat_policy}, "
            f"grad_accum_steps {best.grad_accum_steps}"
            + (", sequence parallel" if best.sequence_parallel and best.mesh["tensor"] > 1 else "")
            + f": {best.step_seconds:.3g} s per step (compiler estimate)")
      print(f"best: collectives/step {report.collectives_line(best.collectives, ('all-to-all',))}")
      print(f"best: {report.layout_line(best)}")
    step_seconds = best.step_seconds if best is not None else None
  else:
    mesh = aot.parse_mesh(args.mesh) if args.mesh else None
    _progress(f"planning {args.config} on {tpu.describe()}")
    variants = {"on": (True,), "off": (False,), "search": (False, True)}.get(args.sequence_parallel)
    configs = [aot.with_sequence_parallel(config, sp) for sp in variants] if variants else [config]
    plans = [aot.plan_step(c, tpu.name, mesh=mesh, estimate_cost=not args.no_cost, log=_progress) for c in configs]
    pick = min(range(len(plans)), key=lambda i: (not plans[i].fits, plans[i].step_seconds or float("inf"),
                                                 plans[i].hbm_needed_bytes))
    plan, config = plans[pick], configs[pick]
    print(report.format_step(plan, config, tpu))
    if len(plans) > 1:
      print(report.sequence_parallel_line(plans, pick))
      out["sequence_parallel"] = [p.to_dict() for p in plans]
    out["step"] = plan.to_dict()
    step_seconds = plan.step_seconds
  run = run_plan.run_plan(config, step_seconds)
  print()
  print(report.format_run(run, tpu, args.language_rows))
  out["run"] = run
  out["wall_seconds"] = time.perf_counter() - started
  _progress(f"planned in {out['wall_seconds']:.0f} s")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)
    _progress(f"wrote {args.json}")
  return 0
