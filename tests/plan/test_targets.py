"""Target names -> chips, device counts and libtpu topologies; a name that is not a target is refused."""

import pytest

from pretrain.errors import PretrainError
from pretrain.plan import targets


@pytest.mark.parametrize(
  "name, chip, devices, slices, topology",
  [
    ("tpu:v4-32", "TPU v4", 16, 1, "v4:2x2x4"),  # v4 and v5p count TensorCores: 2 per chip.
    ("tpu:v5p-128", "TPU v5p", 64, 1, "v5:4x4x4"),
    ("tpu:v5e-256", "TPU v5e", 256, 1, "v5e:16x16"),
    ("tpu:v5litepod-4", "TPU v5e", 4, 1, "v5e:2x2"),
    ("tpu:v6e-256", "TPU v6e", 256, 1, "v6e:16x16"),
    ("tpu:2xv5e-256", "TPU v5e", 512, 2, "v5e:16x16"),
    ("gpu:h100x8", "H100 SXM", 8, 1, "1x1x8"),
    ("gpu:h100x16", "H100 SXM", 16, 1, "1x2x8"),
  ],
)
def test_target_names(name, chip, devices, slices, topology):
  t = targets.parse(name)
  assert (t.chip.name, t.num_devices, t.num_slices, t.topology) == (chip, devices, slices, topology)


def test_multi_host_layouts():
  assert targets.parse("tpu:v5p-128").num_hosts == 16  # 4 chips per host.
  assert (
    targets.parse("gpu:h100x16").num_hosts == 2
    and targets.parse("gpu:h100x16").devices_per_island == 8
  )
  assert targets.parse("tpu:2xv5e-256").devices_per_island == 256
  assert targets.parse("tpu:v5p-128").wrap == (True, True, True)  # A full cube is a torus.


@pytest.mark.parametrize(
  "name, message",
  [
    ("tpu:v9-8", "--target=tpu:v9-8 is unknown"),
    ("v5p-128", "--target=v5p-128 is unknown"),
    ("tpu:v5p-7", "2 per chip; 7 is odd"),
    ("tpu:v5e-12", "no v5e slice of 12 chips"),
    ("gpu:h100x12", "whole hosts of 8"),
    ("gpu:a100x8", "GPU targets are gpu:h100xN"),
    ("tpu:0xv5e-4", "at least 1"),
  ],
)
def test_unknown_targets_are_refused_naming_the_forms(name, message):
  with pytest.raises(PretrainError, match=message.replace("(", r"\(").replace("+", r"\+")):
    targets.parse(name)


def test_compile_only_devices_of_a_multi_slice_target(needs_tpu_compiler):
  devices = targets.parse("tpu:2xv5e-4").devices()
  assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
  assert devices[0].device_kind == "TPU v5 lite"
