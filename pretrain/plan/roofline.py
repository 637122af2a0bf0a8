"""A roofline step time: the slowest of compute, HBM traffic and the interconnects, per device.

  compute   FLOPs per device / the chip's peak bf16 FLOP/s: the compiler's count (TPU; it includes
            rematerialized recomputation and the optimizer) or the model's times the recomputation of
            remat_policy=full (4/3: each layer's forward twice), whichever is larger; the compiler
            counts a while loop's body once, so for scanned layers the model's count is the larger.
  hbm       bytes the program reads and writes per device / HBM bandwidth. The compiler's count when
            it gives one (TPU; where it counted loop bodies once, scaled by the FLOPs it missed);
            else (GPU) a floor: the state read and written once plus every temporary byte written and
            read once (arguments + outputs + 2 x temporaries).
  link      bytes each device sends in collectives inside its slice or host / ICI or NVLink bandwidth.
  network   bytes sent between slices or hosts / DCN or network bandwidth per chip.

The predicted step time is the largest bound (the others overlapping with it, as XLA's scheduler
aims for); the sum says what no overlap at all would cost. Tokens/s and MFU follow from it, MFU with
the model's FLOPs (pretrain.metrics' definition), so it is comparable with a measured run's.
"""

from pretrain.plan.targets import Chip

BOUNDS = ("compute", "hbm", "link", "network")


def predict(
  chip: Chip,
  *,
  num_devices: int,
  model_flops_per_step: float,
  flops_per_device: float,
  flops_source: str,
  hbm_bytes_per_device: float | None,
  memory: dict,
  link_bytes_per_device: float,
  network_bytes_per_device: float,
  tokens_per_step: int,
) -> dict:
  """Seconds per bound, the predicted step time (their max), tokens/s and MFU."""
  model_per_device = model_flops_per_step / num_devices
  flops = flops_per_device
  hbm_bytes = hbm_bytes_per_device
  if hbm_bytes is None:
    hbm_bytes = memory["arguments"] + memory["outputs"] + 2 * memory["temporary"]
  seconds = {
    "compute": flops / chip.peak_flops,
    "hbm": hbm_bytes / chip.hbm_bytes_per_s,
    "link": link_bytes_per_device / chip.link_bytes_per_s,
    "network": network_bytes_per_device / chip.network_bytes_per_s,
  }
  step = max(seconds.values())
  bound = max(BOUNDS, key=seconds.__getitem__)
  return {
    "seconds": seconds,
    "bound": bound,
    "step_seconds": step,
    "serial_step_seconds": sum(seconds.values()),
    "tokens_per_sec": tokens_per_step / step if step > 0 else float("inf"),
    "mfu": model_per_device / (step * chip.peak_flops) if step > 0 else 0.0,
    "flops_source": flops_source,
    "hbm_source": "compiler" if hbm_bytes_per_device is not None else "floor (no compiler figure)",
  }
