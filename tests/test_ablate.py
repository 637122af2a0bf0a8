"""The ablation runner: same budget for every variant, resumable, and a report with real figures."""

import csv
import functools
import json
import os

import ml_collections
import pytest

from pretrain import ablate
from pretrain import jobs
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert
from pretrain.families.gpt2 import model as gpt2


def _sweep(corpus_path, variants):
  s = ml_collections.ConfigDict()
  s.base = "configs/bert_tiny.py"
  s.base_overrides = dict(
    data=dict(
      source="text", paths=corpus_path, max_seq_length=32, max_predictions_per_seq=5, num_threads=1
    ),
    tokenizer=dict(vocab_size=512),
    model=dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, dtype="float32"),
    train=dict(steps=4, batch_size=8, log_every=2),
    eval=dict(every_steps=2, batch_size=8, num_batches=1),
    checkpoint=dict(every_steps=2),
    metrics=dict(progress_bar=False),
  )
  s.variants = variants
  return s


def test_variants_share_the_budget_and_unknown_keys_are_refused(text_corpus):
  configs = ablate.variant_configs(
    _sweep(text_corpus, {"base": {}, "wide": {"model": {"intermediate_size": 128}}})
  )
  assert (
    configs["wide"].model.intermediate_size == 128 and configs["base"].model.intermediate_size == 64
  )
  assert configs["wide"].train.steps == configs["base"].train.steps == 4
  with pytest.raises(PretrainError, match="changes train.steps"):
    ablate.variant_configs(_sweep(text_corpus, {"longer": {"train": {"steps": 8}}}))
  with pytest.raises(PretrainError, match="num_headz"):
    ablate.variant_configs(_sweep(text_corpus, {"typo": {"model": {"num_headz": 4}}}))


def test_sweep_writes_report_skips_finished_and_resumes_interrupted(
  text_corpus, tmp_path, monkeypatch
):
  sweep = _sweep(text_corpus, {"h2": {}, "h4": {"model": {"num_heads": 4}}})
  workdir = str(tmp_path / "sweep")
  # Stop h4 half way, as a SIGTERM would (train saves and returns): the variant is recorded as
  # interrupted, and the sweep must resume it, neither skip it nor restart it.
  from pretrain import train as train_module  # pylint: disable=g-import-not-at-top

  configs = ablate.variant_configs(sweep)
  h4_dir = os.path.join(workdir, "h4")
  monkeypatch.setattr(train_module, "train", functools.partial(train_module.train, stop_at_step=2))
  jobs.run_in_process(train_module.train, configs["h4"].to_dict(), h4_dir, steps=4)
  monkeypatch.undo()
  assert (
    json.load(open(os.path.join(h4_dir, ablate.RESULT), encoding="utf-8"))["status"]
    == "interrupted"
  )

  rows = ablate.run_sweep(sweep, workdir, log=lambda s: None)
  assert {r["variant"] for r in rows} == {"h2", "h4"} and all(r["status"] == "done" for r in rows)
  assert [r["eval_loss"] for r in rows] == sorted(r["eval_loss"] for r in rows)
  for r in rows:
    assert r["params"] > 0 and r["tokens_per_sec"] > 0 and r["peak_memory_mib"] > 10
    assert r["compile_seconds"] > 0 and r["tokens_per_step"] == 8 * 32
    assert 0 < r["final_train_loss"] < 10 and 0 <= r["eval_accuracy"] <= 1
    assert r["attention_backend"]
  h4_steps = [
    json.loads(l)["step"]
    for l in open(os.path.join(workdir, "h4", "metrics.jsonl"))
    if '"loss"' in l
  ]
  assert h4_steps == [2, 4]  # Steps 1-2 from the interrupted run, 3-4 after the resume.

  report = open(os.path.join(workdir, "report.md"), encoding="utf-8").read()
  assert "configs/bert_tiny.py" in report and "| h2 |" in report and "| h4 |" in report
  assert "the same 4 steps x 256 tokens = 1,024 tokens for every variant" in report
  with open(os.path.join(workdir, "results.csv"), encoding="utf-8") as f:
    csv_rows = list(csv.DictReader(f))
  assert [r["variant"] for r in csv_rows] == [r["variant"] for r in rows]
  assert float(csv_rows[0]["eval_loss"]) == pytest.approx(rows[0]["eval_loss"])
  png = os.path.join(workdir, "loss_curves.png")
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000

  before = {n: os.path.getmtime(os.path.join(workdir, n, "metrics.jsonl")) for n in ("h2", "h4")}
  messages = []
  again = ablate.run_sweep(sweep, workdir, log=messages.append)
  assert messages == ["h2: finished earlier, skipped", "h4: finished earlier, skipped"]
  assert before == {
    n: os.path.getmtime(os.path.join(workdir, n, "metrics.jsonl")) for n in ("h2", "h4")
  }
  assert [r["eval_loss"] for r in again] == [r["eval_loss"] for r in rows]


def test_unknown_variant_and_missing_base_are_clear_errors(text_corpus, tmp_path):
  sweep = _sweep(text_corpus, {"a": {}})
  with pytest.raises(PretrainError, match="unknown variant"):
    ablate.run_sweep(sweep, str(tmp_path / "s"), only=["b"])
  sweep.base = "configs/absent.py"
  with pytest.raises(PretrainError, match="absent.py"):
    ablate.variant_configs(sweep)


@pytest.mark.parametrize(
  "path,family",
  [("configs/ablations/attention.py", "bert"), ("configs/ablations/gpt2_window.py", "gpt2")],
)
def test_shipped_sweeps_change_only_attention(path, family):
  """Each shipped variant is valid, shares the budget, and differs from the first only in model.attention."""
  configs = ablate.variant_configs(ablate.load_config_file(path))
  assert len(configs) >= 4
  first = next(iter(configs.values()))
  model_cls = {"bert": bert.BertConfig, "gpt2": gpt2.Gpt2Config}[family]
  built = set()
  for c in configs.values():
    assert c.task.name == family
    for section in ("data", "train", "optimizer", "task"):
      assert c[section].to_dict() == first[section].to_dict()
    model = c.model.to_dict()
    assert {k: v for k, v in model.items() if k != "attention"} == {
      k: v for k, v in first.model.to_dict().items() if k != "attention"
    }
    built.add(model_cls.from_dict(dict(model, vocab_size=512)).attention)
  assert len(built) == len(configs)  # Every variant is a different attention.
