"""Metrics: MFU peak lookup, metrics.jsonl rows."""

import json
import math
import os
import types

import pytest

from pretrain import metrics as metrics_lib
from pretrain.config import base_config
from pretrain.metrics import MetricsWriter, peak_flops, peak_flops_per_device


def test_peak_flops_lookup():
  c = base_config().metrics
  cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
  assert peak_flops_per_device(c, cpu) == c.cpu_peak_flops
  assert (
    peak_flops_per_device(c, types.SimpleNamespace(platform="tpu", device_kind="TPU v4")) == 275e12
  )
  assert (
    peak_flops_per_device(c, types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200"))
    == 989e12
  )
  assert math.isnan(
    peak_flops_per_device(c, types.SimpleNamespace(platform="gpu", device_kind="X1"))
  )
  c.peak_flops_per_device = 5.0
  assert peak_flops_per_device(c, cpu) == 5.0


def test_jsonl_rows(tmp_path):
  w = MetricsWriter(str(tmp_path))
  w.write(3, {"loss": 1.5, "bad": float("nan"), "backend": "xla"})
  w.close()
  row = json.loads((tmp_path / "metrics.jsonl").read_text())
  assert row == {"step": 3, "loss": 1.5, "bad": "nan", "backend": "xla"}


def _device(kind, platform="gpu"):
  return types.SimpleNamespace(platform=platform, device_kind=kind)


@pytest.mark.parametrize(
  "kind, flops",
  [
    ("TPU v2", 22.5e12),  # 45 TFLOP/s per chip, two devices (TensorCores) per chip.
    ("TPU v3", 61.5e12),  # 123 per chip, two devices per chip.
    ("TPU v4", 275e12),  # Megacore: one device per chip.
    ("TPU v5", 459e12),  # v5p.
    ("TPU v5 lite", 197e12),
    ("TPU v6 lite", 918e12),
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM.
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12),  # Not the L4's figure, though its name starts the same.
  ],
)
def test_peak_is_per_jax_device(kind, flops):
  got, source = peak_flops(base_config().metrics, _device(kind, "tpu" if "TPU" in kind else "gpu"))
  assert got == flops and source == f"table: {kind}"


@pytest.mark.parametrize("kind", ["TPU v4 lite", "TPU7x", "NVIDIA H100", "NVIDIA B9000"])
def test_unknown_device_kind_says_so(kind):
  got, source = peak_flops(base_config().metrics, _device(kind))
  assert math.isnan(got)
  assert source == f"unknown device kind {kind!r}: set metrics.peak_flops_per_device"


def test_first_metrics_row_names_an_unknown_device_kind(tiny_config, tmp_path, monkeypatch):
  from pretrain.train import train  # pylint: disable=g-import-not-at-top

  original = metrics_lib.peak_flops
  monkeypatch.setattr(
    metrics_lib, "peak_flops", lambda cfg: original(cfg, _device("Accelerator X9"))
  )
  tiny_config.train.update(steps=2, log_every=1)
  tiny_config.eval.every_steps = 0
  workdir = str(tmp_path / "run")
  train(tiny_config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert rows[0]["peak_flops_source"] == (
    "unknown device kind 'Accelerator X9': set metrics.peak_flops_per_device"
  )
  assert "peak_flops_per_device" not in rows[0]
  trained = [r for r in rows if "loss" in r]
  assert [r["step"] for r in trained] == [1, 2]
  assert all("mfu" not in r and r["tflops_per_sec"] > 0 for r in trained)
