"""The roofline's arithmetic against numbers worked out by hand."""

import pytest

from pretrain.plan import roofline
from pretrain.plan.targets import Chip

# A round chip: 100 TFLOP/s, 1 TB/s HBM, 100 GB/s links, 10 GB/s network.
CHIP = Chip("test", 100e12, 16e9, 1e12, 100e9, 10e9)


def _predict(**kw):
  args = dict(
    num_devices=4,
    model_flops_per_step=4e12,  # 1e12 per device: 10 ms of compute.
    flops_per_device=1e12,
    flops_source="model",
    hbm_bytes_per_device=5e9,  # 5 ms.
    memory={},
    link_bytes_per_device=0.2e9,  # 2 ms.
    network_bytes_per_device=0.0,
    tokens_per_step=40960,
  )
  args.update(kw)
  return roofline.predict(CHIP, **args)


def test_a_compute_bound_step():
  r = _predict()
  assert r["seconds"] == pytest.approx(
    {"compute": 0.010, "hbm": 0.005, "link": 0.002, "network": 0.0}
  )
  assert r["bound"] == "compute" and r["step_seconds"] == pytest.approx(0.010)
  assert r["serial_step_seconds"] == pytest.approx(0.017)
  assert r["tokens_per_sec"] == pytest.approx(40960 / 0.010)
  assert r["mfu"] == pytest.approx(1.0)  # All of the peak, by construction.


def test_a_network_bound_step_and_mfu_from_the_model_flops():
  # 0.5 GB over a 10 GB/s network: 50 ms; the compiler's 1.2e12 FLOPs (remat) cost 12 ms, but MFU counts
  # the model's 1e12 per device over the 50 ms: 1e12 / (0.05 * 100e12) = 20%.
  r = _predict(network_bytes_per_device=0.5e9, flops_per_device=1.2e12, flops_source="compiler")
  assert r["bound"] == "network" and r["step_seconds"] == pytest.approx(0.05)
  assert r["seconds"]["compute"] == pytest.approx(0.012)
  assert r["mfu"] == pytest.approx(0.2)
  assert r["tokens_per_sec"] == pytest.approx(40960 / 0.05)


def test_without_a_compiler_byte_count_the_hbm_floor_is_the_state_and_temporaries():
  # arguments 2 GB + outputs 2 GB + 2 x 3 GB temporaries = 10 GB at 1 TB/s: 10 ms.
  r = _predict(
    hbm_bytes_per_device=None, memory={"arguments": 2e9, "outputs": 2e9, "temporary": 3e9}
  )
  assert r["seconds"]["hbm"] == pytest.approx(0.010) and r["hbm_source"].startswith("floor")
