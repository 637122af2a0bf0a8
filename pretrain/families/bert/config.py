"""BERT's config: pretrain.config.base_config() with BERT's task, data and model sections."""

import ml_collections

from pretrain import config as config_lib
from pretrain.families.bert.examples import BertExampleConfig
from pretrain.families.bert.model import BertConfig


def bert_config() -> ml_collections.ConfigDict:
  """BERT-base (110M) and the paper's recipe (Devlin et al. 2018), at its first phase's length 128.

  data: BertExampleConfig's fields; model: BertConfig's (vocab_size 0: the
  tokenizer's). The optimizer, train and eval sections of base_config() are
  BERT's recipe: AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.01, 10k
  warmup steps then linear decay over 1M steps of batch 256.
  """
  c = config_lib.base_config()
  c.task.name = "bert"
  c.data.update(config_lib.section(BertExampleConfig()))
  c.model = config_lib.section(BertConfig())
  c.model.vocab_size = 0  # 0: the tokenizer's vocabulary size.
  return c
