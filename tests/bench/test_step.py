"""The benchmark's figures are finite and consistent with each other (no timing assertions)."""

import json
import math

import pytest

from pretrain.bench import step


def test_run_benchmark_figures_are_consistent(tiny_config):
  results = step.run_benchmark(
    tiny_config, dtypes=("float32", "bfloat16"), reference="none", steps=2, windows=2, warmup=1
  )
  assert [r["dtype"] for r in results["project"]] == ["float32", "bfloat16"]
  assert results["hf"] == [] and results["ratios"] == {}
  for r in results["project"]:
    assert len(r["window_step_seconds"]) == 2
    for key in (
      "step_seconds",
      "tokens_per_sec",
      "tflops_per_sec",
      "mfu",
      "of_matmul_peak",
      "peak_flops",
    ):
      assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["tokens_per_sec"] == pytest.approx(8 * 32 / r["step_seconds"])
    assert r["tflops_per_sec"] == pytest.approx(
      r["flops_per_example"] * 8 / r["step_seconds"] / 1e12
    )
    assert r["mfu"] == pytest.approx(r["tflops_per_sec"] * 1e12 / r["peak_flops"])
    jax_peak = max(m["flops_per_sec"] for m in results["matmul"] if m["dtype"] == r["dtype"])
    assert r["of_matmul_peak"] == pytest.approx(
      r["tflops_per_sec"] * 1e12 / (jax_peak * r["devices"])
    )
  assert {m["shape"] for m in results["matmul"]} == {"256x32x64", "256x64x32"}
  table = step.format_table(results)
  assert "project bfloat16" in table and "tokens/s" in table
  json.dumps(results)  # --json_out writes exactly this.


def test_profile_lists_the_slowest_xla_ops_of_forward_and_backward(tiny_config):
  results = step.run_benchmark(
    tiny_config,
    dtypes=("float32",),
    reference="none",
    steps=1,
    windows=1,
    warmup=1,
    matmul=False,
    profile_ops=5,
  )
  profiled = results["project"][0]["op_profile"]
  ops, kinds = profiled["top"], profiled["kinds"]
  assert 1 <= len(ops) <= 5
  ms = [o["ms"] for o in ops]
  assert ms == sorted(ms, reverse=True) and ms[0] > 0 and all(o["share"] > 0 for o in ops)
  # Each op names the jax operation it came from: forward (jvp) or backward (transpose) of the model.
  assert all("jvp(" in o["from"] for o in ops), ops
  # Every op is counted in its kind; the kinds add up to the time in ops, the slowest op's kind first.
  assert sum(k["ms"] for k in kinds) == pytest.approx(profiled["op_ms"])
  assert ops[0]["ms"] <= kinds[0]["ms"] and all(
    k["ops"] >= 1 and "." not in k["kind"] for k in kinds
  )
  assert any(ops[0]["op"].startswith(k["kind"]) for k in kinds)
  table = step.format_table(results)
  assert "slowest XLA ops" in table and "by kind" in table
  json.dumps(results)


def test_jax_transpose_times_the_same_step_traced_with_jaxs_own_backward(tiny_config):
  from pretrain.models import precision  # pylint: disable=g-import-not-at-top

  with precision.jax_transpose():
    assert not precision.custom_backward()
  assert precision.custom_backward()  # On CPU, outside it: the written-out backward.
  results = step.run_benchmark(
    tiny_config,
    dtypes=("float32",),
    reference="none",
    steps=1,
    windows=1,
    warmup=1,
    matmul=False,
    jax_transpose=True,
  )
  written, plain = results["project"]
  assert (written["backward"], plain["backward"]) == ("written out", "jax transpose")
  assert written["flops_per_step"] == plain["flops_per_step"] and plain["tokens_per_sec"] > 0
  ratio = results["ratios"]["project float32 / the same with jax transpose"]
  assert ratio == pytest.approx(written["tokens_per_sec"] / plain["tokens_per_sec"])
  assert "float32 jax-T" in step.format_table(results)
