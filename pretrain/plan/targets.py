"""Plan targets: a name (tpu:v5p-128, tpu:2xv5e-256, gpu:h100x16) -> compile-only devices + the chip's figures.

TPU slices are named as Cloud TPU names them (`v4-32`, `v5p-128`: TensorCores; `v5e-256` or
`v5litepod-256`, `v6e-256`: chips), `NxNAME` for N slices joined over the data-center network
(multi-slice). GPU targets are `gpu:h100xN`, 8 GPUs per host (an HGX/DGX H100 node).

Per-chip figures (`Chip`), each from its public source:
  TPU v4   Cloud TPU docs, "TPU v4" (cloud.google.com/tpu/docs/v4): 275 TFLOP/s bf16, HBM2 32 GiB at
           1200 GB/s. ICI: "TPU system architecture" (cloud.google.com/tpu/docs/system-architecture-tpu-vm),
           2400 Gbps interchip interconnect per chip = 300 GB/s each way. DCN: no per-chip figure is
           published for v4; v5p's 50 Gbps per chip is used.
  TPU v5e  Cloud TPU docs, "TPU v5e" (cloud.google.com/tpu/docs/v5e): 197 TFLOP/s bf16, HBM2 16 GB at
           819 GB/s, bidirectional ICI 400 GB/s per chip (200 GB/s each way); per-host NIC 2 x 100 Gbps
           for 8 chips, i.e. DCN 25 Gbps per chip (the pod's 6.4 Tbps over 256 chips).
  TPU v5p  Cloud TPU docs, "TPU v5p" (cloud.google.com/tpu/docs/v5p): 459 TFLOP/s bf16, HBM2e 95 GiB at
           2765 GB/s, bidirectional ICI 1200 GB/s per chip (600 GB/s each way), DCN 50 Gbps per chip.
  TPU v6e  Cloud TPU docs, "TPU v6e" (cloud.google.com/tpu/docs/v6e): 918 TFLOP/s bf16, HBM 32 GB at
           1638 GB/s, bidirectional ICI 800 GB/s per chip (400 GB/s each way). DCN: the page gives no
           per-chip figure; v5e's 25 Gbps is used.
  H100     NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s dense bf16, 80 GB HBM3 at
           3.35 TB/s, NVLink 900 GB/s per GPU (450 GB/s each way) inside a node; between nodes the
           DGX H100 datasheet's 8 x 400 Gb/s ConnectX-7 per 8 GPUs, 50 GB/s per GPU.

Interconnect figures are per direction (what one chip can send while it receives as much): a ring
collective's bytes sent per chip divided by them is its time.
"""

import dataclasses
import re

from pretrain.errors import PretrainError


@dataclasses.dataclass(frozen=True)
class Chip:
  """One device's peak figures (the module docstring gives each one's source)."""

  name: str
  peak_flops: float  # bf16 FLOP/s, dense.
  hbm_bytes: float
  hbm_bytes_per_s: float
  link_bytes_per_s: float  # ICI (TPU) or NVLink (GPU), per direction.
  network_bytes_per_s: (
    float  # DCN between slices (TPU) or the network between hosts (GPU), per chip.
  )
  link_name: str = "ICI"
  network_name: str = "DCN"


GIB, GB = 2**30, 1e9
CHIPS = {
  "v4": Chip("TPU v4", 275e12, 32 * GIB, 1200 * GB, 2400e9 / 8, 50e9 / 8),
  "v5e": Chip("TPU v5e", 197e12, 16 * GB, 819 * GB, 400 * GB / 2, 25e9 / 8),
  "v5p": Chip("TPU v5p", 459e12, 95 * GIB, 2765 * GB, 1200 * GB / 2, 50e9 / 8),
  "v6e": Chip("TPU v6e", 918e12, 32 * GB, 1638 * GB, 800 * GB / 2, 25e9 / 8),
  "h100": Chip("H100 SXM", 989e12, 80 * GB, 3.35e12, 900 * GB / 2, 400e9 / 8, "NVLink", "network"),
}

# Cloud TPU names -> (chip, libtpu topology prefix, chip config, TensorCores counted per chip in the name).
_TPU_GENERATIONS = {
  "v4": ("v4", "v4", "megacore", 2),
  "v5p": ("v5p", "v5", "megacore", 2),
  "v5e": ("v5e", "v5e", "default", 1),
  "v5litepod": ("v5e", "v5e", "default", 1),
  "v6e": ("v6e", "v6e", "default", 1),
}
# Chips -> the slice's shape: Cloud TPU's documented slice shapes (3D for v4/v5p, 2D for v5e/v6e).
_SHAPES_3D = {
  4: (2, 2, 1),
  8: (2, 2, 2),
  16: (2, 2, 4),
  32: (2, 4, 4),
  64: (4, 4, 4),
  128: (4, 4, 8),
  256: (4, 8, 8),
  512: (8, 8, 8),
  1024: (8, 8, 16),
  2048: (8, 16, 16),
  4096: (16, 16, 16),
}
_SHAPES_2D = {
  1: (1, 1),
  4: (2, 2),
  8: (2, 4),
  16: (4, 4),
  32: (4, 8),
  64: (8, 8),
  128: (8, 16),
  256: (16, 16),
}
GPUS_PER_HOST = 8

# The H100 SXM as XLA's GPU compiler sees it (a GpuTargetConfigProto). No H100 was at hand to capture it
# from (jaxlib's topology of `jax.devices()` on one); the values are an H100 SXM5's device properties as
# CUDA's deviceQuery reports them and NVIDIA's datasheet gives them (132 SMs at 1.98 GHz, 48 KiB shared
# memory per block, 228 KiB per SM, 64 Ki registers, 80 GB at 3.35 TB/s, 50 MiB L2, compute capability
# 9.0), the same values as XLA's own spec file for this GPU (xla/backends/gpu/target_config/specs/
# h100_sxm.txtpb, captured there from a device). cuDNN 9.8 is the oldest jax[cuda12] 0.10.2 accepts.
H100_SXM_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


@dataclasses.dataclass(frozen=True)
class Target:
  """What to compile for: `num_devices` devices of `chip` in `num_slices` slices (TPU) or hosts (GPU)."""

  name: str
  platform: str  # "tpu" or "gpu"
  chip: Chip
  num_devices: int
  num_slices: int = 1  # TPU slices over DCN; 1 for GPU (hosts are `num_hosts`).
  topology: str = ""  # libtpu's topology name, e.g. v5e:16x16; GPU: slices x hosts x GPUs per host.
  chip_config: str = ""
  chips_per_host: tuple[int, ...] = ()
  wrap: tuple[bool, ...] = ()

  @property
  def num_hosts(self) -> int:
    per_host = GPUS_PER_HOST if self.platform == "gpu" else max(1, _prod(self.chips_per_host))
    return max(1, self.num_devices // per_host)

  @property
  def devices_per_island(self) -> int:
    """Devices joined by the fast links (ICI in a slice, NVLink in a host)."""
    if self.platform == "gpu":
      return min(self.num_devices, GPUS_PER_HOST)
    return self.num_devices // self.num_slices

  def island_of(self, device) -> int:
    """Which slice (TPU) or host (GPU) a compile-only device is in."""
    if self.platform == "gpu":
      return int(device.process_index)
    return int(getattr(device, "slice_index", 0))

  def devices(self) -> list:
    """The target's compile-only devices (needs the aot extra: libtpu / the CUDA plugin)."""
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    if self.platform == "tpu":
      return list(
        topologies.get_topology_desc(
          platform="tpu",
          topology_name=self.topology,
          chip_config_name=self.chip_config,
          chips_per_host_bounds=self.chips_per_host,
          num_slices=self.num_slices,
          wrap=self.wrap,
        ).devices
      )
    return list(
      topologies.get_topology_desc(
        platform="cuda", topology=self.topology, target_config=H100_SXM_TARGET_CONFIG
      ).devices
    )


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def _tpu(name: str, slices: int, generation: str, size: int) -> Target:
  chip_key, prefix, chip_config, cores_per_chip = _TPU_GENERATIONS[generation]
  if size % cores_per_chip:
    raise PretrainError(
      f"--target={name}: {generation} slices are named by TensorCores, 2 per chip; {size} is odd"
    )
  chips = size // cores_per_chip
  shapes = _SHAPES_3D if cores_per_chip == 2 else _SHAPES_2D
  if chips not in shapes:
    names = ", ".join(f"{generation}-{n * cores_per_chip}" for n in shapes)
    raise PretrainError(f"--target={name}: no {generation} slice of {chips} chips; known: {names}")
  shape = shapes[chips]
  if len(shape) == 2:
    # A v5e/v6e host holds up to 8 chips; pod slices have 4 per host (2x2), the full 16x16 wraps around.
    per_host = (1, 1, 1) if chips == 1 else (2, 4, 1) if chips == 8 else (2, 2, 1)
    wrap = (chips == 256, chips == 256, False)
  else:
    # v4/v5p: 4 chips per host; slices of a full cube or more are tori on their multiple-of-4 dims.
    per_host = (2, 2, 1)
    wrap = tuple(chips >= 64 and d % 4 == 0 for d in shape)
  return Target(
    name=name,
    platform="tpu",
    chip=CHIPS[chip_key],
    num_devices=chips * slices,
    num_slices=slices,
    topology=f"{prefix}:{'x'.join(map(str, shape))}",
    chip_config=chip_config,
    chips_per_host=per_host,
    wrap=wrap,
  )


def parse(name: str) -> Target:
  """The target `name` names, or a PretrainError listing the forms it can take."""
  forms = (
    "tpu:v4-32, tpu:v5e-256 (v5litepod-256), tpu:v5p-128, tpu:v6e-256, tpu:2xv5e-256 "
    "(2 slices), gpu:h100x8, gpu:h100x16"
  )
  platform, _, rest = name.partition(":")
  if platform == "gpu":
    m = re.fullmatch(r"h100x(\d+)", rest)
    if not m or int(m.group(1)) < 1:
      raise PretrainError(f"--target={name} is unknown; GPU targets are gpu:h100xN (N GPUs)")
    n = int(m.group(1))
    if n > GPUS_PER_HOST and n % GPUS_PER_HOST:
      raise PretrainError(
        f"--target={name}: more than {GPUS_PER_HOST} GPUs come in whole hosts of {GPUS_PER_HOST}"
      )
    hosts, per_host = (n // GPUS_PER_HOST, GPUS_PER_HOST) if n > GPUS_PER_HOST else (1, n)
    return Target(
      name=name, platform="gpu", chip=CHIPS["h100"], num_devices=n, topology=f"1x{hosts}x{per_host}"
    )
  if platform != "tpu":
    raise PretrainError(f"--target={name} is unknown; expected one of {forms}")
  m = re.fullmatch(r"(?:(\d+)x)?(v4|v5p|v5e|v5litepod|v6e)-(\d+)", rest)
  if not m:
    raise PretrainError(f"--target={name} is unknown; expected one of {forms}")
  slices = int(m.group(1) or 1)
  if slices < 1:
    raise PretrainError(f"--target={name}: the number of slices must be at least 1")
  return _tpu(name, slices, m.group(2), int(m.group(3)))


def from_accelerator_type(accelerator_type: str) -> str:
  """The target name of a Cloud TPU accelerator type (launch/tpu.py's --accelerator_type=v4-32)."""
  return f"tpu:{accelerator_type}"
