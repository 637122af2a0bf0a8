"""The CPU's bfloat16 capability, from /proc/cpuinfo: which units a bf16 matmul can run on.

CPU figures differ by this more than by anything else: on an AVX2-only CPU a bf16 matmul runs at
the f32 rate or below (and torch's bf16 autocast far below), AVX-512-BF16 adds bf16 dot-product
instructions (`vdpbf16ps`), and AMX adds bf16 tile matmul units. BENCHMARKS.md keeps a CPU table
per capability; the benchmark header prints it.
"""

import platform

AMX = "AMX"
AVX512_BF16 = "AVX-512-BF16"
AVX512 = "AVX-512"
AVX2 = "AVX2"
ARM_BF16 = "ARM BF16"
NONE = "none"
UNKNOWN = "unknown"


def _first_field(cpuinfo: str, names: tuple[str, ...]) -> str:
  """The value of the first `name : value` line whose name is one of `names`."""
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if sep and key.strip().lower() in names:
      return value.strip()
  return ""


def bf16_capability(cpuinfo: str) -> str:
  """The best bf16 matmul path of the CPU that `cpuinfo` (/proc/cpuinfo's text) describes.

  One of AMX (amx_bf16), AVX-512-BF16 (avx512_bf16), AVX-512 (avx512f, no bf16 instructions),
  AVX2, ARM BF16 (an Arm CPU's `bf16` feature), none (no flags of these), unknown (no flags line).
  """
  flags = _first_field(cpuinfo, ("flags", "features"))
  if not flags:
    return UNKNOWN
  have = set(flags.lower().split())
  if "amx_bf16" in have:
    return AMX
  if "avx512_bf16" in have:
    return AVX512_BF16
  if "avx512f" in have:
    return AVX512
  if "avx2" in have:
    return AVX2
  if "bf16" in have:
    return ARM_BF16
  return NONE


def cpu_model(cpuinfo: str) -> str:
  """The CPU's model name (x86 'model name', or an Arm 'CPU part'), or '' if cpuinfo has none."""
  return _first_field(cpuinfo, ("model name", "cpu part"))


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
  """/proc/cpuinfo's text, or '' where there is none (macOS, Windows)."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return f.read()
  except OSError:
    return ""


def describe_cpu(cpuinfo: str | None = None) -> dict:
  """{'cpu': model name, 'bf16_capability': ...} of this machine (or of the given cpuinfo text)."""
  text = read_cpuinfo() if cpuinfo is None else cpuinfo
  return {
    "cpu": cpu_model(text) or platform.processor() or platform.machine(),
    "bf16_capability": bf16_capability(text),
  }
