"""Which sharding should I use: try mesh shapes, remat policies and per-chip batches, rank by step time.

The global batch is a training hyper-parameter, so the search keeps it and
changes the per-chip batch through ``optimizer.grad_accum_steps`` (smaller
micro-batches, same update). Candidates:

- every factorisation of the chip count over (data, fsdp, tensor, expert)
  that the config allows: each sharded model dimension divisible by its
  axes, the micro-batch divisible by data×fsdp, expert > 1 only for a model
  with experts;
- mesh shapes whose parameters and optimizer state alone overflow a chip
  are dropped without compiling (exact per-chip bytes from the abstract
  state);
- for each remaining mesh, in order (fsdp first, then more tensor and data
  parallelism), the cheapest setting that fits is found by compiling:
  remat none → dots → full at the config's micro-batch, then smaller
  micro-batches for the policies predicted to fit there (search._ladder).
  Less recompute first, because remat only adds work;
- that setting gets its cost compiles (aot.probe_cost) at once, and the
  fitting settings are ranked by the compiler's estimated step time.

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
  allowed.sort(key=lambda s: (s["tensor"], s["data"], s["expert"], -s["fsdp"]))
  return allowed, rejected


def accum_options(config: ConfigDict, sizes: dict[str, int]) -> list[int]:
  """grad_accum_steps values ≥ the config's that keep whole micro-batches on every data shard."""
  batch = config.data.global_batch_size
  shards = sizes["data"] * sizes["fsdp"]
  start = config.optimizer.grad_accum_steps
  return [a for a in range(start, batch + 1) if batch % a == 0 and (batch // a) % shards == 0
          and (a == start or a % start == 0)]


def search(config: ConfigDict, topology: str, remats: Sequence[str] = REMAT_ORDER, max_compiles: int = 16,
           max_accum_steps: int = 3, log: Callable[[str], None] = print) -> SearchResult:
  """Tries mesh × remat × micro-batch candidates for ``topology`` and ranks those that fit.

  Args:
    config: the run's config; its mesh, remat policy and grad_accum_steps are what the search varies.
    topology: slice name, e.g. "v5p-128".
    remats: remat policies to try, in order of preference.
    max_compiles: compile budget (step compiles and cost compiles together).
    max_accum_steps: how many micro-batch sizes to try per mesh after the config's own.
    log: progress lines.

  Returns:
    a SearchResult; ``ranked[0]`` is the fastest fitting candidate by the compiler's estimate.
  """
  import jax
  tpu = topologies.get(topology)
  devices = topologies.devices(tpu.name)
  meshes, rejected = mesh_candidates(config, tpu.chips)
  if not meshes:
    raise PlanError(f"no mesh shape over the {tpu.chips} chips of {tpu.name} suits the config: {rejected}")
  # One abstract state gives every mesh's per-chip state bytes (same specs, other sizes).
  first = aot.with_overrides(config, {f"mesh.{k}": v for k, v in meshes[0].items()})
  setup, _ = aot.build_setup(first, meshes[0], devices, aot.default_num_languages(config))
  parameters = sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state.params))
  tried: list[aot.StepPlan] = []
  ranked: list[aot.StepPlan] = []
  compiles = 0
  untried = 0
  log(f"search on {tpu.describe()}: {len(meshes)} mesh shapes allowed "
      f"({sum(rejected.values())} rejected by divisibility), budget {max_compiles} compiles")
  for index, sizes in enumerate(meshes):
    state = aot.per_chip_bytes(setup.abstract_state, sizes)
    if state > tpu.hbm_bytes:
      plan = _state_only_plan(config, tpu, sizes, state, parameters)
      tried.append(plan)
      log(f"[mesh {index + 1}/{len(meshes)}] {aot.mesh_text(sizes)}: {plan.note}")
      continue
    if compiles >= max_compiles:
      untried += 1
      continue
    accums = accum_options(config, sizes)[:max_accum_steps + 1]
    measured: dict[str, float] = {}  # remat → HBM needed at the first micro-batch size.
    for remat, accum in _ladder(remats, accums, measured, state, tpu.hbm_bytes):
      if compiles >= max_compiles:
        break
      candidate = aot.with_overrides(config, {"model.remat_policy": remat, "optimizer.grad_accum_steps": accum})
      log(f"[mesh {index + 1}/{len(meshes)}, compile {compiles + 1}/{max_compiles}] {aot.mesh_text(sizes)}, "
          f"remat {remat}, {accum} micro-batch(es) of {config.data.global_batch_size // accum} rows")
      plan = aot.plan_step(candidate, tpu.name, mesh=sizes, estimate_cost=False)
      compiles += 1
      tried.append(plan)
      if accum == accums[0]:
        measured[remat] = plan.hbm_needed_bytes
      log(f"    fits: {aot.gib_text(plan.hbm_needed_bytes)} of {aot.gib_text(tpu.hbm_bytes)} GiB per chip"
          if plan.fits else f"    {plan.note}")
      if not plan.fits:
        continue
      # The cheapest setting that fits this mesh: cost it now, while the budget lasts.
      if compiles + 2 > max_compiles:
        log("    no compile budget left for its cost (raise --max_compiles)")
        break
      sized = aot.with_overrides(candidate, {f"mesh.{k}": v for k, v in sizes.items()})
      flops, seconds, timings = aot.probe_cost(sized, sizes, devices, aot.default_num_languages(config), log)
      compiles += len(timings)
      plan.compile_seconds.update(timings)
      aot.fill_cost(plan, tpu, flops, seconds)
      if seconds:
        ranked.append(plan)
        log(f"    estimated step {seconds:.3g} s, MFU {plan.mfu:.1%}")
      break

  ranked.sort(key=lambda p: p.step_seconds)
  return SearchResult(ranked=ranked, tried=tried, rejected=rejected, untried=untried, compiles=compiles)


def _ladder(remats: Sequence[str], accums: Sequence[int], measured: dict[str, float], state: float,
            hbm: float):
  """(remat, grad_accum_steps) to try on one mesh, cheapest first; the caller stops at the first fit.

  Every remat policy at the config's micro-batch first. Smaller micro-batches
  then only for policies whose activations, scaled down from what they
  measured (activations ∝ rows per micro-batch), are predicted to fit.
  """
  for remat in remats:
    yield remat, accums[0]
  for accum in accums[1:]:
    for remat in remats:
      need = measured.get(remat, 0.0)
      if need > state and state + (need - state) * accums[0] / accum > hbm:
        continue
      yield remat, accum


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


