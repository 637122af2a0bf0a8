"""The CPU's bf16 capability is read from /proc/cpuinfo's flags (fixed texts, not this machine)."""

import pytest

from pretrain import host_allocator
from pretrain.bench import capability, common

_INTEL_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
_AMD_GENOA = """processor\t: 0
model name\t: AMD EPYC 9B14
flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
_SKYLAKE = (
  "model name\t: Intel(R) Xeon(R) CPU @ 2.00GHz\nflags\t\t: fpu avx avx2 avx512f avx512bw\n"
)
_ROME = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n"
_GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n"
_OLD = "model name\t: Some CPU\nflags\t\t: fpu sse sse2\n"


@pytest.mark.parametrize(
  "text, expected",
  [
    (_INTEL_SPR, capability.AMX),
    (_AMD_GENOA, capability.AVX512_BF16),
    (_SKYLAKE, capability.AVX512),
    (_ROME, capability.AVX2),
    (_GRAVITON3, capability.ARM_BF16),
    (_OLD, capability.NONE),
    ("", capability.UNKNOWN),
  ],
)
def test_bf16_capability_from_cpuinfo_flags(text, expected):
  assert capability.bf16_capability(text) == expected


def test_flag_names_match_whole_words_only():
  # "avx512_bf16x" is no flag of any CPU; a substring match would take it for avx512_bf16.
  assert capability.bf16_capability("flags : avx2 avx512_bf16x amx_bf16_not") == capability.AVX2


def test_describe_cpu_names_the_model():
  assert capability.describe_cpu(_AMD_GENOA) == {
    "cpu": "AMD EPYC 9B14",
    "bf16_capability": capability.AVX512_BF16,
  }
  assert capability.describe_cpu(_GRAVITON3)["cpu"] == "0xd40"


def test_environment_line_prints_the_capability():
  env = common.environment("1 x cpu (cpu)")
  assert env["bf16_capability"] in (
    capability.AMX,
    capability.AVX512_BF16,
    capability.AVX512,
    capability.AVX2,
    capability.ARM_BF16,
    capability.NONE,
    capability.UNKNOWN,
  )
  assert f"bf16 capability {env['bf16_capability']}" in common.environment_line(env)


def test_environment_line_says_whether_host_malloc_is_tuned():
  env = common.environment("1 x cpu (cpu)")
  assert env["host_allocator"] == host_allocator.state
  assert f"host malloc {host_allocator.state}" in common.environment_line(env)
