"""Metrics: MFU peak lookup, metrics.jsonl rows."""

import json
import math
import types

from pretrain.config import base_config
from pretrain.metrics import MetricsWriter, peak_flops_per_device


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
