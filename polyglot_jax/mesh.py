"""Device mesh from config and logical-axis rules → shardings.

The mesh uses ``AxisType.Auto`` on every axis (GSPMD propagation, as MaxText
does): parameters and a few activations carry logical axis names, the rules in
the config map them to mesh axes, and XLA decides the rest. jax 0.10's default
(Explicit axes) would force an ``out_sharding`` on every matmul whose
contracting dimension is sharded, which fights a model written once for every
mesh shape.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from polyglot_jax.errors import MeshError  # noqa: F401  (re-exported)

MESH_AXES = ("data", "fsdp", "tensor", "expert")
# Mesh axes the batch dimension is split over (each host feeds its shard). The
# expert axis is one of them: outside the MoE layers it is one more data axis
# (docs/moe.md, expert parallelism); at expert=1 it changes nothing.
BATCH_AXES = ("data", "fsdp", "expert")




def resolve_mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves one ``-1`` axis to the remaining devices and checks the product.

  Args:
    axes: mesh axis name → size; at most one size may be -1.
    num_devices: how many devices the mesh must span.

  Returns:
    axis name → size, in ``MESH_AXES`` order.
  """
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise MeshError(f"config.mesh has unknown axis {sorted(unknown)}; mesh axes are {MESH_AXES}")
  sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise MeshError(f"config.mesh: only one axis may be -1, got {free}")
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise MeshError(f"config.mesh.{name}={size}: sizes are positive or -1 (the rest of the devices)")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise MeshError(
          f"config.mesh {dict(axes)}: fixed axes multiply to {fixed}, which does not divide "
          f"the {num_devices} devices; change the sizes so their product divides {num_devices}")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise MeshError(
        f"config.mesh {dict(axes)} needs {fixed} devices but {num_devices} are present; "
        "set one axis to -1 or make the sizes multiply to the device count")
  return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor, expert) mesh with Auto axis types."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_mesh_shape(axes, len(devices))
  shape = tuple(sizes[name] for name in MESH_AXES)
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # Non-TPU or irregular layouts: plain row-major order.
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_tuple(rules: Iterable) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Normalises config rules (lists from JSON/overrides) to hashable tuples."""
  out = []
  for rule in rules:
    name, target = rule
    if isinstance(target, list):
      target = tuple(target)
    out.append((str(name), target))
  return tuple(out)


def logical_to_spec(names: Sequence[str | None], rules) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; a name without a rule is an error."""
  table = dict(rules_tuple(rules))
  spec = []
  used: set[str] = set()
  for name in names:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise MeshError(f"logical axis '{name}' has no entry in config.logical_axis_rules; add ('{name}', <mesh axis or None>)")
    target = table[name]
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    for axis in targets:
      if axis not in MESH_AXES:
        raise MeshError(f"config.logical_axis_rules maps '{name}' to '{axis}', which is not a mesh axis {MESH_AXES}")
    # A mesh axis may appear once per spec; later dims give way (replicated).
    targets = tuple(a for a in targets if a not in used)
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else (targets or None))
  return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names, under the active mesh and rules."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  from flax.core import spmd  # Imported here: the rules live in flax's context.
  rules = spmd.get_logical_axis_rules()
  if not rules:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def logical_mesh_axes(name: str) -> tuple[str, ...]:
  """The mesh axes of size > 1 a logical axis is split over under the active mesh and rules; () outside a mesh.

  Args:
    name: a logical axis name (e.g. "batch").

  Returns:
    Those mesh axis names, in the rule's order (() when ``name`` has no rule).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return ()
  from flax.core import spmd  # The rules live in flax's context (activate).
  target = dict(rules_tuple(spmd.get_logical_axis_rules() or ())).get(name)
  targets = (target,) if isinstance(target, str) else tuple(target or ())
  return tuple(a for a in targets if mesh.shape.get(a, 1) > 1)


def logical_axis_size(name: str) -> int:
  """How many devices a logical axis is split over under the active mesh and rules; 1 outside a mesh.

  Args:
    name: a logical axis name (e.g. "batch").

  Returns:
    The product of the sizes of the mesh axes the rules map ``name`` to (1 when it has no rule).
  """
  mesh = jax.sharding.get_abstract_mesh()
  return math.prod(mesh.shape[a] for a in logical_mesh_axes(name))


def multi_device_mesh() -> bool:
  """Whether an active (abstract) mesh spans more than one device."""
  mesh = jax.sharding.get_abstract_mesh()
  return not (mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1)


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
  """Sets the mesh and logical-axis rules for model construction and tracing."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_tuple(rules)):
    yield


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dim over ``BATCH_AXES`` (data, fsdp, expert), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())

