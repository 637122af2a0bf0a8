"""Adding a family is one package plus one registry line: a toy family from the test tree trains end to end."""

import json
import math
import os

import numpy as np
import pytest

from pretrain import families
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.train import train

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def toy_registered(monkeypatch):
  monkeypatch.syspath_prepend(
    HERE
  )  # The package tests/families/toy_family, imported as `toy_family`.
  monkeypatch.setitem(families.FAMILIES, "toy", "toy_family.task:ToyTask")  # The one registry line.


def test_a_toy_family_from_the_test_tree_trains_two_steps(toy_registered, tiny_config, tmp_path):
  c = tiny_config
  c.task.name = "toy"
  c.train.update(steps=2, log_every=1)
  c.eval.update(every_steps=2)
  c.checkpoint.update(every_steps=2)
  workdir = str(tmp_path / "run")
  last = train(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2]
  # At init a bigram LM is near uniform over the 512 pieces: loss about log(512).
  assert all(
    math.isfinite(r["loss"]) and abs(r["loss"] - math.log(512)) < 1.0 for r in train_rows
  ), train_rows
  assert {"accuracy", "tokens_per_sec", "mfu", "goodput", "grad_norm"} <= set(train_rows[0])
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [2] and math.isfinite(evals[0]["eval_loss"])
  assert last["step"] == 2 and os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
  params = checkpoints.load_params(workdir)
  assert params["embed"]["embedding"].shape == (512, 64) and params["out"]["kernel"].shape == (
    64,
    512,
  )
  assert np.isfinite(params["out"]["kernel"]).all()


def test_an_unregistered_family_is_named_in_the_error(tiny_config, tmp_path):
  c = tiny_config
  c.task.name = "toy"
  with pytest.raises(
    PretrainError, match="task.name='toy': expected one of 'bert', 'roberta', 'gpt2', 't5'"
  ):
    train(c, str(tmp_path / "run"))
