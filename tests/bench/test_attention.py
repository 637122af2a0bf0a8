"""The attention benchmark's records are real measurements, and the backends it times agree."""

import json
import math

import jax
import numpy as np
import pytest

from pretrain.bench import attention as bench_attention
from pretrain.errors import PretrainError

TINY = bench_attention.Shape(batch=2, num_heads=2, head_dim=8, dtype="float32")
TIMED = ("xla", "dot_product_attention")
LENGTHS = {"attention": (16, 32), "layer": (32,)}  # A layer compiles slowly; one length shows it.


@pytest.fixture(scope="module")
def measured():
  """{(case, backend, seq_len): (record, (output, gradients))} for the tiny shape."""
  out = {}
  for kind in bench_attention.CASES:
    for backend in TIMED:
      for seq_len in LENGTHS[kind]:
        case = bench_attention.build_case(kind, backend, seq_len, TINY)
        out[kind, backend, seq_len] = bench_attention.measure(case, iters=2, warmup=1)
  return out


def test_records_are_real_measurements(measured):
  for (kind, backend, seq_len), (r, outputs) in measured.items():
    assert (r["case"], r["backend"], r["seq_len"], r["batch"]) == (kind, backend, seq_len, 2)
    assert r["ran"] == backend, r
    assert len(r["seconds"]) == 2 and min(r["seconds"]) > 0
    assert r["step_seconds"] == pytest.approx(float(np.median(r["seconds"])))
    assert r["compile_seconds"] > 0
    assert r["tokens_per_sec"] == pytest.approx(2 * seq_len / r["step_seconds"])
    assert r["tflops_per_sec"] == pytest.approx(r["flops"] / r["step_seconds"] / 1e12)
    assert r["peak_bytes"] == r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"]
    # At least the forward output and the gradients the executable returned.
    assert r["output_bytes"] >= sum(x.nbytes for x in jax.tree.leaves(outputs)) > 0
    assert (
      r["argument_bytes"] >= 4 * 2 * seq_len * 16 * 4
    )  # q, k, v and the cotangent (or x, params, ...).
  attn = measured["attention", "xla", 32][0]
  assert attn["flops"] == 12 * 2 * 2 * 32 * 32 * 8
  layer = measured["layer", "xla", 32][0]
  # Per token and layer: q, k, v, out (4 x 16 x 16) and the FFN (2 x 16 x 64) multiply-adds, plus attention.
  assert layer["flops"] == 3 * 2 * (2 * 32 * (4 * 16 * 16 + 2 * 16 * 64) + 4 * 32 * 32 * 16)
  reason = measured["attention", "dot_product_attention", 16][0]["reason"]
  assert "no cuDNN on cpu" in reason
  json.dumps([r for r, _ in measured.values()])


@pytest.mark.parametrize("kind", bench_attention.CASES)
def test_backends_agree(measured, kind):
  for seq_len in LENGTHS[kind]:
    (out_x, grads_x) = measured[kind, "xla", seq_len][1]
    (out_d, grads_d) = measured[kind, "dot_product_attention", seq_len][1]
    assert np.abs(np.asarray(out_x)).max() > 0.1
    np.testing.assert_allclose(np.asarray(out_d), np.asarray(out_x), atol=1e-5, rtol=1e-5)
    for g_d, g_x in zip(jax.tree.leaves(grads_d), jax.tree.leaves(grads_x)):
      np.testing.assert_allclose(np.asarray(g_d), np.asarray(g_x), atol=1e-4, rtol=1e-4)


def test_unrunnable_backends_are_listed_with_their_reason(measured):
  results = bench_attention.run_benchmark(
    seq_lens=(16, 32), backends=("pallas_gpu", "splash_tpu"), shape=TINY, iters=1
  )
  records = results["records"]
  assert [(r["case"], r["backend"], r["seq_len"]) for r in records] == [
    (kind, backend, n)
    for kind in bench_attention.CASES
    for backend in ("pallas_gpu", "splash_tpu")
    for n in (16, 32)
  ]
  for r in records:
    assert r["skipped"].startswith(
      f"{r['backend']} needs a {'GPU' if r['backend'] == 'pallas_gpu' else 'TPU'}"
    )
  auto = bench_attention.skip_reason("auto", 16, TINY, timed=TIMED)
  assert auto.startswith("auto resolves to xla")
  # The interpreter makes pallas_gpu runnable at 16 tokens; splash still needs multiples of 128.
  assert bench_attention.skip_reason("pallas_gpu", 16, TINY, interpret=True) is None
  assert "multiples of 128" in bench_attention.skip_reason("splash_tpu", 16, TINY, interpret=True)

  results["records"] += [r for r, _ in measured.values()]
  table = bench_attention.format_table(results)
  assert "pallas_gpu               skipped at seq 16,32: pallas_gpu needs a GPU" in table
  assert "fwd+bwd ms" in table and "dot_product_attention" in table
  assert "memory_analysis()" in table
  assert all(math.isfinite(r.get("step_seconds", 0.0)) for r in results["records"])


def test_bad_input_raises():
  with pytest.raises(PretrainError, match="unknown attention backend 'flash'"):
    bench_attention.run_benchmark(backends=("flash",), shape=TINY)
  with pytest.raises(PretrainError, match="seq_lens"):
    bench_attention.run_benchmark(seq_lens=(0,), shape=TINY)
  with pytest.raises(PretrainError, match="unknown case"):
    bench_attention.run_benchmark(cases=("decoder",), shape=TINY)
  with pytest.raises(PretrainError, match="unknown dtype"):
    bench_attention.Shape(dtype="float16")
