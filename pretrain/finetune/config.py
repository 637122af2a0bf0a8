"""The fine-tuning config, and the run config it resolves to against its init checkpoint.

A fine-tuning config (`finetune_config(task)`, configs/finetune/*.py) holds
`init_from`, a `finetune` section (the dataset and the recipe in epochs) and the
loop's shared sections (optimizer, train, eval, mesh, checkpoint, metrics). The
model comes from the init checkpoint: `resolve` reads its saved config (a
pretraining workdir's, or a `from-hf` folder's) and copies its task, model,
data and tokenizer sections into the run config, with the tokenizer the
checkpoint was trained with, and turns the epochs into steps:

  train.steps = ceil(epochs * train examples / train.batch_size)   (unless set)
  optimizer.warmup_steps = round(warmup_fraction * train.steps)
  eval.every_steps = train.steps                                   (unless set: at the end)
"""

import math
import os

import ml_collections

from pretrain import config as config_lib
from pretrain.errors import PretrainError
from pretrain.finetune import heads
from pretrain.finetune import tasks as tasks_lib

T5_FAMILY = "t5"
FAMILIES = (*heads.FAMILY_HEADS, T5_FAMILY)


def finetune_config(task: str = "sst2") -> ml_collections.ConfigDict:
  """BERT's fine-tuning recipe (Devlin et al. 2018, appendix A.3): AdamW, lr 2e-5 (of 2e-5, 3e-5, 5e-5),
  batch 32, 3 epochs, warmup over the first 10% then linear decay, weight decay 0.01, dropout 0.1."""
  base = config_lib.base_config()
  c = ml_collections.ConfigDict()
  # The pretrained model: a pretraining workdir (or one of its step folders) or a from-hf folder.
  c.init_from = ""
  c.finetune = ml_collections.ConfigDict(
    dict(
      task=task,  # GLUE (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), files, embedded(_order).
      data_dir="",  # GLUE: the folder holding CoLA/, SST-2/, ...
      train_file="",  # task=files: JSONL, CSV or TSV files (pretrain/finetune/tasks/files.py).
      dev_file="",
      format="",  # '' follows the extension.
      text_fields="sentence",  # One field, or two comma separated (a pair).
      label_field="label",
      kind=tasks_lib.CLASSIFICATION,  # Or regression.
      labels="",  # Comma separated, in index order; '' the sorted labels of the train file.
      metrics="",  # '' accuracy (classification), pearson,spearman (regression).
      max_seq_length=128,
      epochs=3.0,
      learning_rates="2e-5,3e-5,5e-5",  # The suite's grid (a single run uses optimizer.learning_rate).
      warmup_fraction=0.1,
      # '' the family's HF head (BERT: the pooled [CLS], RoBERTa: the first token); 'mean': the
      # mean of the encoder's outputs over the real tokens (pretrain/finetune/heads.py).
      head="",
      train_examples_per_class=0,  # >0: only the first k train examples of each class (low-resource).
      random_init=False,  # The init checkpoint's architecture and tokenizer, its params not read.
      tokenizer_path="",  # '' the init checkpoint's tokenizer.
      # T5 (text-to-text): the prefix of each input and the longest target in tokens.
      t5_prefix="",
      t5_targets_length=8,
    )
  )
  c.optimizer = base.optimizer
  c.optimizer.update(learning_rate=2e-5, warmup_steps=0, weight_decay=0.01, decay="linear")
  c.train = base.train
  c.train.update(steps=0, batch_size=32, log_every=50)  # steps 0: from finetune.epochs.
  c.eval = base.eval
  # every_steps 0: once, at the end. The whole dev split is evaluated; num_batches is not used.
  c.eval.update(every_steps=0, batch_size=32, num_batches=1)
  c.mesh = base.mesh
  c.checkpoint = base.checkpoint
  c.checkpoint.update(every_steps=500, keep=2)
  c.metrics = base.metrics
  return c


def embedded_config(task: str) -> ml_collections.ConfigDict:
  """The embedded tasks' recipe for the demo models (configs/finetune/embedded*.py): the mean head,
  64 tokens, 3 epochs at lr 1e-3, a tiny model's rate (BERT-base's 2e-5 leaves it near chance)."""
  c = finetune_config(task)
  c.finetune.update(head="mean", max_seq_length=64, epochs=3.0, learning_rates="3e-4,1e-3")
  c.optimizer.learning_rate = 1e-3
  c.train.log_every = 25
  c.checkpoint.every_steps = 100
  return c


def read_init(init_from: str) -> tuple[dict, str]:
  """(saved project config, its tokenizer path) of a pretraining workdir or a converted folder."""
  from pretrain import convert  # pylint: disable=import-outside-toplevel
  from pretrain.convert import checkpoints  # pylint: disable=import-outside-toplevel

  if not init_from:
    raise PretrainError(
      "init_from is not set: a pretraining workdir or a `python -m pretrain.convert from-hf` folder"
    )
  _, _, saved, source = checkpoints.locate(init_from)
  if source:  # A converted folder: its tokenizer files sit beside config.json.
    saved = convert.load_config(init_from).to_dict()
    path = saved["tokenizer"].get("path", "")
  else:
    path = (saved.get("_tokenizer") or {}).get("path") or saved.get("tokenizer", {}).get("path", "")
  return saved, path


def open_init_tokenizer(ft, saved: dict, path: str):
  """The tokenizer of the init checkpoint (or finetune.tokenizer_path), checked against the one it recorded."""
  from pretrain.data.tokenizer_files import open_tokenizer  # pylint: disable=import-outside-toplevel

  path = ft.tokenizer_path or path
  if not path:
    raise PretrainError(
      "the init checkpoint records no tokenizer; set finetune.tokenizer_path to the one it was "
      "trained with"
    )
  if not os.path.exists(os.path.expanduser(path)):
    raise PretrainError(
      f"the init checkpoint's tokenizer {path} does not exist on this machine; set "
      "finetune.tokenizer_path to a copy of it"
    )
  tokenizer = open_tokenizer(path)
  recorded = (saved.get("_tokenizer") or {}).get("fingerprint")
  if recorded and recorded != tokenizer.fingerprint:
    raise PretrainError(
      f"the tokenizer {tokenizer.path} (vocab {tokenizer.vocab_size}) is not the one the init "
      f"checkpoint was trained with (vocab {saved['_tokenizer'].get('vocab_size')}, fingerprint "
      f"{recorded[:12]})"
    )
  return tokenizer


def family_of(saved: dict, init_from: str) -> str:
  family = (saved.get("task") or {}).get("name")
  if family not in FAMILIES:
    raise PretrainError(
      f"init_from {init_from} is a {family!r} checkpoint, whose family cannot take a "
      f"sequence classification head; fine-tuning takes {', '.join(FAMILIES)}"
    )
  return family


def _head(requested: str, family: str) -> str:
  """The head a run of `family` uses: the family's own unless `finetune.head` names another."""
  own = heads.FAMILY_HEADS.get(family, "text_to_text")
  if not requested or requested == own:
    return own
  if family not in heads.FAMILY_HEADS:
    raise PretrainError(f"finetune.head={requested!r}: a {family} model fine-tunes text to text")
  if requested not in heads.HEADS:
    raise PretrainError(f"finetune.head={requested!r}: expected one of {', '.join(heads.HEADS)}")
  return requested


def resolve(
  config, dataset: tasks_lib.Dataset, saved: dict, tokenizer
) -> ml_collections.ConfigDict:
  """The run config: `config` with the init checkpoint's sections, the head, and the epochs as steps."""
  run = config.copy_and_resolve_references()
  family = family_of(saved, config.init_from)
  ft = run.finetune
  with run.unlocked():
    run.task = ml_collections.ConfigDict(saved["task"])
    model = dict(saved["model"])
    head = _head(ft.get("head", ""), family)
    if family in heads.FAMILY_HEADS:
      # HF's BertForSequenceClassification reads the pooler (a checkpoint without one starts it fresh);
      # no next-sentence head.
      model.update(nsp_head=False, pooler=head == heads.POOLED)
    run.model = ml_collections.ConfigDict(model)
    run.data = ml_collections.ConfigDict(saved.get("data") or {})
    run.tokenizer = ml_collections.ConfigDict(
      dict(saved.get("tokenizer") or {}, path=tokenizer.path)
    )
    if family in heads.FAMILY_HEADS:
      run.data.max_seq_length = int(ft.max_seq_length)
    ft.head = head
    ft.kind = dataset.kind
    ft.num_outputs = dataset.num_outputs
    ft.label_names = ",".join(dataset.label_names)
    ft.metric_names = ",".join(dataset.metrics)
  epochs = float(ft.epochs)
  if not (math.isfinite(epochs) and epochs > 0):
    raise PretrainError(f"finetune.epochs={ft.epochs!r} must be a positive number")
  batch = int(run.train.batch_size)
  if batch < 1:
    raise PretrainError(f"train.batch_size={batch} must be >= 1")
  if not run.train.steps:
    run.train.steps = max(1, math.ceil(epochs * len(dataset.train) / batch))
  fraction = float(ft.warmup_fraction)
  if not 0 <= fraction <= 1:
    raise PretrainError(f"finetune.warmup_fraction={fraction} must be in [0, 1]")
  run.optimizer.warmup_steps = round(fraction * run.train.steps)
  if not run.eval.every_steps:
    run.eval.every_steps = int(run.train.steps)
  return run
