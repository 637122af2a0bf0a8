"""The benchmark's figures are finite and consistent with each other (no timing assertions)."""
import json
import math

import pytest

from pretrain import bench
from pretrain.config import base_config


def _tiny_config():
  c = base_config()
  c.tokenizer.vocab_size = 512
  c.model.update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                 max_position_embeddings=32, dtype="float32")
  c.data.update(max_seq_length=32, max_predictions_per_seq=5)
  c.train.batch_size = 8
  return c


def test_run_benchmark_figures_are_consistent():
  config = _tiny_config()
  results = bench.run_benchmark(config, dtypes=("float32", "bfloat16"), reference="none", steps=2,
                                windows=2, warmup=1)
  assert [r["dtype"] for r in results["project"]] == ["float32", "bfloat16"]
  assert results["hf"] == [] and results["ratios"] == {}
  for r in results["project"]:
    assert len(r["window_step_seconds"]) == 2
    for key in ("step_seconds", "tokens_per_sec", "tflops_per_sec", "mfu", "of_matmul_peak", "peak_flops"):
      assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["tokens_per_sec"] == pytest.approx(8 * 32 / r["step_seconds"])
    assert r["tflops_per_sec"] == pytest.approx(r["flops_per_example"] * 8 / r["step_seconds"] / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops_per_sec"] * 1e12 / r["peak_flops"])
    jax_peak = max(m["flops_per_sec"] for m in results["matmul"] if m["dtype"] == r["dtype"])
    assert r["of_matmul_peak"] == pytest.approx(r["tflops_per_sec"] * 1e12 / (jax_peak * r["devices"]))
  assert {m["shape"] for m in results["matmul"]} == {"256x32x64", "256x64x32"}
  table = bench.format_table(results)
  assert "project bfloat16" in table and "tokens/s" in table
  json.dumps(results)  # --json_out writes exactly this.


def test_measure_is_round_robin_and_caps_slow_cases():
  calls = []

  def case(label, **kwargs):
    return bench.Case(label, lambda n: calls.append((label, n)), lambda t: t, **kwargs)

  fast, capped = case("fast", steps=3, warmup=1), case("capped", steps=50, warmup=1, max_seconds=0.0)
  timings = bench.measure([fast, capped], windows=3, pause=0.0)
  assert calls[:2] == [("fast", 1), ("capped", 1)]  # Warmups first.
  assert calls[2:] == [("fast", 3), ("capped", 1), ("fast", 3), ("fast", 3)]
  assert len(timings[0].window_step_seconds) == 3 and timings[0].steps_per_window == 3
  assert len(timings[1].window_step_seconds) == 1 and timings[1].steps_per_window == 1


def test_synthetic_batch_matches_the_task_fields():
  task = bench._task(_tiny_config())  # pylint: disable=protected-access
  batch = bench.synthetic_batch(4, 32, 5, 512)
  dummy = task.dummy_batch(4)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (v.shape, v.dtype) for k, v in dummy.items()}
  assert (batch["masked_lm_positions"] > 0).all()
  assert all(len(set(row)) == 5 for row in batch["masked_lm_positions"].tolist())
