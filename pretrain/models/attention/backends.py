"""Which backend computes an attention call, and why: a pure policy, plus a scoped record of its decisions.

`resolve_backend` decides from the requested backend, what the call needs
(`AttentionFeatures`) and the platform, nothing else. Calls resolve at trace
time, so a caller that wants to know what a compiled function runs wraps its
tracing in `recording()`; nothing is kept outside such a block.

The platform is the one the traced program is compiled for (`target_platform`),
not the host's: a train step built over a mesh of compile-only TPU or GPU
devices on a CPU machine (ahead-of-time compilation) gets the TPU or GPU
kernels.
"""

import contextlib
import contextvars
import dataclasses
import logging
import os
from typing import Iterator, NamedTuple


from pretrain import logs
from pretrain.errors import PretrainError
from pretrain.models.attention.masks import AttentionMask
from pretrain.models.precision import target_platform  # noqa: F401  (re-exported; functional.py calls it here)

BACKENDS = ("xla", "dot_product_attention", "pallas_gpu", "splash_tpu", "auto")
INTERPRET_ENV = "PRETRAIN_ATTENTION_INTERPRET"

_logger = logging.getLogger("pretrain.models.attention")


def check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise PretrainError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")


def interpret_default() -> bool:
  """Whether PRETRAIN_ATTENTION_INTERPRET asks for the Pallas interpreter."""
  return os.environ.get(INTERPRET_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclasses.dataclass(frozen=True)
class AttentionFeatures:
  """What one attention call needs, as far as choosing a backend goes."""

  dropout: bool = False  # Active attention-probability dropout.
  bias: bool = False  # An arbitrary additive logits bias (e.g. T5's relative bias).
  alibi: bool = False
  soft_cap: bool = False
  dense_mask: bool = False  # An arbitrary boolean mask array.
  causal: bool = False
  sliding_window: bool = False
  prefix: bool = False  # Per-example prefix-LM.
  segments: bool = False  # Packed segment ids.
  kv_segments: bool = False  # Separate key segment ids (cross-attention).
  padding: bool = False  # An input mask on the keys.
  self_attention: bool = True  # Queries and keys are the same sequence.
  grouped: bool = False  # num_kv_heads < num_heads.
  dtype: str = "float32"  # Matmul compute dtype.
  q_length: int | None = None  # None: unknown, assumed to fit every kernel.
  kv_length: int | None = None

  @classmethod
  def of_mask(cls, mask: AttentionMask | None, **fields) -> "AttentionFeatures":
    """The features of a call with this (structured) mask; fields give the rest."""
    if mask is not None:
      fields.update(
        dense_mask=mask.dense is not None,
        causal=mask.causal,
        sliding_window=mask.sliding_window is not None,
        prefix=mask.prefix_length is not None,
        segments=mask.segment_ids is not None,
        kv_segments=mask.kv_segment_ids is not None,
        padding=mask.input_mask is not None,
      )
    return cls(**fields)


class Resolution(NamedTuple):
  requested: str
  backend: str
  reason: str


def _pallas_gpu_length_ok(n: int) -> bool:
  # Forward blocks are min(128, n) long, backward blocks min(32, n).
  return n <= 32 or (n <= 128 and n % 32 == 0) or n % 128 == 0


def _unsupported(backend: str, f: AttentionFeatures, platform: str, interpret: bool) -> str | None:
  """Why `backend` cannot compute a call with features f on platform; None when it can."""
  if backend == "xla":
    return None
  if f.dropout:
    return "has no attention dropout"
  if backend == "dot_product_attention":
    if f.soft_cap:
      return "has no logits soft-cap"
    return None
  kernel_platform = {"pallas_gpu": "gpu", "splash_tpu": "tpu"}[backend]
  if platform != kernel_platform and not interpret:
    return (
      f"needs a {kernel_platform.upper()} (platform is {platform}; the Pallas interpreter runs it "
      f"anywhere with {INTERPRET_ENV}=1)"
    )
  common = (
    (f.bias, "takes no additive logits bias"),
    (f.alibi, "has no ALiBi bias"),
    (f.dense_mask, "takes no dense mask array"),
    (f.prefix, "has no per-example prefix-LM mask"),
  )
  for unsupported, why in common:
    if unsupported:
      return why
  lengths = [n for n in (f.q_length, f.kv_length) if n is not None]
  if backend == "pallas_gpu":
    if f.soft_cap:
      return "has no logits soft-cap"
    if f.sliding_window:
      return "has no sliding window"
    if f.kv_segments:
      return "shares one segment-id array between queries and keys (no kv_segment_ids)"
    if f.padding and not f.self_attention:
      return "expresses padding through shared segment ids, which only fits self-attention"
    if f.q_length is not None and f.kv_length is not None and f.q_length != f.kv_length:
      return f"needs q_length == kv_length (got {f.q_length} and {f.kv_length})"
    if not all(_pallas_gpu_length_ok(n) for n in lengths):
      return f"needs lengths <= 32, multiples of 32 up to 128, or multiples of 128 (got {lengths})"
    return None
  if not all(n % 128 == 0 for n in lengths):  # splash_tpu
    return f"needs lengths that are multiples of 128 (got {lengths})"
  return None


# What `auto` tries on each platform, in order; xla ends every chain (it runs anything).
AUTO_CHAINS = {"tpu": ("splash_tpu",), "gpu": ("dot_product_attention", "pallas_gpu")}


def cudnn_missing(
  features: AttentionFeatures, platform: str, unavailable: dict[str, str] | None = None
) -> str | None:
  """Why jax.nn.dot_product_attention cannot run cuDNN's fused kernel for the call; None when it can.

  `unavailable` holds what kernels refused while tracing (see `resolve_backend`).
  """
  if platform != "gpu":
    return f"no cuDNN on {platform}"
  if features.dtype not in ("bfloat16", "float16"):
    return f"cuDNN needs bfloat16/float16 compute, not {features.dtype}"
  return (unavailable or {}).get("dot_product_attention")


def resolve_backend(
  requested: str,
  features: AttentionFeatures,
  platform: str,
  *,
  interpret: bool = False,
  unavailable: dict[str, str] | None = None,
) -> tuple[str, str]:
  """(backend, reason): the backend that computes a call with `features` on `platform`.

  Pure: decides from its arguments only. `platform` is the one compiled for
  ('cpu', 'gpu', 'tpu'; see `target_platform`); `interpret` lets the Pallas
  kernels run anywhere; `unavailable` maps a backend to why it refused this
  call when traced (cuDNN missing on the host, or a shape it lacks), so that
  the caller can resolve again and take the next in line.
  """
  check_backend(requested)
  unavailable = unavailable or {}
  if requested == "xla":
    return "xla", "requested"
  if requested != "auto":
    why = _unsupported(requested, features, platform, interpret)
    if why is not None:
      return "xla", f"{requested} {why}"
    if requested == "dot_product_attention":
      why = cudnn_missing(features, platform, unavailable)
      if why is not None:
        return requested, f"requested; {why}, so jax.nn.dot_product_attention runs its XLA version"
    elif requested in unavailable:
      return "xla", f"{requested} {unavailable[requested]}"
    return requested, "requested"
  candidates = AUTO_CHAINS.get(platform, ())
  reasons = []
  for candidate in candidates:
    why = (
      cudnn_missing(features, platform, unavailable)
      if candidate == "dot_product_attention"
      else (f"{candidate} {unavailable[candidate]}" if candidate in unavailable else None)
    )
    if why is None:
      why = _unsupported(candidate, features, platform, interpret)
      why = why and f"{candidate} {why}"
    if why is None:
      return candidate, f"auto on {platform}" + "".join(f"; {r}" for r in reasons)
    reasons.append(why)
  if not candidates:
    reasons.append(f"no fused kernel on {platform}")
  return "xla", f"auto on {platform}: " + "; ".join(reasons)


# The list of the innermost open recording() (None outside one); a context variable, so threads and
# nested blocks keep their own.
_recording: contextvars.ContextVar[list[Resolution] | None] = contextvars.ContextVar(
  "attention_resolutions", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[list[Resolution]]:
  """Yields the list of distinct (requested, backend, reason) decided by the calls traced inside the block."""
  resolutions: list[Resolution] = []
  token = _recording.set(resolutions)
  try:
    yield resolutions
  finally:
    _recording.reset(token)


def record(requested: str, backend: str, reason: str) -> None:
  """Notes one call's decision in the open recording, and logs a fallback (or auto's choice) once."""
  resolution = Resolution(requested, backend, reason)
  resolutions = _recording.get()
  if resolutions is not None and resolution not in resolutions:
    resolutions.append(resolution)
  if requested == "auto":
    logs.log_once(_logger, f"attention backend auto -> {backend} ({reason})", logging.INFO)
  elif reason != "requested":
    logs.log_once(_logger, f"attention backend {requested} -> {backend}: {reason}")
