"""Compile the real train step for a TPU slice on this machine and read off what it needs.

The step is the trainer's own (``trainer.build(...).train_step``: the
objective, remat policy, optimizer and shardings of training), lowered with
abstract inputs over a mesh of the slice's devices (from libtpu, no TPU
present) and compiled by the XLA TPU compiler. From the compiled program:

- **HBM per chip**: ``memory_analysis()`` — arguments + outputs − aliased
  (the donated state) + temporaries + code, against what the compiler allows
  per chip. A compile that runs out of HBM is caught and its figure parsed.
- **Collectives**: counted in ``as_text()`` with loop bodies multiplied by
  their trip counts (plan/hlo.py).
- **FLOPs and step time**: ``cost_analysis()`` counts a ``while`` body once,
  not once per iteration, so on the scanned program it sees one layer of
  many, and the TPU compiler's windowed einsums (collective matmuls, also
  loops) hide part of every sharded matmul. The cost therefore comes from
  two extra compiles of the same step with 1 and 2 unrolled layers and
  windowed einsums off (no loops at all), extrapolated linearly to the
  configured depth: cost(L) = cost(1) + (L − 1)·(cost(2) − cost(1)). Layers
  are identical, so this is exact up to the compiler's choices (checked
  against a fully unrolled 16-layer compile: FLOPs and estimated time agree
  to 0.1%). With gradient accumulation the probes run one micro-batch and the
  step costs A of them (the optimizer update is then counted A times; it is
  memory-bound and small next to forward and backward).

``optimal_seconds`` is the compiler's own estimate of the run time, a sum of
its per-operation cost model; it is not a measurement. The cost model scores
an operation it cannot estimate (a top-level custom-call such as
ConcatBitcast) as −1 s; those are counted in the HLO and added back
(hlo.uncosted_custom_calls), so the estimate leaves them out. Two more gaps are
filled by the planner (probe_cost): the matmuls inside Pallas kernels (splash
attention: the cost model sees only their memory traffic) are added at the
chip's peak rate, and the chunked cross-entropy's loops (a body counts once)
get their other chunks from one more probe with those loops unrolled twice.
MFU here is model FLOPs (models/flops.py, the trainer's MFU numerator) over
that estimated time and the chip's peak.

Sequence parallelism is a logical-axis rule, ("act_length", "tensor")
(with_sequence_parallel); the planner compiles whichever rules it is given.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import re
import time
from typing import Any, Callable, Mapping

from ml_collections import ConfigDict

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.plan import hlo, topologies
from polyglot_jax.errors import PlanError

GIB = topologies.GIB
# Collective matmuls are loops; off in the cost probes so every dot is counted.
NO_WINDOWED_EINSUM = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                      "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
# Logical axis name of a weight dimension → the config.model field that sizes it.
_MODEL_DIMS = {"vocab": "vocab_size", "embed": "d_model", "heads": "num_heads", "kv_heads": "num_kv_heads",
               "mlp": "mlp_dim", "head_dim": "head_dim", "layers": "num_layers", "expert": "num_experts"}
# The rule that shards the residual stream's length over the tensor axis (sequence parallelism).
SEQUENCE_PARALLEL_RULE = ("act_length", "tensor")


@dataclasses.dataclass
class StepPlan:
  """What one (config, slice, mesh) needs and how fast the compiler thinks it runs."""
  topology: str
  chips: int
  mesh: dict[str, int]
  remat_policy: str
  global_batch_size: int
  grad_accum_steps: int
  seq_len: int
  parameters: int
  fits: bool
  hbm_needed_bytes: float
  hbm_available_bytes: float
  memory_source: str  # memory_analysis | compile error | state bytes (no compile)
  memory: dict[str, float] = dataclasses.field(default_factory=dict)
  note: str = ""  # Why it does not fit, in one line.
  tokens_per_step: int = 0
  model_flops_per_step: float = 0.0  # models/flops.py × tokens (all chips).
  compiled_flops_per_step: float | None = None  # The compiler's count, all chips (remat recompute included).
  step_seconds: float | None = None  # Compiler estimate (optimal_seconds), not a measurement.
  tokens_per_sec_per_chip: float | None = None
  mfu: float | None = None
  collectives: dict[str, Any] = dataclasses.field(default_factory=dict)
  compile_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  sequence_parallel: bool = False  # Residual stream's length sharded over tensor (("act_length", "tensor")).
  attention: str = ""  # The attention backend the step runs (config.model.attention_impl resolved for TPU).
  ce_chunks: tuple[int, int] = (0, 0)  # Chunked cross-entropy: (chunks, tokens per chunk); (0, 0) = full logits.
  # What the planner added to the compiler's cost (see probe_cost): Pallas kernels' matmuls and the
  # chunked cross-entropy loop's other iterations, per chip per step.
  cost_added: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def headroom_bytes(self) -> float:
    return self.hbm_available_bytes - self.hbm_needed_bytes

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["headroom_bytes"] = self.headroom_bytes
    return out


# ---------------------------------------------------------------------------
# Mesh and divisibility checks (one-line errors naming both numbers)
# ---------------------------------------------------------------------------


def parse_mesh(text: str) -> dict[str, int]:
  """``fsdp=64,tensor=4`` → {"fsdp": 64, "tensor": 4} (unnamed axes are 1)."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, eq, value = part.partition("=")
    if not eq or name not in mesh_lib.MESH_AXES:
      raise PlanError(f"--mesh '{text}': write axis=size pairs over {mesh_lib.MESH_AXES}, e.g. fsdp=64,tensor=4")
    try:
      out[name] = int(value)
    except ValueError:
      raise PlanError(f"--mesh '{text}': size of '{name}' must be an integer, got '{value}'") from None
  return out


def mesh_sizes(axes: Mapping[str, int], tpu: topologies.TpuSlice) -> dict[str, int]:
  """All four mesh axis sizes for slice ``tpu``.

  Args:
    axes: axis name → size (from --mesh or config.mesh); one may be -1 (the rest of the chips).
    tpu: the slice.

  Returns:
    {data, fsdp, tensor, expert} sizes multiplying to the chip count; otherwise a
    PlanError naming the mesh's chip count and the slice's.
  """
  sizes = {name: int(axes.get(name, 1)) for name in mesh_lib.MESH_AXES}
  fixed = math.prod(s for s in sizes.values() if s != -1)
  free = [n for n, s in sizes.items() if s == -1]
  described = ",".join(f"{n}={s}" for n, s in sizes.items() if s != 1)
  cores = " (v4/v5p names count TensorCores, 2 per chip)" if tpu.generation.cores_per_chip > 1 else ""
  if not free and fixed != tpu.chips:
    raise PlanError(f"mesh {described} needs {fixed} chips but {tpu.name} has {tpu.chips}{cores}; "
                    "make the axis sizes multiply to the chip count or set one to -1")
  if free and (len(free) > 1 or tpu.chips % fixed):
    raise PlanError(f"mesh {described}: the fixed axes multiply to {fixed}, which does not divide the "
                    f"{tpu.chips} chips of {tpu.name}{cores}")
  return mesh_lib.resolve_mesh_shape(sizes, tpu.chips)


def check_divisible(config: ConfigDict, sizes: Mapping[str, int]) -> None:
  """Raises a PlanError naming both numbers unless each sharded dimension divides by its mesh axes.

  Args:
    config: the run's config (model dims, logical_axis_rules, batch, grad_accum_steps).
    sizes: mesh axis sizes.
  """
  rules = dict(mesh_lib.rules_tuple(config.logical_axis_rules))
  m = config.model
  head_dim = m.head_dim if m.head_dim > 0 else m.d_model // m.num_heads

  def axes_of(logical):
    target = rules.get(logical)
    return (target,) if isinstance(target, str) else tuple(target or ())

  for logical, key in _MODEL_DIMS.items():
    if key == "num_experts" and m.get("num_experts", 0) <= 0:
      continue  # A dense model has no expert dimension: an expert axis only replicates it.
    axes = axes_of(logical)
    shards = math.prod(sizes[a] for a in axes)
    value = head_dim if key == "head_dim" else m[key]
    if shards > 1 and value % shards:
      raise PlanError(f"config.model.{key}={value} is not divisible by mesh {'×'.join(axes)}={shards} "
                      f"(logical axis '{logical}'); change one of them")
  batch_axes = axes_of("batch")
  shards = batch_shards(config, sizes)
  accum = config.optimizer.grad_accum_steps
  micro = config.data.global_batch_size // accum
  if micro % shards:
    raise PlanError(f"config.data.global_batch_size={config.data.global_batch_size} gives {micro} rows per "
                    f"micro-batch (grad_accum_steps={accum}), which is not divisible by mesh "
                    f"{'×'.join(batch_axes)}={shards}; change the batch or the mesh")


def axis_shards(config: ConfigDict, sizes: Mapping[str, int], logical: str) -> int:
  """How many shards a logical axis is split into: the product of the sizes of its rule's mesh axes.

  Args:
    config: the run's config (its logical_axis_rules).
    sizes: mesh axis sizes.
    logical: a logical axis name, e.g. "batch" or "expert".

  Returns:
    The number of shards (1 for a name without a rule).
  """
  target = dict(mesh_lib.rules_tuple(config.logical_axis_rules)).get(logical)
  axes = (target,) if isinstance(target, str) else tuple(target or ())
  return math.prod(sizes.get(a, 1) for a in axes)


def batch_shards(config: ConfigDict, sizes: Mapping[str, int]) -> int:
  """How many shards the batch rows are split into (data × fsdp × expert under the default rules)."""
  return axis_shards(config, sizes, "batch")


def with_overrides(config: ConfigDict, values: Mapping[str, Any]) -> ConfigDict:
  """A copy of the (locked) config with dotted keys replaced."""
  from polyglot_jax import configs as config_lib
  out = copy.deepcopy(config)
  for key, value in values.items():
    config_lib.set_key(out, key, value, from_string=False)
  return out


def is_sequence_parallel(config: ConfigDict) -> bool:
  """Whether config's rules shard the residual stream's length ("act_length") over the tensor axis.

  Args:
    config: a config with logical_axis_rules.

  Returns:
    True when the "act_length" rule names the tensor axis.
  """
  target = dict(mesh_lib.rules_tuple(config.logical_axis_rules)).get("act_length")
  return "tensor" in ((target,) if isinstance(target, str) else tuple(target or ()))


def with_sequence_parallel(config: ConfigDict, enabled: bool) -> ConfigDict:
  """A copy of config whose "act_length" rule is ("act_length", "tensor") (enabled) or None.

  Args:
    config: the run's config.
    enabled: shard the residual stream between blocks over the tensor axis (sequence
      parallelism, as MaxText does) or keep it whole.

  Returns:
    the copy; every other rule is kept.
  """
  rules = [r for r in mesh_lib.rules_tuple(config.logical_axis_rules) if r[0] != "act_length"]
  rules.append(SEQUENCE_PARALLEL_RULE if enabled else ("act_length", None))
  return with_overrides(config, {"logical_axis_rules": tuple(rules)})


def attention_backend(config: ConfigDict) -> str:
  """The attention backend a TPU step runs: config.model.attention_impl with ``auto`` resolved.

  Args:
    config: the planned config.

  Returns:
    'xla', 'dot_product_attention' or 'splash' (models/attention.resolve_attention_impl on "tpu").
  """
  from polyglot_jax.models import attention
  m = config.model
  head_dim = m.head_dim if m.head_dim > 0 else m.d_model // m.num_heads
  return attention.resolve_attention_impl(m.attention_impl, "tpu", config.data.seq_len, m.dtype, head_dim)


def ce_chunking(config: ConfigDict, sizes: Mapping[str, int] | None = None) -> tuple[int, int]:
  """(chunks, tokens per chunk) of the chunked cross-entropy for one micro-batch; (0, 0) when it is off.

  The same resolution the objective makes (objectives/lm.chunk_size_for → models/chunked_ce.resolve_chunk_size)
  over the micro-batch's tokens (all chips together), with auto mode sized by one chip's share of them
  and the accelerator bound per chunk.

  Args:
    config: the planned config (model.ce_chunk_size, batch, grad_accum_steps).
    sizes: mesh axis sizes; the "batch" rule's axes split the tokens. None: the config's mesh
      when it has no -1 axis, else unsplit.

  Returns:
    (number of chunks, tokens per chunk), both over all chips.
  """
  from polyglot_jax.models import chunked_ce
  m, d = config.model, config.data
  tokens = d.global_batch_size // config.optimizer.grad_accum_steps * d.seq_len
  if sizes is None:
    sizes = {k: int(v) for k, v in config.mesh.items()} if all(int(v) > 0 for v in config.mesh.values()) else {}
  chunk = chunked_ce.resolve_chunk_size(tokens, m.vocab_size, m.ce_chunk_size, m.ce_chunk_threshold_bytes,
                                        shards=_rule_shards(config, sizes, "batch"),
                                        max_bytes=chunked_ce.max_chunk_bytes("tpu"))
  return (-(-tokens // chunk), chunk) if chunk else (0, 0)


def _rule_shards(config: ConfigDict, sizes: Mapping[str, int], logical: str) -> int:
  """How many chips a logical axis is split over on a mesh of ``sizes`` (1 when it has no rule)."""
  target = dict(mesh_lib.rules_tuple(config.logical_axis_rules)).get(logical)
  return math.prod(sizes.get(a, 1) for a in ((target,) if isinstance(target, str) else tuple(target or ())))


def logits_bytes_per_chip(config: ConfigDict, sizes: Mapping[str, int]) -> float:
  """Bytes of the float32 logits one chip holds at once: the micro-batch's, or one chunk's when chunked.

  An analytic figure (not the compiler's): tokens per chip (the "batch" axes split the rows; a chunk's
  tokens are spread over the same axes) × the vocabulary over the "act_vocab" axes × 4 bytes. The
  gradient of the full logits is another array of the same size.

  Args:
    config: the planned config.
    sizes: mesh axis sizes.

  Returns:
    bytes per chip.
  """
  def shards(logical):
    return _rule_shards(config, sizes, logical)

  d = config.data
  chunks, chunk = ce_chunking(config, sizes)
  tokens = -(-chunk // shards("batch")) if chunks else d.global_batch_size // config.optimizer.grad_accum_steps \
      // shards("batch") * d.seq_len
  return float(tokens * -(-config.model.vocab_size // shards("act_vocab")) * 4)


# ---------------------------------------------------------------------------
# Compiling
# ---------------------------------------------------------------------------


def default_num_languages(config: ConfigDict) -> int:
  """Languages of the objective's per-language metrics (1 when the config lists none)."""
  return max(1, len(config.data.languages))


def build_setup(config: ConfigDict, sizes: Mapping[str, int], devices, num_languages: int):
  """The trainer's Setup over a mesh of ``devices`` and its abstract batch."""
  from polyglot_jax.train import trainer
  mesh = mesh_lib.make_mesh(sizes, devices=devices)
  setup = trainer.build(config, num_languages, mesh=mesh)
  return setup, trainer.abstract_batch(setup)


def per_chip_bytes(tree, sizes: Mapping[str, int] | None = None) -> float:
  """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (its largest shard).

  Args:
    tree: ShapeDtypeStructs with NamedShardings (e.g. Setup.abstract_state).
    sizes: if given, lay the same PartitionSpecs over a mesh of these axis
      sizes instead: specs name mesh axes, not sizes, so one abstract state
      serves every mesh shape a search tries.

  Returns:
    bytes, before the TPU pads small dimensions to its tiles.
  """
  import jax
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    if sizes is None:
      shape = leaf.sharding.shard_shape(leaf.shape)
    else:
      spec = tuple(leaf.sharding.spec) + (None,) * (len(leaf.shape) - len(leaf.sharding.spec))
      shape = []
      for dim, axes in zip(leaf.shape, spec):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        shape.append(-(-dim // math.prod(sizes[a] for a in axes)))
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


_OOM = re.compile(r"required for ([^(]*?)\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_oom(message: str) -> tuple[float, float, str] | None:
  """(bytes required, bytes available, what) from the TPU compiler's out-of-HBM error."""
  m = _OOM.search(message)
  if not m:
    return None
  return (float(m.group(2)) * _UNITS[m.group(3)], float(m.group(4)) * _UNITS[m.group(5)], m.group(1).strip())


def _is_oom(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower()


def _compile(lowered, options: Mapping[str, Any] | None = None):
  if options:
    try:
      return lowered.compile(compiler_options=dict(options))
    except Exception as e:  # noqa: BLE001 — an older libtpu may not know a flag: compile as training would.
      if _is_oom(e):
        raise
      logging.warning("compile with %s failed (%s); compiling with default options", options, str(e)[:200])
  return lowered.compile()


def _cost(compiled) -> tuple[float, float | None]:
  """(FLOPs per chip, estimated seconds) of a loop-free program; seconds None if the compiler gave none."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = float(analysis.get("flops", 0.0) or 0.0)
  seconds = analysis.get("optimal_seconds")
  if seconds is None:
    return flops, None
  # Operations the cost model cannot score count −1 s each; add them back.
  seconds = float(seconds) + hlo.uncosted_custom_calls(compiled.as_text())
  return flops, (seconds if seconds > 0 else None)


def probe_cost(config: ConfigDict, sizes: Mapping[str, int], devices, num_languages: int,
               log: Callable[[str], None], peak_flops: float | None = None
               ) -> tuple[float, float | None, dict[str, float], dict[str, float]]:
  """Cost of one train step from compiles of the same step with 1 and 2 unrolled layers.

  Two things the compiler's ``cost_analysis`` leaves out are added:

  - **Pallas kernels** (splash attention; MoE grouped matmuls, hlo.grouped_matmul_kernels,
    scaled to the rows of the device's own experts under balanced routing,
    1 / the expert shards): the cost model charges a kernel's
    operands and results as memory traffic and counts no FLOPs inside it.
    Their matmul FLOPs (hlo.splash_kernels) are added to the FLOPs, and to the
    time at the chip's peak bf16 rate (``peak_flops``): the MXU time of a
    kernel that runs at 100% of peak, on top of its memory traffic.
  - **The chunked cross-entropy loops** (models/chunked_ce.py): a ``while``
    body counts once, so the probes see one chunk of many. The 1-layer probe
    is compiled once more with those scans unrolled twice (two chunks per
    loop iteration); the difference is one chunk's cost, forward and backward
    loop together, in the step's own shardings, and chunks − 1 of it are added.

  Args:
    config: the step's config, mesh sizes already set.
    sizes: mesh axis sizes.
    devices: the slice's devices.
    num_languages: languages of the objective's metrics.
    log: progress lines.
    peak_flops: bf16 FLOP/s per chip, for the time of the Pallas kernels' matmuls (None: their
      FLOPs are added, their time is not).

  Returns:
    (FLOPs per chip, estimated seconds or None, {probe name: compile seconds}, {what was added to
    the compiler's figures: splash_flops, splash_seconds, grouped_matmul_flops, grouped_matmul_seconds,
    ce_loop_flops, ce_loop_seconds, per chip
    per step; and the compiler's own figures for each probe, probe_N_layer_flops / _seconds}),
    extrapolated to config.model.num_layers and multiplied by grad_accum_steps.
  """
  accum = config.optimizer.grad_accum_steps
  layers = config.model.num_layers
  base = {"model.scan_layers": False, "optimizer.grad_accum_steps": 1,
          "data.global_batch_size": config.data.global_batch_size // accum}
  chunks, chunk = ce_chunking(config, sizes)
  results, timings, splash, gmm, raw = [], {}, [], [], {}
  # MoE grouped-matmul kernels (dropless on TPU) skip the rows of other devices' experts: under balanced
  # routing a device's experts get 1 / (expert shards) of the rows its kernels are handed.
  local_rows = 1.0 / axis_shards(config, sizes, "expert")
  probes = [(depth, 1) for depth in sorted({1, min(2, layers)})] + ([(1, 2)] if chunks > 1 else [])
  for depth, unroll in probes:
    probe = with_overrides(config, dict(base, **{"model.num_layers": depth}))
    setup, batch = build_setup(probe, sizes, devices, num_languages)
    name = f"probe_{depth}_layer" + ("_ce_unroll_2" if unroll > 1 else "")
    t = time.perf_counter()
    log(f"  cost probe: {depth} unrolled layer(s)" + (f", cross-entropy loops unrolled ×{unroll} "
                                                      f"({chunks} chunks of {chunk} tokens)" if unroll > 1 else ""))
    with _unrolled_scans(unroll):
      lowered = setup.train_step.lower(setup.abstract_state, batch)
    compiled = _compile(lowered, NO_WINDOWED_EINSUM)
    timings[name] = time.perf_counter() - t
    flops, seconds = _cost(compiled)
    raw[f"{name}_flops"], raw[f"{name}_seconds"] = flops, seconds
    text = compiled.as_text()
    kernels = hlo.splash_kernels(text)
    raw["splash_unparsed"] = max(raw.get("splash_unparsed", 0), kernels["unparsed"])
    grouped = hlo.grouped_matmul_kernels(text)
    raw["grouped_matmul_unparsed"] = max(raw.get("grouped_matmul_unparsed", 0), grouped["unparsed"])
    kernel_flops = kernels["flops"] + grouped["flops"] * local_rows
    flops += kernel_flops
    if seconds is not None and peak_flops:
      seconds += kernel_flops / peak_flops
    if unroll == 1:
      splash.append(kernels["flops"])
      gmm.append(grouped["flops"] * local_rows)
      results.append((flops, seconds))
    else:
      # Counted now: 2 chunks per loop body, plus one more when an odd count leaves a remainder loop.
      counted = 1 + (chunks % 2)
      f1, s1 = results[0]
      loop_flops = (chunks - 1) * (flops - f1) / counted
      loop_seconds = ((chunks - 1) * (seconds - s1) / counted
                      if seconds is not None and s1 is not None else None)
    del compiled
  (f1, s1) = results[0]
  (f2, s2) = results[-1] if layers > 1 else results[0]
  flops = f1 + (layers - 1) * (f2 - f1)
  seconds = s1 + (layers - 1) * (s2 - s1) if s1 is not None and s2 is not None else None
  splash_flops = splash[0] + (layers - 1) * (splash[-1] - splash[0])
  gmm_flops = gmm[0] + (layers - 1) * (gmm[-1] - gmm[0])
  added = {"splash_flops": splash_flops * accum,
           "splash_seconds": splash_flops / peak_flops * accum if peak_flops else 0.0,
           "grouped_matmul_flops": gmm_flops * accum,
           "grouped_matmul_seconds": gmm_flops / peak_flops * accum if peak_flops else 0.0, **raw}
  if chunks > 1:
    flops += loop_flops
    if seconds is not None and loop_seconds is not None:
      seconds += loop_seconds
    added.update(ce_loop_flops=loop_flops * accum, ce_loop_seconds=(loop_seconds or 0.0) * accum)
  return flops * accum, (seconds * accum if seconds is not None else None), timings, added


@contextlib.contextmanager
def _unrolled_scans(unroll: int):
  """Inside (unroll > 1): ``jax.lax.scan`` puts ``unroll`` iterations in each loop body.

  Only the cost probes use it, whose one scan is the chunked cross-entropy's
  (layers are unrolled there and there is no gradient accumulation).
  """
  import jax
  if unroll <= 1:
    yield
    return
  original = jax.lax.scan
  jax.lax.scan = functools.partial(original, unroll=unroll)
  try:
    yield
  finally:
    jax.lax.scan = original


def plan_step(config: ConfigDict, topology: str, mesh: Mapping[str, int] | None = None,
              num_languages: int | None = None, estimate_cost: bool = True,
              log: Callable[[str], None] = lambda s: None) -> StepPlan:
  """Compiles config's train step for slice ``topology`` and reports memory, collectives and cost.

  Args:
    config: a validated, locked config (the trainer's).
    topology: a slice name from plan/topologies.py, e.g. "v5p-256".
    mesh: mesh axis sizes (one may be -1); default: config.mesh.
    num_languages: languages of the objective's per-language metrics; default len(config.data.languages) or 1.
    estimate_cost: also run the 1- and 2-layer cost compiles (FLOPs, step time, MFU) when the step fits.
    log: progress lines (compiles take seconds to minutes).

  Returns:
    a StepPlan; ``fits`` False with ``note`` "does not fit: needs X GiB of Y GiB per chip" when it does not.
  """
  import jax
  from polyglot_jax.models.config import ModelConfig
  from polyglot_jax.models.flops import train_flops_per_token
  tpu = topologies.get(topology)
  devices = topologies.devices(tpu.name)
  sizes = mesh_sizes(mesh if mesh is not None else config.mesh.to_dict(), tpu)
  check_divisible(config, sizes)
  config = with_overrides(config, {f"mesh.{k}": v for k, v in sizes.items()})
  num_languages = num_languages or default_num_languages(config)
  d = config.data
  tokens = d.global_batch_size * d.seq_len
  plan = StepPlan(
      topology=tpu.name, chips=tpu.chips, mesh=sizes, remat_policy=config.model.remat_policy,
      global_batch_size=d.global_batch_size, grad_accum_steps=config.optimizer.grad_accum_steps,
      seq_len=d.seq_len, parameters=0, fits=False, hbm_needed_bytes=0.0, hbm_available_bytes=tpu.hbm_bytes,
      memory_source="", tokens_per_step=tokens,
      model_flops_per_step=train_flops_per_token(ModelConfig.from_config(config.model), d.seq_len) * tokens,
      sequence_parallel=is_sequence_parallel(config), attention=attention_backend(config),
      ce_chunks=ce_chunking(config, sizes))

  setup, batch = build_setup(config, sizes, devices, num_languages)
  plan.parameters = sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state.params))
  state_bytes = per_chip_bytes(setup.abstract_state)
  batch_bytes = per_chip_bytes(batch)
  plan.memory = {"state": state_bytes, "batch": batch_bytes, "logits_f32": logits_bytes_per_chip(config, sizes)}
  if state_bytes > tpu.hbm_bytes:
    # Parameters and optimizer state alone overflow: no compile needed to say so.
    plan.hbm_needed_bytes, plan.memory_source = state_bytes + batch_bytes, "state bytes (no compile)"
    plan.note = (f"does not fit: needs {gib_text(state_bytes)} GiB of {gib_text(tpu.hbm_bytes)} GiB per chip "
                 "for parameters and optimizer state alone")
    return plan

  log(f"  compiling the train step: {tpu.name}, mesh {mesh_text(sizes)}, remat {config.model.remat_policy}, "
      + ("sequence parallel, " if plan.sequence_parallel and sizes["tensor"] > 1 else "") +
      f"batch {d.global_batch_size}×{d.seq_len}" + (f" in {plan.grad_accum_steps} micro-batches"
                                                    if plan.grad_accum_steps > 1 else ""))
  t = time.perf_counter()
  try:
    compiled = _compile(setup.train_step.lower(setup.abstract_state, batch))
  except Exception as e:  # noqa: BLE001 — only out-of-memory is an answer; anything else is re-raised.
    plan.compile_seconds["step"] = time.perf_counter() - t
    if not _is_oom(e):
      raise
    parsed = parse_oom(str(e))
    if parsed is None:
      first = str(e).strip().splitlines()[0][:300]
      plan.memory_source, plan.note = "compile error", f"does not fit: the TPU compiler ran out of HBM ({first})"
      return plan
    required, available, what = parsed
    plan.hbm_needed_bytes = required + state_bytes + batch_bytes
    plan.memory.update(temporaries=required)
    plan.memory_source = f"compile error ({what})"
    plan.note = f"does not fit: needs {gib_text(plan.hbm_needed_bytes)} GiB of {gib_text(available)} GiB per chip"
    return plan
  plan.compile_seconds["step"] = time.perf_counter() - t

  ma = compiled.memory_analysis()
  plan.memory.update(arguments=ma.argument_size_in_bytes, outputs=ma.output_size_in_bytes,
                     aliased=ma.alias_size_in_bytes, temporaries=ma.temp_size_in_bytes,
                     code=ma.generated_code_size_in_bytes)
  plan.hbm_needed_bytes = float(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                                + ma.temp_size_in_bytes + ma.generated_code_size_in_bytes)
  plan.memory_source = "memory_analysis"
  plan.fits = plan.hbm_needed_bytes <= tpu.hbm_bytes
  if not plan.fits:
    plan.note = f"does not fit: needs {gib_text(plan.hbm_needed_bytes)} GiB of {gib_text(tpu.hbm_bytes)} GiB per chip"
  plan.collectives = hlo.collectives(compiled.as_text())
  del compiled

  if estimate_cost and plan.fits:
    flops, seconds, timings, added = probe_cost(config, sizes, devices, num_languages, log,
                                                tpu.generation.peak_bf16_flops)
    plan.compile_seconds.update(timings)
    plan.cost_added = added
    fill_cost(plan, tpu, flops, seconds)
  return plan


def fill_cost(plan: StepPlan, tpu: topologies.TpuSlice, flops_per_chip: float, seconds: float | None) -> None:
  """Sets FLOPs, estimated step time, tokens/s/chip and MFU from a cost probe."""
  plan.compiled_flops_per_step = flops_per_chip * tpu.chips
  plan.step_seconds = seconds
  if seconds:
    plan.tokens_per_sec_per_chip = plan.tokens_per_step / seconds / tpu.chips
    plan.mfu = plan.model_flops_per_step / (seconds * tpu.chips * tpu.generation.peak_bf16_flops)


def gib_text(n: float) -> str:
  return f"{n / GIB:.1f}" if n >= 100 * GIB else f"{n / GIB:.2f}"


def mesh_text(sizes: Mapping[str, int]) -> str:
  return ",".join(f"{k}={v}" for k, v in sizes.items() if v != 1) or "1 chip"
