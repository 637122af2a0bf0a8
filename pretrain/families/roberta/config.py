"""RoBERTa's config: pretrain.config.base_config() with RoBERTa's task, data and model sections and its recipe."""

import ml_collections

from pretrain import config as config_lib
from pretrain.families.bert.model import BertConfig
from pretrain.families.roberta.examples import RobertaExampleConfig
from pretrain.families.roberta.task import MODEL_DEFAULTS


def roberta_config() -> ml_collections.ConfigDict:
  """RoBERTa-base (Liu et al. 2019, Table 9): BERT-base's network with RoBERTa's options and recipe.

  data: RobertaExampleConfig's fields (and next_sentence_prediction, off);
  model: BertConfig's (vocab_size 0: the tokenizer's) with no pooler or NSP
  head, one token type, 514 position rows counted from 2 (HF's padding_idx 1)
  and LayerNorm eps 1e-5, computing in float32 as bert_config(). Recipe: AdamW lr
  6e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.01, 24k warmup steps then
  linear decay, 500k steps of batch 8k sequences, no gradient clipping.
  """
  c = config_lib.base_config()
  c.task.name = "roberta"
  c.tokenizer.update(vocab_size=50265, model_type="bpe")
  c.data.update(config_lib.section(RobertaExampleConfig()))
  c.data.next_sentence_prediction = False  # BERT's NSP, which RoBERTa drops: the task refuses True.
  c.model = config_lib.section(
    BertConfig(
      max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, **MODEL_DEFAULTS
    )
  )
  c.model.vocab_size = 0  # 0: the tokenizer's vocabulary size.
  c.optimizer.update(
    learning_rate=6e-4,
    b1=0.9,
    b2=0.98,
    eps=1e-6,
    weight_decay=0.01,
    warmup_steps=24_000,
    decay="linear",
    grad_clip_norm=0.0,
  )
  c.train.update(steps=500_000, batch_size=8192)
  return c
