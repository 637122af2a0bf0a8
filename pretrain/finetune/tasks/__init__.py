"""Labelled datasets for fine-tuning: what a task's files hold, read into splits of texts and labels.

`finetune.task` names the dataset: one of the nine GLUE tasks (tasks/glue.py, read from the
GLUE distribution's TSV files under `finetune.data_dir`), `files` (JSONL, CSV or TSV files
with configurable fields, tasks/files.py), `embedded` (which package a sentence of CPython's own
docstrings comes from, no download, tasks/embedded.py) or `embedded_order` (whether such a
sentence's words are in their order, tasks/word_order.py). Every reader checks what it reads: a
label outside the label set, a missing column or an empty split is a PretrainError naming the file.
"""

import dataclasses

import numpy as np

from pretrain.errors import PretrainError

CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: texts[c][i] is column c (one, or two for pairs) of example i; labels[i] its label
  (int32 class index, or float32 for regression)."""

  texts: tuple[tuple[str, ...], ...]
  labels: np.ndarray
  source: str  # The file it came from (for messages).

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  kind: str  # CLASSIFICATION or REGRESSION.
  label_names: tuple[str, ...]  # Classes in index order (empty for regression).
  metrics: tuple[str, ...]  # pretrain/finetune/metrics.py names; the GLUE score is their mean.
  train: Split
  dev: dict[
    str, Split
  ]  # "" the main dev split; others (MNLI's "mismatched_") prefix their metrics.
  # Text-to-text (T5) targets of the classes, in index order; empty: the label names.
  label_words: tuple[str, ...] = ()

  @property
  def target_words(self) -> tuple[str, ...]:
    return self.label_words or self.label_names

  @property
  def num_outputs(self) -> int:
    return 1 if self.kind == REGRESSION else len(self.label_names)

  @property
  def num_texts(self) -> int:
    return len(self.train.texts)


def parse_labels(values, kind: str, label_names, source: str, lines) -> np.ndarray:
  """Label strings -> class indices or floats; `lines[i]` is value i's line number for messages."""
  if kind == REGRESSION:
    out = np.empty(len(values), np.float32)
    for i, v in enumerate(values):
      try:
        out[i] = float(v)
      except (TypeError, ValueError):
        raise PretrainError(f"{source} line {lines[i]}: label {v!r} is not a number") from None
      if not np.isfinite(out[i]):
        raise PretrainError(f"{source} line {lines[i]}: label {v!r} is not a finite number")
    return out
  index = {name: i for i, name in enumerate(label_names)}
  out = np.empty(len(values), np.int32)
  for i, v in enumerate(values):
    key = str(v).strip() if not isinstance(v, str) else v.strip()
    if key not in index:
      raise PretrainError(
        f"{source} line {lines[i]}: label {v!r} is not one of the task's labels "
        f"({', '.join(map(repr, label_names))})"
      )
    out[i] = index[key]
  return out


def check_nonempty(split: Split, what: str) -> Split:
  if not len(split):
    raise PretrainError(f"the {what} split {split.source} has no examples")
  return split


def load(ft) -> Dataset:
  """The dataset the config's finetune section names (its train split cut to
  `train_examples_per_class` when that is set)."""
  name = str(ft.task)
  from pretrain.finetune.tasks import embedded, files, glue, word_order  # pylint: disable=import-outside-toplevel

  if name in glue.TASKS:
    dataset = glue.load(name, ft.data_dir)
  elif name == "files":
    dataset = files.load(ft)
  elif name == "embedded":
    dataset = embedded.load()
  elif name == "embedded_order":
    dataset = word_order.load()
  else:
    raise PretrainError(
      f"finetune.task={name!r} is unknown; expected one of {', '.join(glue.TASKS)}, files, "
      "embedded, embedded_order"
    )
  return per_class(dataset, int(ft.get("train_examples_per_class", 0)))


def per_class(dataset: Dataset, k: int) -> Dataset:
  """The dataset with only the first `k` train examples of each class (in the split's order); k=0: all.

  A low-resource version of a task: with few labels, what the encoder learned in pretraining decides
  more of the score than what fine-tuning can learn from scratch.
  """
  if k == 0:
    return dataset
  if k < 0:
    raise PretrainError(f"finetune.train_examples_per_class={k} must be >= 0 (0: every example)")
  if dataset.kind == REGRESSION:
    raise PretrainError(
      f"finetune.train_examples_per_class={k}: {dataset.name} is a regression task, with no classes"
    )
  train = dataset.train
  seen = np.zeros(len(dataset.label_names), np.int64)
  keep = []
  for i, label in enumerate(train.labels):
    if seen[label] < k:
      seen[label] += 1
      keep.append(i)
  split = Split(
    texts=tuple(tuple(column[i] for i in keep) for column in train.texts),
    labels=train.labels[keep],
    source=f"{train.source} (the first {k} of each class)",
  )
  return dataclasses.replace(dataset, train=split)
