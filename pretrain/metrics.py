"""Metrics out: metrics.jsonl, TensorBoard event files, and MFU.

Only process 0 writes; every row is one JSON object with the step.
"""
import json
import math
import os

import jax

# Dense bf16 peak FLOP/s per device (per chip; per core for v2/v3/v4 megacore chips this is the chip).
_PEAK_FLOPS = (
    ("v6", 918e12),
    ("v5p", 459e12),
    ("v5 lite", 197e12),
    ("v5e", 197e12),
    ("v4", 275e12),
    ("v3", 123e12),
    ("v2", 45e12),
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
)


def peak_flops_per_device(metrics_cfg, device=None) -> float:
  """Peak FLOP/s of one device: the config's figure, else the table, else the CPU figure."""
  if metrics_cfg.peak_flops_per_device:
    return float(metrics_cfg.peak_flops_per_device)
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return float(metrics_cfg.cpu_peak_flops)
  kind = device.device_kind.lower()
  for key, flops in _PEAK_FLOPS:
    if key in kind:
      return flops
  return float("nan")


class MetricsWriter:
  """Writes rows to metrics.jsonl and TensorBoard on process 0; a no-op elsewhere."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, row: dict):
    if not self.enabled:
      return
    clean = {"step": int(step)}
    for k, v in row.items():
      if isinstance(v, str):
        clean[k] = v
        continue
      v = float(v)
      clean[k] = v if math.isfinite(v) else str(v)
      if math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps(clean) + "\n")
    self._jsonl.flush()

  def write_text(self, tag: str, text: str, step: int = 0):
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
