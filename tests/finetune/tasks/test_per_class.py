"""finetune.train_examples_per_class: the first k train examples of each class, dev untouched."""

import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.finetune import tasks as tasks_lib


def _dataset(kind=tasks_lib.CLASSIFICATION):
  labels = np.array([0, 1, 1, 2, 0, 1, 0, 2, 2, 2], np.int32)
  texts = ((*(f"s{i}" for i in range(10)),),)
  split = tasks_lib.Split(texts=texts, labels=labels, source="t.tsv")
  dev = tasks_lib.Split(texts=(("d0", "d1"),), labels=np.array([0, 1], np.int32), source="d.tsv")
  return tasks_lib.Dataset("t", kind, ("a", "b", "c"), ("accuracy",), split, {"": dev})


def test_keeps_the_first_k_of_each_class_in_order():
  got = tasks_lib.per_class(_dataset(), 2)
  assert got.train.texts == (("s0", "s1", "s2", "s3", "s4", "s7"),)
  assert got.train.labels.tolist() == [0, 1, 1, 2, 0, 2]
  assert got.dev[""].texts == (("d0", "d1"),) and "first 2 of each class" in got.train.source
  assert len(tasks_lib.per_class(_dataset(), 0).train) == 10
  assert len(tasks_lib.per_class(_dataset(), 99).train) == 10


@pytest.mark.parametrize(
  "k,kind,message",
  [(-1, tasks_lib.CLASSIFICATION, "must be >= 0"), (3, tasks_lib.REGRESSION, "regression task")],
)
def test_bad_values_are_refused(k, kind, message):
  with pytest.raises(PretrainError, match=message):
    tasks_lib.per_class(_dataset(kind), k)
