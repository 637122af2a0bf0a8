"""The benchmark's batches are the task's own examples, full length, with its dummy batch's fields."""

import glob
import os

import numpy as np
import pytest

from pretrain import ablate
from pretrain.bench import batches

_CONFIGS = sorted(glob.glob(os.path.join(ablate.REPO, "configs", "*.py")))


def _fields(b: dict) -> dict:
  return {k: (v.shape, v.dtype) for k, v in b.items()}


def _assert_every_position_real(task, batch: dict):
  """Masks all ones and every loss weight 1: no padding, every prediction slot used."""
  for k, v in batch.items():
    if k.endswith("_mask") or v.dtype == np.float32:
      assert (v == 1).all(), (task.name, k)


def test_synthetic_batch_matches_the_task_fields(tiny_config):
  task = batches.bench_task(tiny_config)
  batch = batches.task_batch(task, 4)
  dummy = task.dummy_batch(4)
  assert _fields(batch) == _fields(dummy)
  assert (batch["masked_lm_positions"] > 0).all()
  assert all(len(set(row)) == 5 for row in batch["masked_lm_positions"].tolist())
  _assert_every_position_real(task, batch)
  assert (batch["input_ids"][:, 0] == task.special.cls).all()


@pytest.mark.parametrize("name", ["gpt2", "t5", "roberta"])
def test_task_batch_matches_the_task_fields(name, family_config):
  task = batches.bench_task(family_config(name))
  batch, dummy = batches.task_batch(task, 4), task.dummy_batch(4)
  assert _fields(batch) == _fields(dummy)
  _assert_every_position_real(task, batch)
  if name == "gpt2":
    np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["target_ids"][:, :-1])
  if name == "t5":
    np.testing.assert_array_equal(
      batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1]
    )
    assert batch["encoder_input_tokens"].max() <= task.first_sentinel


@pytest.mark.parametrize("path", _CONFIGS, ids=os.path.basename)
def test_every_config_times_full_length_batches(path):
  config = ablate.load_config_file(path)
  task = batches.bench_task(config)
  batch = batches.task_batch(task, 2)
  assert _fields(batch) == _fields(task.dummy_batch(2))
  _assert_every_position_real(task, batch)
