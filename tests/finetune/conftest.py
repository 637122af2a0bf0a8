"""Fine-tuning test fixtures: a pretraining workdir of a tiny BERT (its params as initialized, saved as a
run saves them, with the tokenizer trained on the test corpus) and a small learnable task."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from pretrain.data import prepare
from pretrain.families.bert import model as bert_model
from pretrain.finetune.config import finetune_config

from hf_folders import save_checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position

# glue_files and task_files (test data in the tasks' layouts) are imported by name from this folder.
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
  sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from task_files import learnable_task  # pylint: disable=g-import-not-at-top,wrong-import-position


def saved_run_config(config, tokenizer) -> dict:
  """A run's config as the train loop saves it: its sections and the tokenizer it trained with."""
  saved = config.to_dict()
  saved["_tokenizer"] = {
    "path": tokenizer.path,
    "fingerprint": tokenizer.fingerprint,
    "vocab_size": tokenizer.vocab_size,
    "special_ids": tokenizer.special.ids(),
  }
  return json.loads(json.dumps(saved, default=str))


@pytest.fixture(scope="session")
def pretrained(text_corpus, tiny_config_factory, tmp_path_factory):
  """A pretraining workdir (step 1) of make_tiny_config's BERT: initialized params, the run's config."""
  c = tiny_config_factory(text_corpus)
  tokenizer = prepare.resolve_tokenizer(c.data, c.tokenizer)
  cfg = bert_model.BertConfig.from_dict(dict(c.model.to_dict(), vocab_size=tokenizer.vocab_size))
  inputs = bert_model.init_inputs(1, 8, 2)
  params = jax.jit(lambda k: bert_model.BertForPreTraining(cfg).init(k, **inputs))(
    jax.random.key(1)
  )
  params = jax.tree.map(np.asarray, bert_model.nn.unbox(params["params"]))
  workdir = tmp_path_factory.mktemp("pretrained") / "run"
  return save_checkpoint(workdir, 1, params, saved_run_config(c, tokenizer))


@pytest.fixture(scope="session")
def learnable_config(pretrained, tmp_path_factory):
  """A fine-tuning config of the learnable task from `pretrained`: 3 epochs of 16 steps, batch 16."""
  train, dev = learnable_task(str(tmp_path_factory.mktemp("learnable")))

  def make():
    c = finetune_config("files")
    c.init_from = pretrained
    c.finetune.update(
      train_file=train, dev_file=dev, text_fields="text", max_seq_length=16, epochs=3.0
    )
    c.optimizer.learning_rate = 1e-3
    c.train.update(batch_size=16, log_every=4)
    c.eval.batch_size = 16
    c.checkpoint.update(every_steps=0, keep=5, async_save=False)  # At the end (or a stop) only.
    c.metrics.progress_bar = False
    return c

  return make
