"""Device mesh and the one table mapping logical axis names onto it.

Mesh axes:
  data    pure data parallelism: the batch is split, parameters are replicated.
  fsdp    the batch is split and parameters are sharded on their 'embed' dim
          (ZeRO-3 style: gathered per use, gradients reduce-scattered).
  tensor  Megatron-style model parallelism over heads, mlp and vocab.

Models name every parameter and main activation dimension logically (see
pretrain/models); `LOGICAL_RULES` is the only place that says where each lives.
Jit and trace model code inside `mesh_context(mesh)` so activation constraints
apply.
"""

import contextlib
import dataclasses
import logging
import math
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pretrain import logs
from pretrain.errors import PretrainError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES = (
  # Activations.
  ("act_batch", BATCH_AXES),
  ("act_length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
  # Parameters.
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
  ("norm", None),
  ("position", None),
  ("types", None),
  ("classes", None),
  ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes; one of them may be -1 for all remaining devices."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1


def _axis_sizes(mesh_cfg: Any) -> dict[str, int]:
  get = mesh_cfg.get if isinstance(mesh_cfg, Mapping) else lambda k, d: getattr(mesh_cfg, k, d)
  return {axis: int(get(axis, 1)) for axis in MESH_AXES}


def make_mesh(mesh_cfg: Any, devices: list[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices).

  Args:
    mesh_cfg: a mapping or object with int fields data, fsdp, tensor (missing
      ones are 1); at most one may be -1, meaning all remaining devices.
    devices: the devices to lay out; defaults to `jax.devices()`.
  """
  # Which devices the message means: the process's own, or those given (a plan's target).
  where = f" (jax.device_count() = {jax.device_count()})" if devices is None else ""
  devices = list(jax.devices() if devices is None else devices)
  sizes = _axis_sizes(mesh_cfg)
  requested = ", ".join(f"{axis}={n}" for axis, n in sizes.items())
  fill = [axis for axis, n in sizes.items() if n == -1]
  if len(fill) > 1 or any(n < 1 and n != -1 for n in sizes.values()):
    raise PretrainError(f"mesh ({requested}): sizes must be positive, or -1 for at most one axis")
  if fill:
    rest = math.prod(n for n in sizes.values() if n != -1)
    if len(devices) % rest:
      raise PretrainError(
        f"mesh ({requested}) does not fit {len(devices)} devices{where}: "
        f"{len(devices)} is not divisible by {rest}"
      )
    sizes[fill[0]] = len(devices) // rest
  if math.prod(sizes.values()) != len(devices):
    raise PretrainError(
      f"mesh ({requested}) needs {math.prod(sizes.values())} devices but there are {len(devices)}"
      f"{where}"
    )
  shape = tuple(sizes[a] for a in MESH_AXES)
  return Mesh(_device_grid(shape, devices), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _device_grid(shape: tuple[int, ...], devices: list) -> np.ndarray:
  """`devices` laid out in `shape` along the physical topology, as jax.make_mesh lays them out.

  Beyond jax.make_mesh: a shape that cuts a physical axis (data=2 fsdp=32 on a v5p-128's 4x4x4 torus) is
  laid out with the axis split, and devices of several slices (multi-slice) get the slices along the
  first mesh axis they divide ('data' first), the one whose collectives cross the data-center network.
  """
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices > 1:
    axis = next((i for i, n in enumerate(shape) if n % slices == 0), None)
    if axis is None:
      raise PretrainError(
        f"mesh {dict(zip(MESH_AXES, shape))}: the devices span {slices} slices; one mesh axis "
        f"(data, fsdp or tensor) must be a multiple of {slices}"
      )
    dcn = tuple(slices if i == axis else 1 for i in range(len(shape)))
    ici = tuple(n // d for n, d in zip(shape, dcn))
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
  try:
    return jax.make_mesh(shape, MESH_AXES, devices=devices).devices
  except ValueError:  # The shape does not follow the physical axes.
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


@contextlib.contextmanager
def mesh_context(mesh: Mesh) -> Iterator[None]:
  """Set the mesh and the logical rules, for tracing/jitting model code.

  `with mesh:` alone would leave linen's activation constraints as no-ops.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


_logger = logging.getLogger(__name__)


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, name: str) -> PartitionSpec:
  """Replicates each dim whose size is not divisible by the devices it maps to."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is not None:
      n = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      if dim % n:
        logs.log_once(
          _logger,
          f"{name}: dim of size {dim} is not divisible by mesh axes {axes} ({n} devices); "
          "replicating it",
          logging.INFO,
        )
        axes = None
    fitted.append(axes)
  return PartitionSpec(*fitted)


def param_shardings(boxed_params: Any, mesh: Mesh) -> Any:
  """NamedShardings for the unboxed tree of logically annotated (boxed) params.

  Args:
    boxed_params: params as returned by `model.init` or `jax.eval_shape` of it,
      leaves boxed in `nn.LogicallyPartitioned` (unannotated leaves replicate).
    mesh: the mesh to shard over.
  """

  def sharding(path, leaf):
    if isinstance(leaf, nn.Partitioned):
      spec = nn.logical_to_mesh_axes(leaf.names, LOGICAL_RULES)
      return NamedSharding(
        mesh, _fit_spec(spec, leaf.value.shape, mesh, jax.tree_util.keystr(path))
      )
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree_util.tree_map_with_path(
    sharding, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batch (leading) dim split over ('data', 'fsdp'); other dims replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded by `data_sharding`."""
  sharding = data_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def abstract(tree, shardings=None):
  """ShapeDtypeStructs of `tree`'s arrays with `shardings` (a matching tree), or each array's own sharding:
  the targets that compilation and checkpoint restore lay arrays out by."""
  if shardings is None:
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
