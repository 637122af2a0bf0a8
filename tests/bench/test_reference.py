"""Each family's HF torch reference runs next to the project's step, at the same shape."""

import math

import pytest

from pretrain import families
from pretrain.bench import batches
from pretrain.bench import reference
from pretrain.bench import step
from pretrain.bench import timing


def test_every_family_has_the_reference_interface():
  for name in families.FAMILIES:
    ref = families.family_part(name, "hf_reference")
    assert [n for n in reference.INTERFACE if not hasattr(ref, n)] == [], name


@pytest.mark.parametrize(
  "name,hf_model", [("gpt2", "GPT2LMHeadModel"), ("t5", "T5ForConditionalGeneration")]
)
def test_family_runs_next_to_its_hf_model(name, hf_model, family_config):
  config = family_config(name)
  task = batches.bench_task(config)
  results = step.run_benchmark(
    config,
    dtypes=("float32",),
    reference="hf",
    steps=1,
    windows=1,
    warmup=1,
    matmul=False,
    reference_dtypes=("float32",),
  )
  (project,), (hf,) = results["project"], results["hf"]
  assert hf["model"] == hf_model
  assert (
    hf["num_params"] == project["num_params"]
  )  # The same shape: T5's untied head on both sides.
  tokens = 8 * task.tokens_per_example
  for r in (project, hf):
    assert math.isfinite(r["tokens_per_sec"]) and r["tokens_per_sec"] > 0
    assert r["tokens_per_sec"] == pytest.approx(tokens / r["step_seconds"])
    assert r["flops_per_example"] > 0 and r["flops_per_step"] == pytest.approx(
      8 * r["flops_per_example"]
    )
  assert project["flops_per_example"] == task.train_flops_per_example()
  assert results["ratios"] == {
    "project float32 / HF torch float32": pytest.approx(
      project["tokens_per_sec"] / hf["tokens_per_sec"]
    )
  }
  table = step.format_table(results)
  assert hf_model in table and results["model"].split()[0] in {"GPT-2", "T5"}


def test_roberta_reference_step_runs(family_config):
  # RoBERTa's project step is BERT's network (timed above); its HF reference is its own model.
  config = family_config("roberta")
  task = batches.bench_task(config)
  (hf,) = timing.run_cases([reference.hf_case(config, autocast=False, steps=1)], windows=1)
  assert hf["model"] == "RobertaForMaskedLM" and hf["num_params"] > 0
  assert hf["tokens_per_sec"] > 0 and hf["tokens_per_sec"] == pytest.approx(
    8 * 32 / hf["step_seconds"]
  )
  assert hf["flops_per_example"] == reference.hf_flops_per_example(task)


def test_mlm_reference_counts_its_dense_head_and_says_so(family_config):
  config = family_config("roberta")
  task = batches.bench_task(config)
  # HF's head projects all 32 positions, the project's the 5 masked ones.
  assert reference.hf_flops_per_example(task) > task.train_flops_per_example()
  (note,) = reference.reference_notes(config)
  assert "all 32 positions" in note and "5 masked" in note
  t5_notes = reference.reference_notes(family_config("t5"))
  assert any("adafactor" in n for n in t5_notes) and any("z-loss" in n for n in t5_notes)
