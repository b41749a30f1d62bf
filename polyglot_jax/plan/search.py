"""Which sharding should I use: try mesh shapes, remat policies and per-chip batches, rank by step time.

The global batch is a training hyper-parameter, so the search keeps it and
changes the per-chip batch through ``optimizer.grad_accum_steps`` (smaller
micro-batches, same update). Candidates:

- every factorisation of the chip count over (data, fsdp, tensor, expert)
  that the config allows: each sharded model dimension divisible by its
  axes (for an MoE model, config.model.num_experts by the expert axis), the
  micro-batch divisible by the batch axes (data×fsdp×expert), expert > 1 only for a model with
  experts;
- mesh shapes whose parameters and optimizer state alone overflow a chip
  are dropped without compiling (exact per-chip bytes from the abstract
  state);
- for each remaining mesh, in order (fsdp first, then more tensor and data
  parallelism), the cheapest setting that fits is found by compiling:
  remat none → dots → full at the config's micro-batch, then smaller
  micro-batches for the policies predicted to fit there (search._ladder).
  Less recompute first, because remat only adds work. On a mesh with
  tensor > 1 each setting is tried without and then with sequence
  parallelism (the residual stream's length sharded over the tensor axis,
  ``("act_length", "tensor")``), unless ``sequence_parallel`` fixes it;
- that setting gets its cost compiles (aot.probe_cost) at once, and the
  fitting settings are ranked by the compiler's estimated step time. When
  the first fit is without sequence parallelism, the same setting with it
  is compiled and costed too, so the table shows both memory figures and
  the ranking picks between them.

Compiles take seconds (tiny models) to minutes (billions of parameters) on a
laptop-class CPU, so ``max_compiles`` bounds the work; the result says how
many candidates were left untried.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

from ml_collections import ConfigDict

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.plan import aot, topologies
from polyglot_jax.errors import PlanError

REMAT_ORDER = ("none", "dots", "full")


@dataclasses.dataclass
class SearchResult:
  ranked: list[aot.StepPlan]  # Fitting candidates with a step-time estimate, fastest first.
  tried: list[aot.StepPlan]  # Every compiled or state-checked candidate, in search order.
  rejected: dict[str, int]  # Reason → how many mesh shapes the config does not allow.
  untried: int  # Mesh shapes left when max_compiles ran out.
  compiles: int


def factorizations(n: int, parts: int) -> list[tuple[int, ...]]:
  """Ordered tuples of ``parts`` positive integers whose product is ``n``."""
  if parts == 1:
    return [(n,)]
  out = []
  for first in range(1, n + 1):
    if n % first == 0:
      out.extend((first,) + rest for rest in factorizations(n // first, parts - 1))
  return out


SEQUENCE_PARALLEL_MODES = ("search", "off", "on")


def _has_experts(config: ConfigDict) -> bool:
  return "num_experts" in config.model and config.model.num_experts > 1


def mesh_candidates(config: ConfigDict, chips: int) -> tuple[list[dict[str, int]], dict[str, int]]:
  """Mesh shapes the config allows on ``chips`` chips (fsdp-first order) and why others were rejected."""
  allowed, rejected = [], {}
  for shape in factorizations(chips, len(mesh_lib.MESH_AXES)):
    sizes = dict(zip(mesh_lib.MESH_AXES, shape))
    if sizes["expert"] > 1 and not _has_experts(config):
      continue  # Without experts the expert axis only replicates: never useful.
    try:
      aot.check_divisible(aot.with_overrides(config, {"optimizer.grad_accum_steps": 1}), sizes)
    except PlanError as e:
      reason = str(e).split(" is not divisible")[0].split("=")[0]
      rejected[reason] = rejected.get(reason, 0) + 1
      continue
    allowed.append(sizes)
  if _has_experts(config):
    # Expert parallelism is what an MoE mesh is for: before more data parallelism.
    allowed.sort(key=lambda s: (s["tensor"], s["expert"], s["data"], -s["fsdp"]))
  else:
    allowed.sort(key=lambda s: (s["tensor"], s["data"], s["expert"], -s["fsdp"]))
  return allowed, rejected


def accum_options(config: ConfigDict, sizes: dict[str, int]) -> list[int]:
  """grad_accum_steps values ≥ the config's that keep whole micro-batches on every data shard."""
  batch = config.data.global_batch_size
  shards = aot.batch_shards(config, sizes)
  start = config.optimizer.grad_accum_steps
  return [a for a in range(start, batch + 1) if batch % a == 0 and (batch // a) % shards == 0
          and (a == start or a % start == 0)]


def search(config: ConfigDict, topology: str, remats: Sequence[str] = REMAT_ORDER, max_compiles: int = 16,
           max_accum_steps: int = 3, sequence_parallel: str = "search",
           log: Callable[[str], None] = print) -> SearchResult:
  """Tries mesh × remat × micro-batch (× sequence parallelism) candidates for ``topology``, ranks those that fit.

  Args:
    config: the run's config; its mesh, remat policy, grad_accum_steps and "act_length" rule are
      what the search varies.
    topology: slice name, e.g. "v5p-128".
    remats: remat policies to try, in order of preference.
    max_compiles: compile budget (step compiles and cost compiles together).
    max_accum_steps: how many micro-batch sizes to try per mesh after the config's own.
    sequence_parallel: "search" (on meshes with tensor > 1 try without and with), "off" or "on".
    log: progress lines.

  Returns:
    a SearchResult; ``ranked[0]`` is the fastest fitting candidate by the compiler's estimate.
  """
  import jax
  if sequence_parallel not in SEQUENCE_PARALLEL_MODES:
    raise PlanError(f"--sequence_parallel {sequence_parallel}: use one of {', '.join(SEQUENCE_PARALLEL_MODES)}")
  tpu = topologies.get(topology)
  devices = topologies.devices(tpu.name)
  meshes, rejected = mesh_candidates(config, tpu.chips)
  if not meshes:
    raise PlanError(f"no mesh shape over the {tpu.chips} chips of {tpu.name} suits the config: {rejected}")
  # One abstract state gives every mesh's per-chip state bytes (same specs, other sizes).
  first = aot.with_overrides(config, {f"mesh.{k}": v for k, v in meshes[0].items()})
  setup, _ = aot.build_setup(first, meshes[0], devices, aot.default_num_languages(config))
  parameters = sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state.params))
  num_languages = aot.default_num_languages(config)
  tried: list[aot.StepPlan] = []
  ranked: list[aot.StepPlan] = []
  budget = {"compiles": 0}
  untried = 0
  log(f"search on {tpu.describe()}: {len(meshes)} mesh shapes allowed "
      f"({sum(rejected.values())} rejected by divisibility), budget {max_compiles} compiles")

  def attempt(index, sizes, remat, accum, sp) -> aot.StepPlan:
    candidate = aot.with_sequence_parallel(
        aot.with_overrides(config, {"model.remat_policy": remat, "optimizer.grad_accum_steps": accum}), sp)
    log(f"[mesh {index + 1}/{len(meshes)}, compile {budget['compiles'] + 1}/{max_compiles}] {aot.mesh_text(sizes)}, "
        f"remat {remat}, {accum} micro-batch(es) of {config.data.global_batch_size // accum} rows"
        + (", sequence parallel" if sp else ""))
    plan = aot.plan_step(candidate, tpu.name, mesh=sizes, estimate_cost=False)
    budget["compiles"] += 1
    tried.append(plan)
    log(f"    fits: {aot.gib_text(plan.hbm_needed_bytes)} of {aot.gib_text(tpu.hbm_bytes)} GiB per chip"
        if plan.fits else f"    {plan.note}")
    probes = 3 if aot.ce_chunking(candidate, sizes)[0] > 1 else 2  # The chunked loop needs one more probe.
    if plan.fits and budget["compiles"] + probes <= max_compiles:
      sized = aot.with_overrides(candidate, {f"mesh.{k}": v for k, v in sizes.items()})
      flops, seconds, timings, added = aot.probe_cost(sized, sizes, devices, num_languages, log,
                                                      tpu.generation.peak_bf16_flops)
      budget["compiles"] += len(timings)
      plan.compile_seconds.update(timings)
      plan.cost_added = added
      aot.fill_cost(plan, tpu, flops, seconds)
      if seconds:
        ranked.append(plan)
        log(f"    estimated step {seconds:.3g} s, MFU {plan.mfu:.1%}")
    elif plan.fits:
      log("    no compile budget left for its cost (raise --max_compiles)")
    return plan

  for index, sizes in enumerate(meshes):
    state = aot.per_chip_bytes(setup.abstract_state, sizes)
    if state > tpu.hbm_bytes:
      plan = _state_only_plan(config, tpu, sizes, state, parameters)
      tried.append(plan)
      log(f"[mesh {index + 1}/{len(meshes)}] {aot.mesh_text(sizes)}: {plan.note}")
      continue
    if budget["compiles"] >= max_compiles:
      untried += 1
      continue
    if sizes["tensor"] == 1:
      sp_options = (False,)  # Nothing to shard the length over.
    else:
      sp_options = {"search": (False, True), "off": (False,), "on": (True,)}[sequence_parallel]
    accums = accum_options(config, sizes)[:max_accum_steps + 1]
    measured: dict[tuple[str, bool], float] = {}  # (remat, sp) → HBM needed at the first micro-batch size.
    done: dict[tuple[str, int, bool], aot.StepPlan] = {}
    for remat, accum, sp in _ladder(remats, accums, measured, state, tpu.hbm_bytes, sp_options):
      if budget["compiles"] >= max_compiles:
        break
      plan = attempt(index, sizes, remat, accum, sp)
      done[(remat, accum, sp)] = plan
      if accum == accums[0]:
        measured[(remat, sp)] = plan.hbm_needed_bytes
      if not plan.fits:
        continue
      # The cheapest setting that fits this mesh. Without sequence parallelism on a tensor-parallel mesh,
      # its counterpart with it is compiled too: memory with vs without, and the faster one ranks higher.
      other = (remat, accum, not sp)
      if len(sp_options) > 1 and other not in done and budget["compiles"] < max_compiles:
        done[other] = attempt(index, sizes, *other)
      break

  ranked.sort(key=lambda p: p.step_seconds)
  return SearchResult(ranked=ranked, tried=tried, rejected=rejected, untried=untried, compiles=budget["compiles"])


def _ladder(remats: Sequence[str], accums: Sequence[int], measured: dict[tuple[str, bool], float], state: float,
            hbm: float, sp_options: Sequence[bool] = (False,)):
  """(remat, grad_accum_steps, sequence parallel) to try on one mesh, cheapest first; the caller stops at the first fit.

  Every remat policy at the config's micro-batch first, each without and then
  with sequence parallelism when both are options. Smaller micro-batches
  then only for settings whose activations, scaled down from what they
  measured (activations ∝ rows per micro-batch), are predicted to fit.
  """
  for remat in remats:
    for sp in sp_options:
      yield remat, accums[0], sp
  for accum in accums[1:]:
    for remat in remats:
      for sp in sp_options:
        need = measured.get((remat, sp), 0.0)
        if need > state and state + (need - state) * accums[0] / accum > hbm:
          continue
        yield remat, accum, sp


def _state_only_plan(config: ConfigDict, tpu: topologies.TpuSlice, sizes: dict[str, int], state: float,
                     parameters: int) -> aot.StepPlan:
  from polyglot_jax.models.config import ModelConfig
  from polyglot_jax.models.flops import train_flops_per_token
  d = config.data
  tokens = d.global_batch_size * d.seq_len
  return aot.StepPlan(
      topology=tpu.name, chips=tpu.chips, mesh=dict(sizes), remat_policy="any",
      global_batch_size=d.global_batch_size, grad_accum_steps=config.optimizer.grad_accum_steps,
      seq_len=d.seq_len, parameters=parameters, fits=False, hbm_needed_bytes=state, hbm_available_bytes=tpu.hbm_bytes,
      memory_source="state bytes (no compile)", memory={"state": state}, tokens_per_step=tokens,
      model_flops_per_step=train_flops_per_token(ModelConfig.from_config(config.model), d.seq_len) * tokens,
      note=(f"does not fit: needs {aot.gib_text(state)} GiB of {aot.gib_text(tpu.hbm_bytes)} GiB per chip "
            "for parameters and optimizer state alone"))


