"""Config sections are written from the families' dataclasses and read back into the same values."""

import dataclasses

import pytest

from pretrain import config as config_lib
from pretrain.families.bert.config import bert_config
from pretrain.families.bert.model import BertConfig
from pretrain.families.gpt2.config import gpt2_config
from pretrain.families.gpt2.model import Gpt2Config
from pretrain.families.roberta.config import roberta_config
from pretrain.families.t5.config import t5_config
from pretrain.families.t5.model import T5Config
from pretrain.models.attention import AttentionConfig


def test_section_writes_none_as_zero_and_leaves_out_what_zero_cannot_stand_for():
  s = config_lib.section(AttentionConfig(position="rope"))
  assert (s.num_kv_heads, s.logits_soft_cap, s.sliding_window) == (0, 0.0, 0)
  assert isinstance(s.logits_soft_cap, float) and "interpret" not in s
  assert AttentionConfig.from_dict(s.to_dict()) == AttentionConfig(position="rope")


@pytest.mark.parametrize(
  "make,cls",
  [
    (bert_config, BertConfig),
    (roberta_config, BertConfig),
    (gpt2_config, Gpt2Config),
    (t5_config, T5Config),
  ],
)
def test_every_model_field_is_in_the_section(make, cls):
  model = make().model.to_dict()
  assert set(model) == {f.name for f in dataclasses.fields(cls)}
  cfg = cls.from_dict(dict(model, vocab_size=model["vocab_size"] or 1000))
  assert config_lib.section(cfg).to_dict() == dict(model, vocab_size=cfg.vocab_size)
