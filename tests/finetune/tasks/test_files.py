"""The generic JSONL / CSV task: fields by name, labels from the train file or the config, bad rows named."""

import json

import ml_collections
import pytest

from pretrain.errors import PretrainError
from pretrain.finetune.config import finetune_config
from pretrain.finetune.tasks import files


def section(**fields):
  ft = finetune_config("files").finetune
  ft.update(fields)
  return ft


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def test_jsonl_pairs_and_csv_regression(tmp_path):
  rows = [{"q": "Why?", "a": "Because.", "label": "yes"}, {"q": "Who?", "a": "Me.", "label": "no"}]
  train = write_jsonl(tmp_path / "train.jsonl", rows)
  d = files.load(section(train_file=train, dev_file=train, text_fields="q,a"))
  assert d.label_names == ("no", "yes") and d.train.labels.tolist() == [1, 0]
  assert d.train.texts == (("Why?", "Who?"), ("Because.", "Me."))
  (tmp_path / "t.csv").write_text('text,score\n"a, quoted text",0.5\nplain,2\n', encoding="utf-8")
  csv_path = str(tmp_path / "t.csv")
  r = files.load(
    section(
      train_file=csv_path,
      dev_file=csv_path,
      text_fields="text",
      label_field="score",
      kind="regression",
    )
  )
  assert r.kind == "regression" and r.metrics == ("pearson", "spearman")
  assert r.train.texts == (("a, quoted text", "plain"),) and r.train.labels.tolist() == [0.5, 2.0]


@pytest.mark.parametrize(
  "dev_rows, fields, message",
  [
    ([{"text": "x", "label": "maybe"}], {}, r"label 'maybe' is not one of the task's labels"),
    ([{"text": "x"}], {}, r"line 1: field 'label' is missing"),
    ([], {}, r"dev split .* has no examples"),
    ([{"text": "x", "label": "yes"}], {"labels": "yes"}, r"needs two labels or more"),
    ([{"text": "x", "label": "yes"}], {"metrics": "bleu"}, r"'bleu' is unknown"),
  ],
)
def test_bad_input(tmp_path, dev_rows, fields, message):
  train = write_jsonl(
    tmp_path / "train.jsonl", [{"text": "a", "label": "yes"}, {"text": "b", "label": "no"}]
  )
  dev = write_jsonl(tmp_path / "dev.jsonl", dev_rows)
  with pytest.raises(PretrainError, match=message):
    files.load(section(train_file=train, dev_file=dev, text_fields="text", **fields))


def test_a_csv_row_missing_a_column(tmp_path):
  (tmp_path / "t.csv").write_text("text,label\nfine,yes\nshort\n", encoding="utf-8")
  path = str(tmp_path / "t.csv")
  with pytest.raises(PretrainError, match=r"line 3: column 'label' is missing"):
    files.load(section(train_file=path, dev_file=path, text_fields="text", labels="no,yes"))
  assert isinstance(section(), ml_collections.ConfigDict)
