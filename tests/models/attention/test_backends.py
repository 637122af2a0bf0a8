"""Choosing a backend: decisions and reasons, the fallback logged once and recorded."""

import dataclasses
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain import sharding
from pretrain.errors import PretrainError
from pretrain.models import attention

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For attention_reference.py.
from attention_reference import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  HEADS,
  HEAD_DIM,
  X,
  module_params,
)


def test_resolve_backend_decisions_and_reasons():
  resolve = attention.resolve_backend
  plain = attention.AttentionFeatures(causal=True, padding=True, q_length=512, kv_length=512)
  bf16 = dataclasses.replace(plain, dtype="bfloat16")
  assert resolve("xla", plain, "tpu") == ("xla", "requested")
  assert resolve("auto", plain, "cpu") == ("xla", "auto on cpu: no fused kernel on cpu")
  assert resolve("auto", plain, "tpu") == ("splash_tpu", "auto on tpu")
  assert resolve("auto", bf16, "gpu") == ("dot_product_attention", "auto on gpu")
  # auto's chain on GPU: cuDNN, then pallas_gpu, then xla; the reason says why earlier links were skipped.
  assert resolve("auto", plain, "gpu") == (
    "pallas_gpu",
    "auto on gpu; cuDNN needs bfloat16/float16 compute, not float32",
  )
  refused = {"dot_product_attention": "cuDNN refused the call (RuntimeError: cuDNN not found.)"}
  assert resolve("auto", bf16, "gpu", unavailable=refused) == (
    "pallas_gpu",
    "auto on gpu; cuDNN refused the call (RuntimeError: cuDNN not found.)",
  )
  assert resolve("dot_product_attention", bf16, "gpu", unavailable=refused) == (
    "dot_product_attention",
    "requested; cuDNN refused the call (RuntimeError: cuDNN not found.), so "
    "jax.nn.dot_product_attention runs its XLA version",
  )
  backend, reason = resolve("auto", dataclasses.replace(bf16, dropout=True), "gpu")
  assert backend == "xla" and "dot_product_attention has no attention dropout" in reason
  backend, reason = resolve("auto", dataclasses.replace(plain, soft_cap=True), "gpu")
  assert backend == "xla" and "pallas_gpu has no logits soft-cap" in reason
  assert (
    resolve("auto", dataclasses.replace(plain, soft_cap=True, sliding_window=True), "tpu")[0]
    == "splash_tpu"
  )
  # Explicit requests that cannot be met fall back to xla, saying why.
  cases = [
    ("splash_tpu", plain, "cpu", False, "splash_tpu needs a TPU"),
    ("pallas_gpu", plain, "tpu", False, "pallas_gpu needs a GPU"),
    ("splash_tpu", dataclasses.replace(plain, alibi=True), "tpu", False, "no ALiBi"),
    ("splash_tpu", dataclasses.replace(plain, bias=True), "tpu", False, "no additive logits bias"),
    ("splash_tpu", dataclasses.replace(plain, prefix=True), "tpu", False, "prefix-LM"),
    ("splash_tpu", dataclasses.replace(plain, q_length=100), "tpu", False, "multiples of 128"),
    (
      "pallas_gpu",
      dataclasses.replace(plain, sliding_window=True),
      "gpu",
      False,
      "no sliding window",
    ),
    ("pallas_gpu", dataclasses.replace(plain, dense_mask=True), "gpu", False, "no dense mask"),
    (
      "pallas_gpu",
      dataclasses.replace(plain, self_attention=False),
      "gpu",
      False,
      "only fits self-attention",
    ),
    (
      "pallas_gpu",
      dataclasses.replace(plain, kv_length=256),
      "gpu",
      False,
      "q_length == kv_length",
    ),
    (
      "pallas_gpu",
      dataclasses.replace(plain, q_length=48, kv_length=48),
      "gpu",
      False,
      "multiples of 32",
    ),
    (
      "dot_product_attention",
      dataclasses.replace(plain, soft_cap=True),
      "gpu",
      False,
      "no logits soft-cap",
    ),
    (
      "dot_product_attention",
      dataclasses.replace(plain, dropout=True),
      "cpu",
      False,
      "no attention dropout",
    ),
  ]
  for requested, features, platform, interpret, why in cases:
    backend, reason = resolve(requested, features, platform, interpret=interpret)
    assert backend == "xla" and why in reason, (requested, features, reason)
  # The interpreter runs the kernels anywhere; cuDNN needs half precision.
  assert resolve("pallas_gpu", plain, "cpu", interpret=True) == ("pallas_gpu", "requested")
  assert resolve("splash_tpu", plain, "cpu", interpret=True) == ("splash_tpu", "requested")
  assert resolve("dot_product_attention", bf16, "gpu") == ("dot_product_attention", "requested")
  assert "needs bfloat16/float16" in resolve("dot_product_attention", plain, "gpu")[1]
  with pytest.raises(PretrainError, match="unknown attention backend"):
    resolve("flash", plain, "gpu")


def test_fallback_is_logged_once_and_recorded(caplog):
  mha = attention.MultiHeadAttention(
    HEADS,
    HEAD_DIM,
    attention.AttentionConfig(backend="splash_tpu", position="alibi", interpret=True),
  )
  with (
    caplog.at_level(logging.WARNING, logger="pretrain.models.attention"),
    attention.recording() as resolutions,
  ):
    params = module_params(mha, X)
    for _ in range(2):
      mha.apply({"params": params}, X)
  warnings = [r.getMessage() for r in caplog.records if "splash_tpu" in r.getMessage()]
  assert warnings == ["attention backend splash_tpu -> xla: splash_tpu has no ALiBi bias"]
  assert resolutions == [("splash_tpu", "xla", "splash_tpu has no ALiBi bias")]


def test_recording_is_scoped():
  q = np.ones((1, 4, 1, 8), np.float32)
  attention.dot_product_attention(q, q, q, backend="auto")  # Outside any recording: nothing kept.
  with attention.recording() as outer:
    attention.dot_product_attention(q, q, q)
    with attention.recording() as inner:
      attention.dot_product_attention(q, q, q, backend="auto")
    attention.dot_product_attention(q, q, q)
  assert outer == [("xla", "xla", "requested")]
  assert inner == [("auto", "xla", "auto on cpu: no fused kernel on cpu")]


def test_calls_resolve_for_the_platform_of_the_mesh_in_context():
  """The platform is that of the mesh's devices (compile-only TPU or GPU ones: test_targets.py)."""
  q = np.ones((1, 128, 1, 8), np.float32)
  mask = attention.AttentionMask(causal=True)
  fn = lambda q: attention.dot_product_attention(q, q, q, mask=mask, backend="auto")
  assert attention.target_platform() == "cpu"  # No mesh: jax's default backend.
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  with sharding.mesh_context(mesh), attention.recording() as resolutions:
    assert attention.target_platform() == "cpu"
    jax.make_jaxpr(fn)(q)
  assert resolutions == [("auto", "xla", "auto on cpu: no fused kernel on cpu")]


def test_a_kernel_refusing_the_call_hands_it_to_the_next_in_line(monkeypatch):
  """auto on a GPU host without cuDNN: cuDNN refuses while traced, pallas_gpu has no ALiBi, xla runs it
  (with the ALiBi bias added once)."""
  from pretrain.models.attention import backends  # pylint: disable=g-import-not-at-top
  from pretrain.models.attention import kernels  # pylint: disable=g-import-not-at-top

  def refuse(*args):
    raise kernels.KernelUnavailable("cuDNN refused the call (RuntimeError: cuDNN not found.)")

  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 16, 2, 8)).astype(np.float32) for _ in range(3))
  call = lambda backend: attention.dot_product_attention(
    q, k, v, backend=backend, dtype=jnp.bfloat16, alibi_slopes=np.array([0.5, 0.25])
  )
  want = call("xla")
  monkeypatch.setattr(backends, "target_platform", lambda: "gpu")
  monkeypatch.setattr(kernels, "jax_nn_attention", refuse)
  with attention.recording() as resolutions:
    got = call("auto")
  np.testing.assert_array_equal(got, want)
  assert resolutions == [
    (
      "auto",
      "xla",
      "auto on gpu: cuDNN refused the call (RuntimeError: cuDNN not found.); "
      "pallas_gpu has no ALiBi bias",
    )
  ]
