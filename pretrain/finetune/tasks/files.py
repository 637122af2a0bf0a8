"""A single-text or text-pair classification / regression task from JSONL, CSV or TSV files.

  --config.finetune.task=files --config.finetune.train_file=train.jsonl
  --config.finetune.dev_file=dev.jsonl --config.finetune.text_fields=question,answer
  --config.finetune.label_field=label [--config.finetune.labels=no,yes]
  [--config.finetune.kind=regression] [--config.finetune.metrics=pearson,spearman]

JSONL: one object per line with the text fields and the label field. CSV/TSV: a
header line naming the columns (read with the csv module, so quoted fields may
hold commas or newlines). The format follows the extension unless
finetune.format says. Classification labels are `finetune.labels` (in that index
order) or, when empty, the sorted distinct labels of the train file; a dev label
outside them is an error.
"""

import csv
import json
import os

from pretrain.errors import PretrainError
from pretrain.finetune import tasks as tasks_lib


def _names(value) -> list[str]:
  items = value.split(",") if isinstance(value, str) else list(value or ())
  return [s.strip() for s in items if s and s.strip()]


def _format(path: str, configured: str) -> str:
  if configured:
    if configured not in ("jsonl", "csv", "tsv"):
      raise PretrainError(f"finetune.format={configured!r}: expected jsonl, csv or tsv")
    return configured
  ext = os.path.splitext(path)[1].lower().lstrip(".")
  if ext in ("jsonl", "json"):
    return "jsonl"
  if ext in ("csv", "tsv"):
    return ext
  raise PretrainError(f"{path}: cannot tell the format from the extension; set finetune.format")


def read_rows(path: str, fmt: str, fields: list[str]) -> tuple[list[list], list[int]]:
  """([[field values in `fields` order], ...], line numbers) of a file; a missing field is an error."""
  if not os.path.isfile(path):
    raise PretrainError(f"{path} does not exist")
  rows, numbers = [], []
  with open(path, encoding="utf-8", newline="") as f:
    if fmt == "jsonl":
      for n, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise PretrainError(f"{path} line {n}: not JSON: {e}") from None
        if not isinstance(record, dict):
          raise PretrainError(f"{path} line {n}: not a JSON object")
        missing = [k for k in fields if k not in record]
        if missing:
          raise PretrainError(f"{path} line {n}: field {missing[0]!r} is missing")
        rows.append([record[k] for k in fields])
        numbers.append(n)
      return rows, numbers
    reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, None) or []
    missing = [k for k in fields if k not in header]
    if missing:
      raise PretrainError(
        f"{path}: the header has no {missing[0]!r} column (it has {', '.join(map(repr, header))})"
      )
    index = [header.index(k) for k in fields]
    for record in reader:
      if not any(s.strip() for s in record):
        continue
      if len(record) < len(header):
        name = (
          next(k for k, i in zip(fields, index) if i >= len(record))
          if max(index) >= len(record)
          else None
        )
        raise PretrainError(
          f"{path} line {reader.line_num}: "
          + (f"column {name!r} is missing" if name else "a column is missing")
          + f" ({len(record)} of {len(header)} columns)"
        )
      rows.append([record[i] for i in index])
      numbers.append(reader.line_num)
  return rows, numbers


def _split(path, fmt, text_fields, label_field, kind, label_names, what) -> tasks_lib.Split:
  rows, numbers = read_rows(path, fmt, [*text_fields, label_field])
  for row, n in zip(rows, numbers):
    for name, value in zip(text_fields, row):
      if not isinstance(value, str):
        raise PretrainError(f"{path} line {n}: field {name!r} is not a string ({value!r})")
  texts = tuple(tuple(r[c] for r in rows) for c in range(len(text_fields)))
  labels = tasks_lib.parse_labels([r[-1] for r in rows], kind, label_names, path, numbers)
  return tasks_lib.check_nonempty(tasks_lib.Split(texts, labels, path), what)


def load(ft) -> tasks_lib.Dataset:
  text_fields = _names(ft.text_fields)
  if not 1 <= len(text_fields) <= 2:
    raise PretrainError(
      f"finetune.text_fields={ft.text_fields!r} must name one text field or two (a pair)"
    )
  kind = str(ft.kind)
  if kind not in (tasks_lib.CLASSIFICATION, tasks_lib.REGRESSION):
    raise PretrainError(f"finetune.kind={kind!r}: expected classification or regression")
  for key in ("train_file", "dev_file"):
    if not ft[key]:
      raise PretrainError(f"finetune.task=files needs finetune.{key}")
  fmt = _format(ft.train_file, ft.format)
  label_names = tuple(_names(ft.labels))
  if kind == tasks_lib.CLASSIFICATION and not label_names:
    rows, _ = read_rows(ft.train_file, fmt, [ft.label_field])
    label_names = tuple(sorted({str(r[0]).strip() for r in rows}))
  if kind == tasks_lib.CLASSIFICATION and len(label_names) < 2:
    raise PretrainError(
      f"a classification task needs two labels or more; {ft.train_file} has {list(label_names)}"
    )
  args = (text_fields, ft.label_field, kind, label_names)
  train = _split(ft.train_file, fmt, *args, "train")
  dev = _split(ft.dev_file, _format(ft.dev_file, ft.format), *args, "dev")
  default = ("accuracy",) if kind == tasks_lib.CLASSIFICATION else ("pearson", "spearman")
  metrics = tuple(_names(ft.metrics)) or default
  from pretrain.finetune import metrics as metrics_lib  # pylint: disable=import-outside-toplevel

  unknown = [m for m in metrics if m not in metrics_lib.METRICS]
  if unknown:
    raise PretrainError(
      f"finetune.metrics: {unknown[0]!r} is unknown; expected {', '.join(metrics_lib.METRICS)}"
    )
  return tasks_lib.Dataset(
    name=os.path.splitext(os.path.basename(ft.train_file))[0],
    kind=kind,
    label_names=label_names if kind == tasks_lib.CLASSIFICATION else (),
    metrics=metrics,
    train=train,
    dev={"": dev},
  )
