"""BERT task: the data and model NSP options must agree."""

import pytest

from pretrain import families
from pretrain.families.bert.config import bert_config
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.errors import PretrainError

TOKENIZER = StandInTokenizer(1000, path="fake.model")


def _config(nsp: bool, nsp_head: bool):
  c = bert_config()
  c.model.update(
    hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=32
  )
  c.model.nsp_head = nsp_head
  c.data.update(max_seq_length=32, max_predictions_per_seq=6, next_sentence_prediction=nsp)
  return c


@pytest.mark.parametrize("nsp", [True, False])
def test_nsp_options_agree(nsp):
  task = families.get_task(_config(nsp, nsp), TOKENIZER)
  assert task.model_config.nsp_head is nsp and task.example_config.next_sentence_prediction is nsp
  assert ("next_sentence_labels" in task.dummy_batch(2)) and task.min_shard == (
    (2, 1) if nsp else (1, 1)
  )


@pytest.mark.parametrize("nsp", [True, False])
def test_nsp_options_that_disagree_are_refused(nsp):
  with pytest.raises(
    PretrainError, match=f"data.next_sentence_prediction={nsp} needs model.nsp_head={nsp}"
  ):
    families.get_task(_config(nsp, not nsp), TOKENIZER)
