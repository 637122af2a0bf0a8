"""Tiny configs of every family for the benchmark tests: one or two layers, seq 16 or 32, batch 8."""

import pytest


def _tiny_config():
  from pretrain.families.bert.config import bert_config  # pylint: disable=g-import-not-at-top

  c = bert_config()
  c.tokenizer.vocab_size = 512
  c.model.update(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    dtype="float32",
  )
  c.data.update(max_seq_length=32, max_predictions_per_seq=5)
  c.train.batch_size = 8
  return c


def _family_config(name: str):
  """A tiny config of `name`'s family: one or two layers, seq 16, batch 8."""
  if name == "gpt2":
    from pretrain.families.gpt2.config import gpt2_config  # pylint: disable=g-import-not-at-top

    c = gpt2_config()
    c.tokenizer.vocab_size = 256
    c.model.update(
      vocab_size=0,
      hidden_size=32,
      num_layers=1,
      num_heads=2,
      intermediate_size=64,
      max_position_embeddings=16,
      dtype="float32",
    )
    c.data.max_seq_length = 16
  elif name == "t5":
    from pretrain.families.t5.config import t5_config  # pylint: disable=g-import-not-at-top

    c = t5_config()
    c.tokenizer.vocab_size = 256  # + 100 sentinels -> model vocabulary 384.
    c.model.update(
      hidden_size=32,
      intermediate_size=64,
      head_dim=16,
      num_heads=2,
      num_layers=1,
      num_decoder_layers=1,
      dtype="float32",
    )
    c.data.inputs_length = 16
  else:
    c = _tiny_config()
    c.task.name = "roberta"
    c.model.update(
      max_position_embeddings=34, type_vocab_size=1, position_offset=2, pooler=False, nsp_head=False
    )
    c.data.update(next_sentence_prediction=False)
  c.train.batch_size = 8
  return c


@pytest.fixture
def tiny_config():
  """A tiny BERT config (vocabulary 512, seq 32, 5 predictions, batch 8)."""
  return _tiny_config()


@pytest.fixture
def family_config():
  """`family_config(name)`: a tiny config of family 'gpt2', 't5' or 'roberta'."""
  return _family_config
