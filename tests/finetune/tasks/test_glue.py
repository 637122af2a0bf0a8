"""The GLUE readers on small files in the distribution's layouts; a missing column, an unknown label and an
empty split are refused with the file named."""

import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.finetune.tasks import glue

from glue_files import LAYOUTS, write_glue  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_every_task_reads_its_layout(tmp_path):
  root = write_glue(tmp_path)
  cola = glue.load("cola", root)
  assert cola.train.texts == (("The sailors rode the breeze clear of the rocks.", "The more."),)
  assert cola.train.labels.tolist() == [1, 0] and cola.metrics == ("matthews",)
  mrpc = glue.load("mrpc", root)
  assert mrpc.train.texts == (('He said "yes" today.',), ("Today he said yes.",))
  assert mrpc.metrics == ("f1", "accuracy")
  stsb = glue.load("stsb", root)
  assert stsb.kind == "regression" and stsb.train.labels.dtype == np.float32
  assert stsb.train.labels.tolist() == [5.0] and stsb.dev[""].labels.tolist() == [
    pytest.approx(1.2)
  ]
  mnli = glue.load("mnli", root)
  assert set(mnli.dev) == {"", "mismatched_"}
  assert mnli.train.labels.tolist() == [2] and mnli.dev["mismatched_"].labels.tolist() == [0]
  assert mnli.dev[""].texts == (("The man slept.",), ("A man rested.",))
  for name in ("sst2", "qqp", "qnli", "rte", "wnli"):
    d = glue.load(name, root)
    assert d.num_texts == (1 if name == "sst2" else 2) and len(d.train) == len(d.train.labels)
  assert glue.load("qnli", root).dev[""].labels.tolist() == [1]


@pytest.mark.parametrize(
  "task, file, edit, message",
  [
    (
      "rte",
      "dev.tsv",
      lambda lines: [lines[0], "0\tA b.\tA."],
      r"line 2: column 'label' is missing",
    ),
    ("cola", "train.tsv", lambda lines: ["gj04\t1\tThe more."], r"line 1: column 3 is missing"),
    ("sst2", "train.tsv", lambda lines: ["text\tlabel", *lines[1:]], r"no 'sentence' column"),
    ("sst2", "dev.tsv", lambda lines: [lines[0], "fine\t2"], r"label '2' is not one of"),
    ("mnli", "dev_matched.tsv", lambda lines: lines[:1], r"dev split .* has no examples"),
    ("stsb", "train.tsv", lambda lines: [lines[0], lines[1][:-5] + "high"], r"not a number"),
  ],
)
def test_bad_files_are_refused(tmp_path, task, file, edit, message):
  root = write_glue(
    tmp_path, {task: LAYOUTS[task]}, lambda t, f, lines: edit(lines) if f == file else lines
  )
  with pytest.raises(PretrainError, match=message) as e:
    glue.load(task, root)
  assert file in str(e.value)


def test_a_missing_folder_is_named(tmp_path):
  with pytest.raises(PretrainError, match=r"GLUE task qqp: .*QQP does not exist"):
    glue.load("qqp", str(tmp_path))
