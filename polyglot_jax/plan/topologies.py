"""Named Cloud TPU slices (v4-8, v5e-16, v5p-256, v6e-64, ...) → topology and chip figures.

A name is a Cloud TPU accelerator type. v4 and v5p names count TensorCores,
two per chip (v5p-256 is 128 chips); v5e and v6e names count chips (v5e-8
is 8 chips; ``v5litepod-N`` is the Cloud API spelling of ``v5e-N``). The
topology string, chip config and wrap-around links are what
``jax.experimental.topologies.get_topology_desc`` needs to hand out the
devices of that slice without a TPU present; the layouts follow MaxText's
``accelerator_to_spec_map.py``.

Every chip figure has its source beside it. ``hbm_gib`` is the HBM that the
XLA TPU compiler (libtpu 0.0.42.1) itself allows a program, read from its
"exceeds available HBM (X)" message; it is a little under the datasheet
figure, which is kept beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os

from polyglot_jax.errors import PlanError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Generation:
  """Per-chip figures of one TPU generation."""
  name: str  # Accelerator-type prefix: v4, v5e, v5p, v6e.
  topology_prefix: str  # Prefix of get_topology_desc's topology_name.
  chip_config_name: str  # megacore: one JAX device per chip (both TensorCores).
  cores_per_chip: int  # TensorCores per chip; v4/v5p names count cores.
  hbm_gib: float  # HBM per chip that the compiler allows a program.
  hbm_datasheet: str  # HBM per chip as the Cloud TPU docs state it.
  peak_bf16_flops: float  # Dense bf16 FLOP/s per chip.
  hbm_gbytes_per_s: float  # HBM bandwidth per chip, GB/s.
  ici_gbits_per_s: float | None  # Inter-chip interconnect bandwidth per chip, Gbit/s.
  shapes: tuple[str, ...]  # Slice shapes (chips per axis) in the table.


GENERATIONS = {
    "v4": Generation(
        name="v4", topology_prefix="v4", chip_config_name="megacore", cores_per_chip=2,
        # https://cloud.google.com/tpu/docs/v4 : "HBM2 capacity and bandwidth 32 GiB, 1200 GBps";
        # the compiler allows 30.75 GiB.
        hbm_gib=30.75, hbm_datasheet="32 GiB",
        # https://cloud.google.com/tpu/docs/v4 : "Peak compute per chip 275 teraflops (bf16 or int8)".
        peak_bf16_flops=275e12,
        hbm_gbytes_per_s=1200,
        # Not stated on the Cloud TPU v4 page (the v4 paper, Jouppi et al. ISCA 2023, describes
        # six ICI links per chip but we found no per-chip figure to cite).
        ici_gbits_per_s=None,
        shapes=("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16", "8x16x16")),
    "v5e": Generation(
        name="v5e", topology_prefix="v5e", chip_config_name="default", cores_per_chip=1,
        # https://cloud.google.com/tpu/docs/v5e : "HBM capacity per chip 16 GB"; the compiler allows 15.75 GiB.
        hbm_gib=15.75, hbm_datasheet="16 GB",
        # https://cloud.google.com/tpu/docs/v5e : "Peak compute per chip (bf16) 197 TFLOPs".
        peak_bf16_flops=197e12,
        # https://cloud.google.com/tpu/docs/v6e (v5e column): "HBM bandwidth per chip 819 GBps".
        hbm_gbytes_per_s=819,
        # https://cloud.google.com/tpu/docs/v6e (v5e column): "Inter-chip interconnect (ICI) bandwidth 1600 Gbps".
        ici_gbits_per_s=1600,
        shapes=("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")),
    "v5p": Generation(
        name="v5p", topology_prefix="v5p", chip_config_name="megacore", cores_per_chip=2,
        # https://cloud.google.com/tpu/docs/v5p : "HBM2e capacity and bandwidth 95GB, 2765 GBps";
        # the compiler allows 95.74 GiB.
        hbm_gib=95.74, hbm_datasheet="95 GB",
        # https://cloud.google.com/tpu/docs/v5p : "Peak compute per chip (bf16) 459 TFLOPs".
        peak_bf16_flops=459e12,
        hbm_gbytes_per_s=2765,
        # https://cloud.google.com/tpu/docs/v5p : "Interchip Interconnect BW 4800 Gbps".
        ici_gbits_per_s=4800,
        shapes=("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16", "8x16x16",
                "16x16x16", "16x16x24")),
    "v6e": Generation(
        name="v6e", topology_prefix="v6e", chip_config_name="default", cores_per_chip=1,
        # https://cloud.google.com/tpu/docs/v6e : "HBM capacity per chip 32 GB"; the compiler allows 31.25 GiB.
        hbm_gib=31.25, hbm_datasheet="32 GB",
        # https://cloud.google.com/tpu/docs/v6e : "Peak compute per chip (bf16) 918 TFLOPs".
        peak_bf16_flops=918e12,
        # https://cloud.google.com/tpu/docs/v6e : "HBM bandwidth per chip 1640 GBps".
        hbm_gbytes_per_s=1640,
        # https://cloud.google.com/tpu/docs/v6e : "Inter-chip interconnect (ICI) bandwidth 3584 Gbps".
        ici_gbits_per_s=3584,
        shapes=("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")),
}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """One named slice: its generation, chip layout and how to ask libtpu for it."""
  name: str  # e.g. v5p-256.
  generation: Generation
  shape: str  # Chips per axis, e.g. 4x4x8.

  @property
  def dims(self) -> tuple[int, ...]:
    return tuple(int(x) for x in self.shape.split("x"))

  @property
  def chips(self) -> int:
    return math.prod(self.dims)

  @property
  def topology_name(self) -> str:
    return f"{self.generation.topology_prefix}:{self.shape}"

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    # Wrap-around (torus) links, as MaxText's table has them: 3-D slices of
    # whole 4x4x4 cubes are tori; 2-D slices wrap along a full 16-chip axis.
    dims = self.dims
    if len(dims) == 3:
      return (min(dims) >= 4,) * 3
    return (dims[0] == 16, dims[1] == 16, False)

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    return (2, 2, 1)  # Four chips per host: every slice in the table is a multiple of it.

  @property
  def hbm_bytes(self) -> float:
    return self.generation.hbm_gib * GIB

  def describe(self) -> str:
    g = self.generation
    return (f"{self.name}: {self.chips} chips ({self.shape}), {g.hbm_gib:g} GiB HBM usable per chip "
            f"({g.hbm_datasheet} datasheet), {g.peak_bf16_flops / 1e12:g} TFLOP/s bf16 per chip")


def _build_table() -> dict[str, TpuSlice]:
  table = {}
  for gen in GENERATIONS.values():
    for shape in gen.shapes:
      chips = math.prod(int(x) for x in shape.split("x"))
      name = f"{gen.name}-{chips * gen.cores_per_chip}"
      table[name] = TpuSlice(name, gen, shape)
  return table


TPU_SLICES: dict[str, TpuSlice] = _build_table()
_ALIASES = {name.replace("v5e-", "v5litepod-"): name for name in TPU_SLICES if name.startswith("v5e-")}


def known_names() -> list[str]:
  return list(TPU_SLICES)


def get(name: str) -> TpuSlice:
  """The slice called ``name`` (a Cloud TPU accelerator type); unknown names list the known ones."""
  key = _ALIASES.get(name.strip().lower(), name.strip().lower())
  if key not in TPU_SLICES:
    raise PlanError(f"unknown TPU topology '{name}'; known: {', '.join(known_names())} "
                    "(v4/v5p names count TensorCores, 2 per chip; v5e/v6e names count chips)")
  return TPU_SLICES[key]


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


@contextlib.contextmanager
def _quiet_libtpu_init(tpu: TpuSlice):
  """Environment libtpu reads when it first loads, set for this process only.

  ALLOW_MULTIPLE_LIBTPU_LOAD lets several processes (a plan beside a test
  run) load libtpu at once instead of failing on its lock file. The TPU_*
  variables stop libtpu from probing for a TPU VM that is not there, and from
  printing warnings about it; they are restored afterwards so nothing else
  in the process (e.g. multi-host detection in the trainer) sees them.
  """
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  scoped = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": tpu.name, "TPU_WORKER_HOSTNAMES": "localhost",
            "TPU_WORKER_ID": "0"}
  saved = {k: os.environ.get(k) for k in scoped}
  for k, v in scoped.items():
    os.environ.setdefault(k, v)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


@functools.lru_cache(maxsize=None)
def devices(name: str) -> tuple:
  """The JAX devices of slice ``name`` for ahead-of-time compilation (no TPU needed).

  Returns:
    one TpuDevice per chip, in the topology's order.
  """
  tpu = get(name)
  if not libtpu_available():
    raise PlanError("planning for TPU needs libtpu, which is not installed; "
                    "pip install -e '.[tpu]' (it is also in the test extra)")
  from jax.experimental import topologies
  with _quiet_libtpu_init(tpu):
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=tpu.topology_name, chip_config_name=tpu.generation.chip_config_name,
        chips_per_host_bounds=tpu.chips_per_host_bounds, num_slices=1, wrap=tpu.wrap)
  found = tuple(desc.devices)
  if len(found) != tpu.chips:
    raise PlanError(f"libtpu gave {len(found)} devices for {tpu.name} ({tpu.topology_name}); expected {tpu.chips}")
  return found
