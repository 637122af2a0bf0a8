"""Optimizers from config: AdamW, LAMB or Adafactor, warmup + decay, clipping, decay mask."""

import math

import jax
import jax.numpy as jnp
import optax

from pretrain.errors import PretrainError

# Leaves that get no weight decay, as in BERT's optimization.py (LayerNorm and biases): `bias`, `scale`
# and any `*_bias` leaf (BERT's MLM head's output_bias, which BERT's "bias" name match excludes too).
_NO_DECAY_LEAVES = ("bias", "scale")


def rsqrt_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
  """peak * sqrt(warmup / max(step, warmup)): constant for warmup_steps, then 1/sqrt(step) decay.

  T5's schedule: with peak 1e-2 and 10k warmup steps this is exactly its
  1 / sqrt(max(step, 10_000)). The "warmup" holds the rate constant; there is no ramp.
  """
  if warmup_steps < 1:
    raise PretrainError(
      f"optimizer.decay='rsqrt' needs optimizer.warmup_steps >= 1, got {warmup_steps}"
    )

  def schedule(step):
    return peak * jnp.sqrt(warmup_steps / jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps))

  return schedule


def check_config(opt_cfg) -> None:
  """PretrainError for an optimizer field outside its domain, NaN and inf included."""
  below_one = ("b1", "b2")
  # learning_rate 0 is allowed (a run that keeps its params); grad_clip_norm 0 turns clipping off.
  for name in (
    "learning_rate",
    "end_learning_rate",
    "weight_decay",
    "grad_clip_norm",
    "eps",
    *below_one,
  ):
    value = getattr(opt_cfg, name)
    if not (
      isinstance(value, (int, float))
      and math.isfinite(value)
      and 0 <= value
      and (value < 1 or name not in below_one)
    ):
      domain = "in [0, 1)" if name in below_one else ">= 0"
      raise PretrainError(f"optimizer.{name}={value!r} must be a finite number {domain}")
  if not isinstance(opt_cfg.warmup_steps, int) or opt_cfg.warmup_steps < 0:
    raise PretrainError(f"optimizer.warmup_steps={opt_cfg.warmup_steps!r} must be an integer >= 0")


def learning_rate_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  peak, warmup = opt_cfg.learning_rate, int(opt_cfg.warmup_steps)
  end = opt_cfg.end_learning_rate
  if opt_cfg.decay == "rsqrt":
    return rsqrt_schedule(peak, warmup)
  decay_steps = max(total_steps - warmup, 1)
  if opt_cfg.decay == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif opt_cfg.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  elif opt_cfg.decay == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise PretrainError(
      f"optimizer.decay={opt_cfg.decay!r}: expected 'linear', 'cosine', 'constant' or 'rsqrt'"
    )
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True for the leaves weight decay applies to."""

  def keep(path, _):
    name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
    return name not in _NO_DECAY_LEAVES and not str(name).endswith("_bias")

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(
  opt_cfg, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  check_config(opt_cfg)
  schedule = learning_rate_schedule(opt_cfg, total_steps)
  kwargs = dict(
    learning_rate=schedule,
    b1=opt_cfg.b1,
    b2=opt_cfg.b2,
    eps=opt_cfg.eps,
    weight_decay=opt_cfg.weight_decay,
    mask=decay_mask,
  )
  if opt_cfg.name == "adamw":
    tx = optax.adamw(**kwargs)
  elif opt_cfg.name == "lamb":
    tx = optax.lamb(**kwargs)
  elif opt_cfg.name == "adafactor":
    # T5's Adafactor (Shazeer & Stern 2018) with optax's defaults, which are T5's: factored second
    # moments (dims >= 128), decay rate 0.8, update clipping at RMS 1, steps relative to the parameter
    # scale, no momentum. b1, b2 and eps are Adam's and do not apply. Adafactor's weight decay is not
    # scaled by the learning rate; scaling it here gives weight_decay AdamW's meaning (lr * wd * param).
    wd = float(opt_cfg.weight_decay)
    decay_rate = (lambda step: wd * schedule(step)) if wd else None
    tx = optax.adafactor(
      learning_rate=schedule, weight_decay_rate=decay_rate, weight_decay_mask=decay_mask
    )
  else:
    raise PretrainError(f"optimizer.name={opt_cfg.name!r}: expected 'adamw', 'lamb' or 'adafactor'")
  if opt_cfg.grad_clip_norm and opt_cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip_norm), tx)
  return tx, schedule
