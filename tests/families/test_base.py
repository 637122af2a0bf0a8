"""The Task interface: the registry builds only Tasks, and resume compatibility follows resumable_fields."""

import pytest

from pretrain import families
from pretrain.families.bert.config import bert_config
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.errors import PretrainError
from pretrain.families import base


def _task_and_config():
  c = bert_config()
  c.model.update(
    hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=32
  )
  c.data.update(max_seq_length=32, max_predictions_per_seq=6)
  return families.get_task(c, StandInTokenizer(1000, path="fake.model")), c


def test_every_registered_family_is_a_task():
  for name in families.FAMILIES:
    cls = families.task_class(name)
    assert issubclass(cls, base.Task) and cls.name == name and cls.sampling in base.SAMPLING
    assert cls.layer_stacks
  assert families.layer_stacks() == {"layer": "layers", "h": "h", "block": "block"}


def test_the_registry_refuses_what_is_not_a_task(monkeypatch):
  monkeypatch.setitem(families.FAMILIES, "bogus", "pretrain.errors:PretrainError")
  with pytest.raises(PretrainError, match="'bogus'.* is not a pretrain.families.base.Task"):
    families.task_class("bogus")
  with pytest.raises(PretrainError, match="task.name='nope': expected one of 'bert'"):
    families.task_class("nope")


def test_resume_allows_only_the_resumable_fields_to_change():
  task, c = _task_and_config()
  saved = c.to_dict()
  task.check_resume(c, saved)
  c.model.update(dtype="bfloat16", dropout_rate=0.0, remat_policy="full")
  c.model.attention.backend = "cudnn"
  task.check_resume(c, saved)
  c.model.attention.position = "rope"
  with pytest.raises(
    PretrainError,
    match="config model.attention.position is 'rope' but the checkpoint was trained with 'learned'",
  ):
    task.check_resume(c, saved)
  c.model.attention.position = "learned"
  c.model.scan_layers = not c.model.scan_layers
  with pytest.raises(PretrainError, match="model.scan_layers differs"):
    task.check_resume(c, saved)


def test_a_field_the_checkpoint_predates_resumes_at_its_default():
  task, c = _task_and_config()
  saved = c.to_dict()
  del (
    saved["model"]["pooler"],
    saved["model"]["nsp_head"],
  )  # Written before the fields were in the section.
  task.check_resume(c, saved)
  c.model.update(nsp_head=False)
  c.data.next_sentence_prediction = False
  task, _ = families.get_task(c, StandInTokenizer(1000, path="fake.model")), c
  with pytest.raises(
    PretrainError, match="config model.nsp_head is False but the checkpoint was trained with True"
  ):
    task.check_resume(c, saved)
