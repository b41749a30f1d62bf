"""Collectives in a compiled program, counted from its HLO text, loops included.

``compiled.as_text()`` lists each computation once, so a collective inside a
``while`` body (the scan over layers, gradient accumulation, the TPU
compiler's windowed einsums) appears once however often it runs. This walk
starts at ENTRY, follows the computations each instruction calls and
multiplies a loop body by its trip count, read from the loop condition
(``induction < constant``) or from ``known_trip_count`` when the compiler
states it.

Bytes are per chip per step: the size of the array a chip holds after the
collective (the gathered array for all-gather, the reduced array for
all-reduce, the output for all-to-all and collective-permute) or, for
reduce-scatter, the array it reduces (before scattering). The TPU compiler
writes some reduce-scatters as an all-reduce inside a computation named
``all-reduce-scatter...``; those count as reduce-scatter.
"""

from __future__ import annotations

import collections
import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP = re.compile(r"\s([a-z][a-z0-9\-]*)\((.*)")
_COLLECTIVE = re.compile(r"^(all-gather|reduce-scatter|all-reduce|all-to-all|collective-permute)(-start)?$")


def shape_bytes(shape: str) -> float:
  """Bytes of an HLO shape string (arrays or a tuple of arrays)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in _DTYPE_BYTES:
      continue
    total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _split_shape(rest: str) -> tuple[str, str]:
  """Splits 'SHAPE op(...)...' into SHAPE and the remainder (tuple shapes hold spaces)."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:]
  head, _, tail = rest.partition(" ")
  return head, " " + tail


class _Computation:

  def __init__(self, name: str, params: str):
    self.name = name
    self.shapes: dict[str, str] = {}
    for part in re.finditer(r"([\w.\-]+):\s*((?:\([^)]*\))|[^,()]+(?:\{[^}]*\})?)", params):
      self.shapes[part.group(1)] = part.group(2)
    self.lines: list[tuple[str, str, str, str]] = []  # (name, shape, op, rest)
    self.constants: dict[str, int] = {}


def parse_computations(text: str) -> tuple[dict[str, _Computation], str | None]:
  """Computations by name and the ENTRY computation's name."""
  comps: dict[str, _Computation] = {}
  entry = None
  current = None
  for line in text.splitlines():
    if current is None:
      m = _HEADER.match(line)
      if m:
        current = _Computation(m.group(2), m.group(3))
        comps[current.name] = current
        if m.group(1):
          entry = current.name
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, rest = m.group(1), m.group(2)
    shape, remainder = _split_shape(rest)
    op_match = _OP.match(remainder)
    if not op_match:
      continue
    op, args = op_match.group(1), op_match.group(2)
    current.shapes[name] = shape
    current.lines.append((name, shape, op, args))
    if op == "constant":
      value = re.match(r"\s*(-?\d+)\)", args)
      if value:
        current.constants[name] = int(value.group(1))
  return comps, entry


def _called(args: str) -> list[tuple[str, str]]:
  """(attribute, computation) pairs an instruction calls, e.g. ('body', '%while_body')."""
  out = []
  for attr, target in re.findall(r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)",
                                 args):
    out.append((attr, target))
  for attr, group in re.findall(r"\b(branch_computations|called_computations)=\{([^}]*)\}", args):
    out.extend((attr, t.strip().lstrip("%")) for t in group.split(",") if t.strip())
  return out


def _moves_nothing(args: str) -> bool:
  """Whether a collective's replica groups all have one device (e.g. a psum over size-1 mesh axes): no traffic."""
  explicit = re.search(r"replica_groups=\{((?:\{[^}]*\},?)*)\}", args)
  if explicit:
    groups = re.findall(r"\{([^}]*)\}", explicit.group(1))
    return bool(groups) and all("," not in g for g in groups)
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", args)
  return bool(iota) and int(iota.group(2)) == 1


def trip_count(args: str, comps: dict[str, _Computation]) -> int | None:
  """Iterations of the while loop whose operand text is ``args``; None if unknown."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', args)
  if known:
    return int(known.group(1))
  cond_name = re.search(r"\bcondition=%?([\w.\-]+)", args)
  cond = comps.get(cond_name.group(1)) if cond_name else None
  if cond is None:
    return None
  for _, _, op, cargs in cond.lines:
    if op != "compare":
      continue
    operands = re.findall(r"%([\w.\-]+)", cargs.split(")")[0])
    direction = re.search(r"direction=(\w+)", cargs)
    if len(operands) != 2 or not direction:
      continue
    lhs, rhs = (cond.constants.get(o) for o in operands)
    # Loops that jax and the SPMD partitioner emit count up from 0 by 1.
    if direction.group(1) == "LT" and rhs is not None:
      return rhs
    if direction.group(1) == "GT" and lhs is not None:
      return lhs
    if direction.group(1) == "LE" and rhs is not None:
      return rhs + 1
  return None


def collectives(text: str) -> dict:
  """Counts and bytes per chip of each collective kind in one run of the program.

  Args:
    text: ``compiled.as_text()`` of a compiled (SPMD-partitioned) program.

  Returns:
    {kind: {"count": int, "bytes": float}} for every kind in KINDS, plus
    "unknown_trip_counts": loops whose trip count could not be read (counted once).
  """
  comps, entry = parse_computations(text)
  memo: dict[str, dict] = {}
  unknown = []

  def walk(name: str, stack: tuple = ()) -> dict:
    if name in memo:
      return memo[name]
    comp = comps.get(name)
    totals: dict = collections.defaultdict(lambda: [0, 0.0])
    if comp is None or name in stack:
      return totals
    scatter_wrapper = comp.name.startswith("all-reduce-scatter")
    for _, shape, op, args in comp.lines:
      m = _COLLECTIVE.match(op)
      if m and not _moves_nothing(args):
        kind = "reduce-scatter" if (scatter_wrapper and m.group(1) == "all-reduce") else m.group(1)
        if m.group(1) == "reduce-scatter":
          operands = re.findall(r"%([\w.\-]+)", args.split(")")[0])
          size = sum(shape_bytes(comp.shapes.get(o, "")) for o in operands)
        elif m.group(2):  # Async start: a tuple of (operands..., results...); count the largest.
          size = max((shape_bytes(f"{d}[{s}]") for d, s in _ARRAY.findall(shape)), default=0.0)
        else:
          size = shape_bytes(shape)
        totals[kind][0] += 1
        totals[kind][1] += size
      times = 1
      if op == "while":
        count = trip_count(args, comps)
        if count is None:
          unknown.append(f"{comp.name}/{op}")
        times = count or 1
      for attr, callee in _called(args):
        if attr == "to_apply":
          continue  # Reduction bodies: scalar adds, never collectives.
        sub = walk(callee, stack + (name,))
        n = times if attr == "body" else 1
        for kind, (c, b) in sub.items():
          totals[kind][0] += c * n
          totals[kind][1] += b * n
    memo[name] = totals
    return totals

  found = walk(entry) if entry else {}
  out = {kind: {"count": int(found.get(kind, (0, 0.0))[0]), "bytes": float(found.get(kind, (0, 0.0))[1])}
         for kind in KINDS}
  out["unknown_trip_counts"] = sorted(set(unknown))
  return out


# Pallas TPU kernels (Mosaic): the cost model charges their operands and results as memory
# traffic (a positive time, linear in the row length) and counts no FLOPs inside them.
PALLAS_TARGET = "tpu_custom_call"
# Custom-call targets the TPU cost model scores as −1 s (libtpu 0.0.42.1). Others seen outside
# fusions score ≥ 0 and are left alone: Pallas kernels, AllocateBuffer (scan output buffers).
UNCOSTED_TARGETS = ("ConcatBitcast", "PrepareAsyncCallStart", "PrepareAsyncCallDone")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def _top_level_lines(text: str):
  """(instruction name, shape, op, args) outside fusions, each computation once (as cost_analysis counts)."""
  comps, entry = parse_computations(text)
  seen = set()
  todo = [entry] if entry else []
  while todo:
    name = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    for line in comps[name].lines:
      yield line
      if line[2] == "fusion":
        continue
      todo.extend(callee for attr, callee in _called(line[3]) if attr != "to_apply")


def uncosted_custom_calls(text: str) -> int:
  """Custom-calls outside fusions that the cost model scores as −1 s (each loop body once).

  The TPU cost model has no estimate for some such operations
  (``UNCOSTED_TARGETS``: ConcatBitcast, and the PrepareAsyncCallStart/Done pair
  around a scatter offloaded to the SparseCore, e.g. the inverse permutation of
  dropless MoE dispatch) and adds −1 s to ``optimal_seconds``
  for each; the planner adds this count back. Other targets are not counted:
  Pallas kernels (``tpu_custom_call``, e.g. splash attention, ragged_dot) get
  a positive memory-traffic cost and AllocateBuffer a positive one too, and
  custom-calls inside fusions (the async collective starts) are costed with
  their fusion.

  Args:
    text: ``compiled.as_text()``.

  Returns:
    The number of such custom-calls.
  """
  count = 0
  for _, _, op, args in _top_level_lines(text):
    if op == "custom-call":
      target = _TARGET.search(args)
      count += bool(target and target.group(1) in UNCOSTED_TARGETS)
  return count


# Matmuls per (query block, key block) pair in jax's splash-attention kernels: forward QKᵀ and PV;
# dq recomputes QKᵀ, then dP = dO·Vᵀ and dQ = dS·K; dkv recomputes QKᵀ, then dV = Pᵀ·dO, dP and dK = dSᵀ·Q.
SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
_SPLASH_NAME = re.compile(r"splash_m[hq]a_(fwd|dq|dkv)")
_LAYOUTS = re.compile(r"operand_layout_constraints=\{(.*?)\}(?:,\s*[a-z_]+=|\s*$)")


def splash_kernels(text: str) -> dict:
  """Splash-attention Pallas kernels outside fusions and their matmul FLOPs per chip (each loop body once).

  The cost model counts no FLOPs inside a Pallas kernel, so the planner adds
  these. Each call's operands give the shard's queries [B, H, L, D] ([H, L, D]
  when a shard holds one row) and the block-mask grid [·, n, n] (n = L /
  block); the causal mask (the only one models/attention.py builds) computes
  n(n+1)/2 of the n² block pairs, each ``SPLASH_MATMULS[kind]`` matmuls of
  2·block²·D FLOPs per row and head. A call whose shapes cannot be read is
  counted in "unparsed" and adds nothing; the report says so.

  Args:
    text: ``compiled.as_text()`` of a loop-free program (the cost probes).

  Returns:
    {"calls": {"fwd": int, "dq": int, "dkv": int}, "flops": float per chip,
    "unparsed": calls whose shapes could not be read (no FLOPs added for them)}.
  """
  calls = {kind: 0 for kind in SPLASH_MATMULS}
  flops, unparsed = 0.0, 0
  for name, _, op, args in _top_level_lines(text):
    if op != "custom-call" or PALLAS_TARGET not in args:
      continue
    kind = _SPLASH_NAME.search(name) or _SPLASH_NAME.search(args)
    if not kind:
      continue
    kind = kind.group(1)
    calls[kind] += 1
    layouts = _LAYOUTS.search(args)
    shapes = _ARRAY.findall(layouts.group(1)) if layouts else []
    grid = next((dims for dtype, dims in shapes if dtype == "s8" and dims.count(",") == 2), None)
    # Queries: [B, H, L, D], or [H, L, D] when a shard holds one row (the vmap over rows is squeezed away).
    query = next((dims for dtype, dims in shapes if dtype in ("bf16", "f32", "f16") and dims.count(",") in (2, 3)),
                 None)
    if grid is None or query is None:
      unparsed += 1
      continue
    n = int(grid.split(",")[-1])
    b, h, length, d = ([1] + [int(x) for x in query.split(",")])[-4:]
    flops += SPLASH_MATMULS[kind] * 2.0 * b * h * d * length * length * (n + 1) / (2 * n)
  return {"calls": calls, "flops": flops, "unparsed": unparsed}


_GMM_NAME = re.compile(r"(?<![a-z])(t?gmm)(?![a-z])")


def grouped_matmul_kernels(text: str) -> dict:
  """Grouped-matmul Pallas kernels (megablox ``gmm``/``tgmm``, MoE dropless on TPU) and their FLOPs if every row counted.

  The cost model counts no FLOPs inside a Pallas kernel. A ``gmm`` call with a
  [m, c] row operand and a [m, o] output does 2·m·c·o multiply-adds over all
  its rows; a ``tgmm`` call (the weight gradient: two [m, a], [m, b] row
  operands, a [groups, a, b] output) 2·m·a·b. The kernels skip row tiles in no
  group of the device's experts, so the caller scales these by the share of
  rows that are (models/moe.py: 1 / the expert shards under balanced routing).
  Each loop body counts once, as ``cost_analysis`` counts it.

  Args:
    text: ``compiled.as_text()``.

  Returns:
    {"calls": {"gmm": n, "tgmm": n}, "flops": float (all rows, per chip), "unparsed": calls not read}.
  """
  calls = {"gmm": 0, "tgmm": 0}
  flops, unparsed = 0.0, 0
  for name, shape, op, args in _top_level_lines(text):
    if op != "custom-call" or PALLAS_TARGET not in args:
      continue
    kind = _GMM_NAME.search(name.split(".")[0].replace("_", " "))
    if not kind:
      continue
    calls[kind.group(1)] += 1
    layouts = _LAYOUTS.search(args)
    rows = [[int(x) for x in dims.split(",")] for dtype, dims in (_ARRAY.findall(layouts.group(1)) if layouts else [])
            if dtype in ("bf16", "f32", "f16") and dims.count(",") == 1]
    out = [int(x) for x in (_ARRAY.findall(shape)[0][1].split(",") if _ARRAY.findall(shape) else [])]
    if kind.group(1) == "gmm" and rows and len(out) == 2 and rows[0][0] == out[0]:
      flops += 2.0 * out[0] * rows[0][1] * out[1]
    elif kind.group(1) == "tgmm" and len(rows) >= 2 and rows[0][0] == rows[1][0]:
      flops += 2.0 * rows[0][0] * rows[0][1] * rows[1][1]
    else:
      unparsed += 1
  return {"calls": calls, "flops": flops, "unparsed": unparsed}
