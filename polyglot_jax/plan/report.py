"""Plain-text tables for plans, searches and run plans (the JSON is the dataclasses' dicts)."""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.plan import hlo
from polyglot_jax.plan.aot import StepPlan, mesh_text
from polyglot_jax.plan.topologies import GIB, TpuSlice


def _si(n: float) -> str:
  for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{unit}"
  return f"{n:.3g}"


def _count(n: float) -> str:
  """Parameters and tokens: 1.28B, 100B, 4T (not SI's G)."""
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{unit}"
  return f"{n:.3g}"


def _bytes(n: float) -> str:
  if n >= GIB:
    return f"{n / GIB:.1f} GiB"
  return f"{n / 2 ** 20:.1f} MiB"


def _seconds(s: float) -> str:
  return f"{s:.3g} s" if s >= 0.01 else f"{s * 1e3:.3g} ms"


def model_line(config: ConfigDict, parameters: int) -> str:
  m = config.model
  return (f"{_count(parameters)} parameters: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads "
          f"({m.num_kv_heads} kv), mlp {m.mlp_dim}, vocab {m.vocab_size}; compute {m.dtype}, "
          f"params {m.param_dtype}, scan_layers={m.scan_layers}")


def collectives_line(collectives: dict, always: tuple[str, ...] = ()) -> str:
  """Collective kinds with their count and bytes per chip per step.

  Args:
    collectives: what hlo.collectives returned (StepPlan.collectives).
    always: kinds listed even with a count of 0 (all-to-all for an MoE model).

  Returns:
    One line, e.g. "all-gather 450 (29.9 GiB), all-reduce 199 (18.9 GiB)"; "none" when empty.
  """
  parts = [f"{kind} {collectives[kind]['count']} ({_bytes(collectives[kind]['bytes'])})"
           for kind in hlo.KINDS if collectives.get(kind, {}).get("count") or kind in always]
  if collectives.get("unknown_trip_counts"):
    parts.append(f"[{len(collectives['unknown_trip_counts'])} loop(s) of unknown trip count counted once]")
  return ", ".join(parts) or "none"


def moe_line(config: ConfigDict) -> str:
  """The MoE settings in one line.

  Args:
    config: the planned config.

  Returns:
    e.g. "8 experts, top-2, layers all, dropless dispatch"; '' for a dense model.
  """
  m = config.model
  if m.get("num_experts", 0) <= 0:
    return ""
  return (f"{m.num_experts} experts, top-{m.moe_top_k}, layers {m.moe_layers}, {m.moe_dispatch} dispatch"
          + (f", {m.moe_shared_experts} shared" if m.moe_shared_experts else ""))


def layout_line(plan: StepPlan) -> str:
  """Attention backend, cross-entropy chunking, sequence parallelism and the logits one chip holds.

  Args:
    plan: a StepPlan.

  Returns:
    One line for the "layout" row.
  """
  chunks, chunk = plan.ce_chunks
  ce = (f"chunked cross-entropy: {chunks:,} chunks of {chunk:,} tokens" if chunks
        else "full logits (cross-entropy not chunked)")
  sp = ("sequence parallel (act_length → tensor)" if plan.sequence_parallel and plan.mesh.get("tensor", 1) > 1
        else "no sequence parallelism")
  logits = plan.memory.get("logits_f32")
  return (f"attention {plan.attention or '?'}; {ce}" + (f" ({_bytes(logits)} f32 logits per chip)" if logits else "")
          + f"; {sp}")


def cost_added_line(added: dict) -> str:
  """What the planner added to the compiler's cost (Pallas kernels, the chunked cross-entropy loop).

  Args:
    added: StepPlan.cost_added.

  Returns:
    One line, or '' when nothing was added.
  """
  parts = []
  if added.get("splash_flops"):
    parts.append(f"splash kernels {_si(added['splash_flops'])}FLOP, {_seconds(added['splash_seconds'])} at peak")
  if added.get("grouped_matmul_flops"):
    parts.append(f"MoE grouped-matmul kernels {_si(added['grouped_matmul_flops'])}FLOP, "
                 f"{_seconds(added['grouped_matmul_seconds'])} at peak (balanced routing)")
  if added.get("grouped_matmul_unparsed"):
    parts.append(f"{added['grouped_matmul_unparsed']:g} grouped-matmul call(s) per probe not read: their FLOPs are missing")
  if added.get("splash_unparsed"):
    parts.append(f"{added['splash_unparsed']:g} splash call(s) per probe not read: their FLOPs are missing")
  if added.get("ce_loop_flops") or added.get("ce_loop_seconds"):
    parts.append(f"cross-entropy loop's other chunks {_si(added['ce_loop_flops'])}FLOP, "
                 f"{_seconds(added['ce_loop_seconds'])}")
  return "; ".join(parts)


def format_step(plan: StepPlan, config: ConfigDict, tpu: TpuSlice) -> str:
  """The single-plan table: memory, FLOPs, estimated time, MFU, collectives.

  Args:
    plan: what aot.plan_step returned.
    config: the config it planned (model dimensions for the model line).
    tpu: the slice.

  Returns:
    The table, one "name  value" row per line.
  """
  rows = [("topology", tpu.describe()),
          ("mesh", mesh_text(plan.mesh)),
          ("model", model_line(config, plan.parameters))]
  if moe_line(config):
    rows.append(("experts", moe_line(config)))
  rows += [("batch", f"{plan.global_batch_size} × {plan.seq_len} = {plan.tokens_per_step:,} tokens per step"
                     + (f" in {plan.grad_accum_steps} micro-batches" if plan.grad_accum_steps > 1 else "")
                     + f"; remat {plan.remat_policy}"),
           ("layout", layout_line(plan))]
  verdict = (f"fits, {_bytes(plan.headroom_bytes)} headroom" if plan.fits else plan.note)
  rows.append(("HBM per chip", f"{_bytes(plan.hbm_needed_bytes)} needed of {_bytes(plan.hbm_available_bytes)}"
                               f" → {verdict}"))
  m = plan.memory
  if "temporaries" in m and "arguments" in m:
    rows.append(("", f"arguments {_bytes(m['arguments'])} (state {_bytes(m['state'])}), temporaries "
                     f"{_bytes(m['temporaries'])}, outputs not aliased {_bytes(m['outputs'] - m['aliased'])}, "
                     f"code {_bytes(m['code'])} [{plan.memory_source}]"))
  elif "temporaries" in m:
    rows.append(("", f"state {_bytes(m['state'])} + temporaries {_bytes(m['temporaries'])} [{plan.memory_source}]"))
  else:
    rows.append(("", f"state {_bytes(m.get('state', 0))} [{plan.memory_source}]"))
  rows.append(("model FLOPs/step", f"{_si(plan.model_flops_per_step)} (models/flops.py: 6·N + attention, all chips)"))
  if plan.compiled_flops_per_step:
    rows.append(("compiled FLOPs/step", f"{_si(plan.compiled_flops_per_step)} "
                 f"(compiler's count, all chips; ×{plan.compiled_flops_per_step / plan.model_flops_per_step:.2f} "
                 "of model FLOPs: remat recompute, causal blocks, elementwise ops)"))
  if cost_added_line(plan.cost_added):
    rows.append(("added to compiler", cost_added_line(plan.cost_added)))
  if plan.step_seconds:
    rows.append(("step time", f"{_seconds(plan.step_seconds)} (compiler estimate, not a measurement)"))
    rows.append(("tokens/s per chip", f"{plan.tokens_per_sec_per_chip:,.0f}"))
    rows.append(("MFU (estimated)", f"{plan.mfu:.1%} of {tpu.generation.peak_bf16_flops / 1e12:g} TFLOP/s bf16"))
  elif plan.fits:
    rows.append(("step time", "the compiler gave no estimate" if plan.compiled_flops_per_step
                 else "not estimated (--no_cost)"))
  if plan.collectives:
    moe = config.model.get("num_experts", 0) > 0
    rows.append(("collectives/step", collectives_line(plan.collectives, ("all-to-all",) if moe else ())))
  if plan.compile_seconds:
    rows.append(("compile time", ", ".join(f"{k} {v:.0f} s" for k, v in plan.compile_seconds.items())))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def sequence_parallel_line(plans: list[StepPlan], pick: int) -> str:
  """One line comparing the same step without and with sequence parallelism, and which one was kept.

  Args:
    plans: the same step planned with different "act_length" rules.
    pick: the index of the plan kept.

  Returns:
    e.g. "sequence parallel   off 96.7 GiB (does not fit); on 51.6 GiB, 33.5 s → on (...)".
  """
  parts = []
  for p in plans:
    step = f", {_seconds(p.step_seconds)}" if p.step_seconds else ""
    parts.append(f"{'on' if p.sequence_parallel else 'off'} {_bytes(p.hbm_needed_bytes)}"
                 f"{'' if p.fits else ' (does not fit)'}{step}")
  kept = "on" if plans[pick].sequence_parallel else "off"
  return f"sequence parallel   {'; '.join(parts)} → {kept} (HBM per chip, estimated step)"


def format_search(result, tpu: TpuSlice) -> str:
  """Ranked candidates first, then the ones that do not fit.

  Args:
    result: what search.search returned.
    tpu: the slice.

  Returns:
    The table (one row per candidate; "sp" marks sequence parallelism) and its footnotes.
  """
  header = (f"{'rank':>4}  {'mesh':<28} {'remat':<5} {'sp':<3} {'micro':>5} {'rows/chip':>9} {'HBM GiB':>14} "
            f"{'step s':>8} {'tok/s/chip':>10} {'MFU':>6}  {'all-to-all':>10}")
  lines = [f"search on {tpu.describe()}", header]
  for i, p in enumerate(result.ranked, 1):
    lines.append(_search_row(str(i), p))
  unranked = [p for p in result.tried if p not in result.ranked]
  for p in unranked:
    lines.append(_search_row("-", p) + ("  " + p.note if p.note else "  fits (no cost estimate)"))
  lines.append(f"{result.compiles} compiles; {result.untried} mesh shape(s) not tried (raise --max_compiles); "
               f"rejected by divisibility: {result.rejected or 'none'}")
  lines.append("step s is the compiler's estimate (cost_analysis optimal_seconds), not a measurement")
  return "\n".join(lines)


def _search_row(rank: str, p: StepPlan) -> str:
  dp = math.prod(p.mesh.get(a, 1) for a in mesh_lib.BATCH_AXES)
  rows_per_chip = p.global_batch_size // p.grad_accum_steps // dp
  hbm = f"{p.hbm_needed_bytes / GIB:.1f}/{p.hbm_available_bytes / GIB:.1f}"
  step = f"{p.step_seconds:.3g}" if p.step_seconds else "-"
  tok = f"{p.tokens_per_sec_per_chip:,.0f}" if p.tokens_per_sec_per_chip else "-"
  mfu = f"{p.mfu:.1%}" if p.mfu else "-"
  sp = "on" if p.sequence_parallel and p.mesh.get("tensor", 1) > 1 else "-"
  a2a = str(p.collectives["all-to-all"]["count"]) if p.collectives.get("all-to-all") else "-"
  return (f"{rank:>4}  {mesh_text(p.mesh):<28} {p.remat_policy:<5} {sp:<3} {p.grad_accum_steps:>5} {rows_per_chip:>9} "
          f"{hbm:>14} {step:>8} {tok:>10} {mfu:>6}  {a2a:>10}")


def format_run(run: dict, tpu: TpuSlice, max_rows: int = 0) -> str:
  """Run totals and the per-language table (all rows unless ``max_rows``)."""
  days = (f"{run['days']:.1f} days on {tpu.name} at the compiler's estimated step time"
          if run["days"] else "days unknown (no step-time estimate)")
  lines = [f"run: {run['steps']:,} steps × {run['tokens_per_step']:,} tokens = {_count(run['total_tokens'])} tokens; "
           f"{days}",
           f"mixture: {run['method']}" + (f" (max_epochs {run['max_epochs']:g})" if run["max_epochs"] else "")
           + f" over {len(run['languages'])} languages"]
  lines.extend(f"note: {n}" for n in run["notes"])
  lines.append(f"{'lang':<5} {'mC4 tokens':>11} {'rate':>8} {'run tokens':>11} {'epochs':>7}")
  rows = run["languages"]
  shown = rows if not max_rows or len(rows) <= max_rows else rows[:max_rows // 2] + [None] + rows[-max_rows // 2:]
  for r in shown:
    if r is None:
      lines.append(f"... {len(rows) - 2 * (max_rows // 2)} more languages ...")
      continue
    lines.append(f"{r['lang']:<5} {_count(r['corpus_tokens']):>11} {r['rate']:>8.4f} {_count(r['tokens']):>11} "
                 f"{r['epochs']:>7.2f}")
  return "\n".join(lines)
