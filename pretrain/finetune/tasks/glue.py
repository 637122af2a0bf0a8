"""The nine GLUE tasks, read from the GLUE distribution's TSV files (data_dir/<Task>/{train,dev}.tsv).

Column layouts as the GLUE download ships them (tab separated, no quoting; a
header line except CoLA's). The columns read are named by the header, CoLA's
by position:

  CoLA   no header, 4 columns: source, label (0/1), the original annotation, sentence
  SST-2  sentence, label (0/1)
  MRPC   Quality (0/1), #1 ID, #2 ID, #1 String, #2 String
  STS-B  index, genre, filename, year, old_index, source1, source2, sentence1, sentence2,
         score (0-5)
  QQP    id, qid1, qid2, question1, question2, is_duplicate (0/1)
  MNLI   index, promptID, pairID, genre, sentence1_binary_parse, sentence2_binary_parse,
         sentence1_parse, sentence2_parse, sentence1, sentence2, label1 (train) or label1..label5
         (dev), gold_label (contradiction/entailment/neutral); dev_matched.tsv and
         dev_mismatched.tsv
  QNLI   index, question, sentence, label (entailment/not_entailment)
  RTE    index, sentence1, sentence2, label (entailment/not_entailment)
  WNLI   index, sentence1, sentence2, label (0/1)

Metrics as GLUE scores them: CoLA Matthews correlation; SST-2, MNLI (matched and
mismatched), QNLI, RTE, WNLI accuracy; MRPC and QQP F1 and accuracy; STS-B
Pearson and Spearman. A task's GLUE score is the mean of its metrics.
"""

import dataclasses
import os

from pretrain.errors import PretrainError
from pretrain.finetune import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class GlueTask:
  folder: str
  text_columns: tuple  # Header names, or positions (CoLA).
  label_column: str | int
  labels: tuple[str, ...]  # Empty: regression.
  metrics: tuple[str, ...]
  dev_files: tuple[tuple[str, str], ...] = (("", "dev.tsv"),)  # (metric prefix, file)
  header: bool = True
  num_columns: int = 0  # Without a header: the columns every line has.
  words: tuple[str, ...] = ()  # T5's target words of the labels (Raffel et al. 2020, appendix D).


_BINARY = ("0", "1")
_NLI = ("entailment", "not_entailment")
TASKS = {
  "cola": GlueTask(
    "CoLA",
    (3,),
    1,
    _BINARY,
    ("matthews",),
    header=False,
    num_columns=4,
    words=("unacceptable", "acceptable"),
  ),
  "sst2": GlueTask(
    "SST-2", ("sentence",), "label", _BINARY, ("accuracy",), words=("negative", "positive")
  ),
  "mrpc": GlueTask(
    "MRPC",
    ("#1 String", "#2 String"),
    "Quality",
    _BINARY,
    ("f1", "accuracy"),
    words=("not_equivalent", "equivalent"),
  ),
  "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), "score", (), ("pearson", "spearman")),
  "qqp": GlueTask(
    "QQP",
    ("question1", "question2"),
    "is_duplicate",
    _BINARY,
    ("f1", "accuracy"),
    words=("not_duplicate", "duplicate"),
  ),
  "mnli": GlueTask(
    "MNLI",
    ("sentence1", "sentence2"),
    "gold_label",
    ("contradiction", "entailment", "neutral"),
    ("accuracy",),
    dev_files=(("", "dev_matched.tsv"), ("mismatched_", "dev_mismatched.tsv")),
  ),
  "qnli": GlueTask("QNLI", ("question", "sentence"), "label", _NLI, ("accuracy",)),
  "rte": GlueTask("RTE", ("sentence1", "sentence2"), "label", _NLI, ("accuracy",)),
  "wnli": GlueTask(
    "WNLI",
    ("sentence1", "sentence2"),
    "label",
    _BINARY,
    ("accuracy",),
    words=("not_entailment", "entailment"),
  ),
}


def _column(task: GlueTask, header: list[str] | None, column, path: str) -> int:
  if header is None:
    return column
  if column not in header:
    raise PretrainError(
      f"{path}: the header has no {column!r} column (it has {', '.join(map(repr, header))}); "
      f"expected the GLUE {task.folder} layout"
    )
  return header.index(column)


def read_split(task: GlueTask, path: str, what: str) -> tasks_lib.Split:
  if not os.path.isfile(path):
    raise PretrainError(f"GLUE {task.folder}: {path} does not exist")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  header = lines[0].split("\t") if task.header and lines else None
  body = list(enumerate(lines[1:] if task.header else lines, start=2 if task.header else 1))
  body = [(n, line) for n, line in body if line.strip()]
  wanted = [*task.text_columns, task.label_column]
  index = [_column(task, header, c, path) for c in wanted]
  width = len(header) if header is not None else task.num_columns
  rows, numbers = [], []
  for n, line in body:
    fields = line.split("\t")
    if len(fields) < width:
      missing = next((c for c, i in zip(wanted, index) if i >= len(fields)), None)
      name = f"column {missing!r}" if missing is not None else f"{width - len(fields)} column(s)"
      raise PretrainError(
        f"{path} line {n}: {name} is missing ({len(fields)} of {width} tab-separated columns)"
      )
    rows.append([fields[i] for i in index])
    numbers.append(n)
  texts = tuple(tuple(r[c] for r in rows) for c in range(len(task.text_columns)))
  kind = tasks_lib.CLASSIFICATION if task.labels else tasks_lib.REGRESSION
  labels = tasks_lib.parse_labels([r[-1] for r in rows], kind, task.labels, path, numbers)
  return tasks_lib.check_nonempty(tasks_lib.Split(texts, labels, path), what)


def load(name: str, data_dir: str) -> tasks_lib.Dataset:
  """GLUE task `name` from `data_dir`/<its folder> (e.g. glue_data/SST-2)."""
  task = TASKS[name]
  if not data_dir:
    raise PretrainError(
      f"finetune.data_dir is not set: the folder holding the GLUE task folders ({task.folder}/, ...)"
    )
  folder = os.path.join(os.path.expanduser(data_dir), task.folder)
  if not os.path.isdir(folder):
    raise PretrainError(f"GLUE task {name}: {folder} does not exist (finetune.data_dir={data_dir})")
  train = read_split(task, os.path.join(folder, "train.tsv"), "train")
  dev = {
    prefix: read_split(task, os.path.join(folder, file), "dev") for prefix, file in task.dev_files
  }
  return tasks_lib.Dataset(
    name=name,
    kind=tasks_lib.CLASSIFICATION if task.labels else tasks_lib.REGRESSION,
    label_names=task.labels,
    metrics=task.metrics,
    train=train,
    dev=dev,
    label_words=task.words,
  )
