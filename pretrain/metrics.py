"""Metrics out: metrics.jsonl, TensorBoard event files, and MFU.

Only process 0 writes; every row is one JSON object with the step.
"""

import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid

from etils import epath
import jax

from pretrain import paths

_logger = logging.getLogger(__name__)

# Dense (not sparse) bf16 peak FLOP/s of one JAX device, by the exact `device.device_kind` string.
# A JAX device is a TensorCore on TPU v2/v3 (two per chip, each its own device) and a whole chip from
# v4 on (megacore, or one core per chip); a GPU is one device.
_TPU_PEAK = {
  # Cloud TPU system architecture docs: 45 TFLOP/s per v2 chip, 2 TensorCores (devices) per chip.
  "tpu v2": 45e12 / 2,
  # Same docs: 123 TFLOP/s per v3 chip, 2 TensorCores (devices) per chip.
  "tpu v3": 123e12 / 2,
  # Same docs: 275 TFLOP/s per v4 chip; megacore, one device per chip.
  "tpu v4": 275e12,
  # Cloud TPU v5p docs: 459 TFLOP/s per chip; megacore, one device. JAX calls it "TPU v5".
  "tpu v5": 459e12,
  "tpu v5p": 459e12,
  # Cloud TPU v5e docs: 197 TFLOP/s per chip, one TensorCore. JAX calls it "TPU v5 lite".
  "tpu v5 lite": 197e12,
  "tpu v5e": 197e12,
  # Cloud TPU v6e (Trillium) docs: 918 TFLOP/s per chip, one TensorCore. JAX: "TPU v6 lite".
  "tpu v6 lite": 918e12,
  "tpu v6e": 918e12,
}
_GPU_PEAK = {
  # NVIDIA H100 datasheet, bf16 tensor core without sparsity (the sheet's 1979/1513/1671 are sparse).
  "nvidia h100 80gb hbm3": 989e12,  # H100 SXM5.
  "nvidia h100 pcie": 756e12,
  "nvidia h100 nvl": 835e12,
  # NVIDIA H200 datasheet: SXM the same tensor cores as H100 SXM (1979 sparse); NVL 1671 sparse.
  "nvidia h200": 989e12,
  "nvidia h200 nvl": 835e12,
  # NVIDIA GH200 datasheet: the Hopper GPU of H100 SXM.
  "nvidia gh200 480gb": 989e12,
  # NVIDIA L4 datasheet: 242 TFLOP/s bf16 with sparsity.
  "nvidia l4": 121e12,
  # NVIDIA L40S datasheet: 733 TFLOP/s bf16 with sparsity.
  "nvidia l40s": 362e12,
}
# NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense for every A100 (SXM4/PCIe, 40/80 GB).
_GPU_PREFIX_PEAK = (("nvidia a100", 312e12),)


def peak_flops(metrics_cfg, device=None) -> tuple[float, str]:
  """(peak FLOP/s of one JAX device, where the figure comes from); NaN for an unknown device kind.

  The config's metrics.peak_flops_per_device wins; a CPU takes metrics.cpu_peak_flops; else the
  tables above, by the device's exact kind, so that no variant borrows another's figure.
  """
  if metrics_cfg.peak_flops_per_device:
    return float(metrics_cfg.peak_flops_per_device), "metrics.peak_flops_per_device"
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return float(metrics_cfg.cpu_peak_flops), "metrics.cpu_peak_flops"
  kind = device.device_kind.strip().lower()
  if kind in _TPU_PEAK or kind in _GPU_PEAK:
    return _TPU_PEAK.get(kind) or _GPU_PEAK[kind], f"table: {device.device_kind}"
  for prefix, flops in _GPU_PREFIX_PEAK:
    if kind.startswith(prefix):
      return flops, f"table: {device.device_kind}"
  return float("nan"), (
    f"unknown device kind {device.device_kind!r}: set metrics.peak_flops_per_device"
  )


def peak_flops_per_device(metrics_cfg, device=None) -> float:
  """Peak FLOP/s of one JAX device (see `peak_flops`); NaN for an unknown device kind."""
  return peak_flops(metrics_cfg, device)[0]


class MetricsWriter:
  """Writes rows to metrics.jsonl and TensorBoard on process 0; a no-op elsewhere.

  A local workdir gets every row appended and flushed at once. A bucket (gs://)
  has no append: the writer holds the whole file (the rows of earlier lives,
  read back at the start, and its own) and uploads it again at most every
  `remote_sync_seconds` and at close; TensorBoard writes its event file in a
  local temporary folder that is copied up at the same times (tensorboardX's
  own gs:// writer would need google-cloud-storage and bypass epath). A killed
  process loses at most the rows of its last `remote_sync_seconds`.
  """

  def __init__(self, workdir: str, enabled: bool = True, remote_sync_seconds: float = 60.0):
    self.enabled = enabled and jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    self._remote = None
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    if not paths.is_remote(workdir):
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      return
    self._remote = epath.Path(workdir)
    self._sync_seconds = float(remote_sync_seconds)
    self._last_sync = -math.inf  # The first row goes up at once: the run shows it has started.
    self._dirty = False
    earlier = self._remote / "metrics.jsonl"
    text = earlier.read_text(encoding="utf-8") if earlier.exists() else ""
    self._lines = [text if not text or text.endswith("\n") else text + "\n"]
    self._tb_local = tempfile.mkdtemp(prefix="pretrain-tensorboard-")
    self._tb_uploaded: dict[str, int] = {}  # Event file name -> size last uploaded.
    # Its own name even for two lives in the same second: the upload would replace the other's file.
    self._tb = SummaryWriter(self._tb_local, filename_suffix=f".{uuid.uuid4().hex[:8]}")

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
    line = json.dumps(clean) + "\n"
    if self._remote is None:
      self._jsonl.write(line)
      self._jsonl.flush()
      return
    self._lines.append(line)
    self._dirty = True
    if time.monotonic() - self._last_sync >= self._sync_seconds:
      self._sync()

  def write_text(self, tag: str, text: str, step: int = 0):
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def _sync(self, final: bool = False):
    """Uploads metrics.jsonl and the event files that grew; a failure is retried at the next sync."""
    self._last_sync = time.monotonic()
    if final:
      self._tb.close()
    else:
      self._tb.flush()
    try:
      if self._dirty:
        (self._remote / "metrics.jsonl").write_text("".join(self._lines), encoding="utf-8")
        self._dirty = False
      for name in sorted(os.listdir(self._tb_local)):
        local = os.path.join(self._tb_local, name)
        size = os.path.getsize(local)
        if self._tb_uploaded.get(name) != size:
          with open(local, "rb") as f:
            (self._remote / "tensorboard" / name).write_bytes(f.read())
          self._tb_uploaded[name] = size
    except Exception as e:  # pylint: disable=broad-except
      # A transient storage error must not stop training; the next sync writes everything again.
      _logger.warning(
        "could not write metrics to %s (%s: %s)%s",
        self._remote,
        type(e).__name__,
        e,
        "" if final else "; retrying at the next sync",
      )

  def close(self):
    if not self.enabled:
      return
    if self._remote is None:
      self._jsonl.close()
      self._tb.close()
      return
    self._sync(final=True)
    shutil.rmtree(self._tb_local, ignore_errors=True)
