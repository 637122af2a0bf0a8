"""T5 text-to-text fine-tuning: inputs and targets as T5 writes GLUE, generated text scored against the
label words (the end-to-end fine-tune runs as any other task's through pretrain/train.py)."""

import ml_collections
import numpy as np
import pytest

from pretrain.data.special_tokens import StandInTokenizer
from pretrain.errors import PretrainError
from pretrain.families.t5.config import t5_config
from pretrain.finetune import tasks as tasks_lib
from pretrain.finetune.config import finetune_config
from pretrain.finetune.t5_task import TextToTextTask


class WordTokenizer(StandInTokenizer):
  """Whole words as ids (5 + position in WORDS), for exact expectations."""

  WORDS = (
    "rte",
    "sentence1:",
    "sentence2:",
    "it",
    "rained",
    "was",
    "dry",
    "entailment",
    "not_entailment",
  )

  def encode(self, texts):
    return [[5 + self.WORDS.index(w) for w in t.split()] for t in texts]

  def decode(self, ids):
    return " ".join(self.WORDS[i - 5] for i in ids if i >= 5)


def make_task(kind=tasks_lib.CLASSIFICATION, targets_length=4):
  c = t5_config()
  c.model.update(hidden_size=32, intermediate_size=64, head_dim=8, num_heads=4, num_layers=1)
  c.model.num_decoder_layers = 1
  run = ml_collections.ConfigDict(
    dict(c.to_dict(), finetune=finetune_config("rte").finetune.to_dict())
  )
  run.finetune.update(max_seq_length=12, t5_targets_length=targets_length)
  labels = (
    np.array([1, 0], np.int32)
    if kind == tasks_lib.CLASSIFICATION
    else np.array([3.14, 0.0], np.float32)
  )
  split = tasks_lib.Split(
    (("it rained", "it was dry"), ("it was dry", "it rained")), labels, "dev.tsv"
  )
  dataset = tasks_lib.Dataset(
    "rte",
    kind,
    ("entailment", "not_entailment") if kind == tasks_lib.CLASSIFICATION else (),
    ("accuracy",),
    split,
    {"": split},
  )
  return TextToTextTask(run, WordTokenizer(64), dataset), split


def test_inputs_targets_and_scoring_of_generated_text():
  task, split = make_task()
  ex = task.encode(split)
  w = {w: 5 + i for i, w in enumerate(WordTokenizer.WORDS)}
  eos = 3  # The project layout's [SEP] ends T5 inputs and targets.
  expected = [
    w["rte"],
    w["sentence1:"],
    w["it"],
    w["rained"],
    w["sentence2:"],
    w["it"],
    w["was"],
    w["dry"],
    eos,
  ]
  assert ex["encoder_input_tokens"][0, :9].tolist() == expected
  assert ex["encoder_input_mask"][0].tolist() == [1] * 9 + [0] * 3
  assert ex["decoder_target_tokens"][0].tolist() == [w["not_entailment"], eos, 0, 0]
  assert ex["decoder_input_tokens"][0].tolist() == [
    0,
    w["not_entailment"],
    0,
    0,
  ]  # Starts with pad.
  assert ex["decoder_loss_weights"][0].tolist() == [1, 1, 0, 0]
  # Generated tokens -> text -> class; a text that is no label word is wrong (-1).
  generated = np.array(
    [[w["entailment"], eos, 0, 0], [w["not_entailment"], eos, 0, 0], [w["it"], eos, 0, 0]]
  )
  assert task.predictions(generated).tolist() == [0, 1, -1]


def test_regression_targets_and_a_label_word_too_long():
  task, split = make_task(tasks_lib.REGRESSION)
  assert task._targets(split) == ["3.2", "0.0"]  # pylint: disable=protected-access
  with pytest.raises(
    PretrainError, match=r"label word 'entailment' is 1 tokens .* must hold it and EOS"
  ):
    make_task(targets_length=1)
