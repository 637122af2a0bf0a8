"""The benchmark's figures are finite and consistent with each other (no timing assertions)."""
import json
import math

import numpy as np
import pytest

from pretrain import bench
from pretrain.families.bert.config import bert_config


def _tiny_config():
  c = bert_config()
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


def test_profile_lists_the_slowest_xla_ops_of_forward_and_backward():
  results = bench.run_benchmark(_tiny_config(), dtypes=("float32",), reference="none", steps=1, windows=1,
                                warmup=1, matmul=False, profile_ops=5)
  ops = results["project"][0]["top_ops"]
  assert 1 <= len(ops) <= 5
  ms = [o["ms"] for o in ops]
  assert ms == sorted(ms, reverse=True) and ms[0] > 0 and all(o["share"] > 0 for o in ops)
  # Each op names the jax operation it came from: forward (jvp) or backward (transpose) of the model.
  assert all("jvp(" in o["from"] for o in ops), ops
  assert "slowest XLA ops" in bench.format_table(results)
  json.dumps(results)


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


def _family_config(name: str):
  """A tiny config of `name`'s family: one or two layers, seq 16, batch 8."""
  if name == "gpt2":
    from pretrain.families.gpt2.config import gpt2_config  # pylint: disable=g-import-not-at-top
    c = gpt2_config()
    c.tokenizer.vocab_size = 256
    c.model.update(vocab_size=0, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                   max_position_embeddings=16, dtype="float32")
    c.data.max_seq_length = 16
  elif name == "t5":
    from pretrain.families.t5.config import t5_config  # pylint: disable=g-import-not-at-top
    c = t5_config()
    c.tokenizer.vocab_size = 256  # + 100 sentinels -> model vocabulary 384.
    c.model.update(hidden_size=32, intermediate_size=64, head_dim=16, num_heads=2, num_layers=1, num_decoder_layers=1,
                   dtype="float32")
    c.data.inputs_length = 16
  else:
    c = _tiny_config()
    c.task.name = "roberta"
    c.model.update(max_position_embeddings=34, type_vocab_size=1, position_offset=2, pooler=False,
                   nsp_head=False)
    c.data.update(next_sentence_prediction=False)
  c.train.batch_size = 8
  return c


@pytest.mark.parametrize("name,hf_model", [("gpt2", "GPT2LMHeadModel"), ("t5", "T5ForConditionalGeneration")])
def test_family_runs_next_to_its_hf_model(name, hf_model):
  config = _family_config(name)
  task = bench._task(config)  # pylint: disable=protected-access
  results = bench.run_benchmark(config, dtypes=("float32",), reference="hf", steps=1, windows=1, warmup=1,
                                matmul=False, reference_dtypes=("float32",))
  (project,), (hf,) = results["project"], results["hf"]
  assert hf["model"] == hf_model
  assert hf["num_params"] == project["num_params"]  # The same shape: T5's untied head on both sides.
  tokens = 8 * task.tokens_per_example
  for r in (project, hf):
    assert math.isfinite(r["tokens_per_sec"]) and r["tokens_per_sec"] > 0
    assert r["tokens_per_sec"] == pytest.approx(tokens / r["step_seconds"])
    assert r["flops_per_example"] > 0 and r["flops_per_step"] == pytest.approx(8 * r["flops_per_example"])
  assert project["flops_per_example"] == task.train_flops_per_example()
  assert results["ratios"] == {"project float32 / HF torch float32":
                               pytest.approx(project["tokens_per_sec"] / hf["tokens_per_sec"])}
  table = bench.format_table(results)
  assert hf_model in table and results["model"].split()[0] in {"GPT-2", "T5"}


def test_roberta_reference_step_runs():
  # RoBERTa's project step is BERT's network (timed above); its HF reference is its own model.
  config = _family_config("roberta")
  task = bench._task(config)  # pylint: disable=protected-access
  (hf,) = bench.run_cases([bench.hf_case(config, autocast=False, steps=1)], windows=1)
  assert hf["model"] == "RobertaForMaskedLM" and hf["num_params"] > 0
  assert hf["tokens_per_sec"] > 0 and hf["tokens_per_sec"] == pytest.approx(8 * 32 / hf["step_seconds"])
  assert hf["flops_per_example"] == bench.hf_flops_per_example(task)


def test_mlm_reference_counts_its_dense_head_and_says_so():
  config = _family_config("roberta")
  task = bench._task(config)  # pylint: disable=protected-access
  # HF's head projects all 32 positions, the project's the 5 masked ones.
  assert bench.hf_flops_per_example(task) > task.train_flops_per_example()
  (note,) = bench.reference_notes(config)
  assert "all 32 positions" in note and "5 masked" in note
  t5_notes = bench.reference_notes(_family_config("t5"))
  assert any("adafactor" in n for n in t5_notes) and any("z-loss" in n for n in t5_notes)


@pytest.mark.parametrize("name", ["gpt2", "t5", "roberta"])
def test_task_batch_matches_the_task_fields(name):
  task = bench._task(_family_config(name))  # pylint: disable=protected-access
  batch, dummy = bench.task_batch(task, 4), task.dummy_batch(4)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (v.shape, v.dtype) for k, v in dummy.items()}
  if name == "gpt2":
    np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["target_ids"][:, :-1])
  if name == "t5":
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1])
    assert batch["encoder_input_tokens"].max() <= task.first_sentinel


def test_data_benchmark_is_bert_only():
  with pytest.raises(bench.PretrainError, match="BERT's input pipeline only"):
    bench.bench_data(_family_config("gpt2"))
