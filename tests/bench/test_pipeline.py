"""The step benchmark's --data: BERT's input pipeline only."""

import pytest

from pretrain.bench import pipeline
from pretrain.errors import PretrainError


def test_data_benchmark_is_bert_only(family_config):
  with pytest.raises(PretrainError, match="BERT's input pipeline only"):
    pipeline.bert_pipeline(family_config("gpt2"))
