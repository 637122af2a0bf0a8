"""Fine-tuning end to end: a small learnable task reaches near-perfect dev accuracy, the run exports to a
transformers BertForSequenceClassification with the same logits, and a resumed run is bit-exact."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers

from pretrain import convert
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.finetune import finetune
from pretrain.finetune import run as run_lib

from hf_folders import max_diff, reload  # pylint: disable=g-import-not-at-top,wrong-import-position


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def final_params(workdir):
  directory, key, _, _ = checkpoints.locate(workdir)
  return checkpoints.read_numpy(directory, key)


@pytest.fixture(scope="module")
def finished(learnable_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finetune") / "run")
  return workdir, finetune(learnable_config(), workdir)


def test_a_learnable_task_reaches_near_perfect_accuracy(finished):
  workdir, last = finished
  assert last["step"] == 48  # 3 epochs x 256 examples / 16.
  assert last["eval_accuracy"] >= 0.95 and last["eval_score"] == last["eval_accuracy"]
  logged = rows(workdir)
  assert [r["step"] for r in logged if "loss" in r] == list(range(4, 49, 4))
  assert [r["step"] for r in logged if "eval_accuracy" in r] == [48]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  saved = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
    os.path.join(workdir, "checkpoints", "48", "config")
  )
  assert saved["finetune"]["label_names"] == "no,yes" and saved["optimizer"]["warmup_steps"] == 5
  assert saved["_tokenizer"]["fingerprint"]  # The pretraining run's tokenizer came along.


def test_to_hf_of_a_finetuned_run_gives_the_same_logits(finished, learnable_config, tmp_path):
  workdir, _ = finished
  run, dataset, tokenizer = run_lib.prepare(learnable_config())
  task = run_lib._make_task(run, tokenizer, dataset)  # pylint: disable=protected-access
  batch = task.encode(dataset.dev[""])
  params = final_params(workdir)
  ours = np.asarray(task.predict(task.build_model(), params, batch))
  convert.to_hf(workdir, str(tmp_path / "hf"))
  hf = reload(transformers.BertForSequenceClassification, tmp_path / "hf")
  with torch.no_grad():
    theirs = hf(
      input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
      token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
      attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
    ).logits.numpy()
  assert max_diff(ours, theirs) <= 1e-4
  assert hf.config.id2label == {0: "no", 1: "yes"}


def test_resume_mid_finetune_is_bit_exact(finished, learnable_config, tmp_path):
  workdir, last = finished
  resumed = str(tmp_path / "resumed")
  first = finetune(
    learnable_config(), resumed, stop_at_step=24
  )  # Mid-epoch 2, between checkpoints.
  assert first["step"] == 24
  again = finetune(learnable_config(), resumed)
  assert again["step"] == 48 and again["eval_accuracy"] == last["eval_accuracy"]
  a, b = checkpoints.flatten(final_params(workdir)), checkpoints.flatten(final_params(resumed))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  losses = {r["step"]: r["loss"] for r in rows(workdir) if "loss" in r}
  assert {r["step"]: r["loss"] for r in rows(resumed) if "loss" in r} == losses

  other = learnable_config()
  other.finetune.max_seq_length = 24
  with pytest.raises(PretrainError, match=r"finetune.max_seq_length is 24 but the checkpoint"):
    finetune(other, resumed)
