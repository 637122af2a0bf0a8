"""Attention variants as configuration of every family: the parameter tree changes only where a variant needs it."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.families.bert import model as bert
from pretrain.families.gpt2 import model as gpt2
from pretrain.families.t5 import model as t5

BERT = bert.BertConfig(
  vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64
)
GPT2 = gpt2.Gpt2Config(
  vocab_size=128,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=32,
)
T5 = t5.T5Config(
  vocab_size=128,
  hidden_size=32,
  intermediate_size=48,
  head_dim=8,
  num_heads=4,
  num_layers=2,
  num_decoder_layers=2,
)
LENGTH = 12
TABLES = {
  "bert": "bert/embeddings/position_embeddings/embedding",
  "gpt2": "wpe/embedding",
}  # Learned positions.


def _inputs(family):
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 128, (2, LENGTH)).astype(np.int32)
  mask = np.ones((2, LENGTH), np.int32)
  mask[1, 9:] = 0
  if family == "bert":
    return (ids, np.zeros_like(ids), mask, np.array([[1, 2], [3, 4]], np.int32))
  if family == "gpt2":
    return (ids,)
  return (ids, mask, ids[:, :8])


def _model(family, **variant):
  base = {"bert": BERT, "gpt2": GPT2, "t5": T5}[family]
  cfg = dataclasses.replace(base, attention=dataclasses.replace(base.attention, **variant))
  return {"bert": bert.BertForPreTraining, "gpt2": gpt2.Gpt2LMHeadModel, "t5": t5.T5Model}[family](
    cfg
  )


def _shapes(family, **variant):
  params = jax.eval_shape(
    lambda: _model(family, **variant).init(jax.random.key(0), *_inputs(family))
  )["params"]
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
  return {"/".join(str(k.key) for k in path): leaf.shape for path, leaf in flat}


def _changed(family, **variant):
  base, new = _shapes(family), _shapes(family, **variant)
  removed = sorted(set(base) - set(new))
  added = sorted(set(new) - set(base))
  reshaped = sorted(k for k in set(base) & set(new) if base[k] != new[k])
  return removed, added, reshaped


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_grouped_query_heads_change_only_key_and_value(family):
  removed, added, reshaped = _changed(family, num_kv_heads=2)
  assert not removed and not added
  assert reshaped and all(k.split("/")[-2] in ("key", "value") for k in reshaped)
  shapes = _shapes(family, num_kv_heads=1)
  key = next(k for k in shapes if k.endswith("key/kernel"))
  assert shapes[key][-1] == 8  # One key/value head of head_dim 8.


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("position", ["rope", "alibi", "sinusoidal", "none"])
def test_positions_without_a_table_drop_only_the_table(family, position):
  removed, added, reshaped = _changed(family, position=position)
  assert removed == [TABLES[family]] and not added and not reshaped


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_relative_bias_adds_one_shared_table(family):
  removed, added, reshaped = _changed(family, position="relative_bias")
  assert removed == [TABLES[family]]
  assert len(added) == 1 and added[0].endswith("relative_attention_bias/embedding") and not reshaped
  assert _shapes(family, position="relative_bias")[added[0]] == (32, 4)


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_qk_norm_adds_only_norm_scales(family):
  removed, added, reshaped = _changed(family, qk_norm="rmsnorm")
  assert not removed and not reshaped
  assert added and all(k.split("/")[-2] in ("query_norm", "key_norm") for k in added)


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
@pytest.mark.parametrize(
  "variant",
  [
    dict(logits_soft_cap=30.0),
    dict(sliding_window=4),
    dict(position="rope"),
    dict(position="alibi"),
    dict(num_kv_heads=1),
  ],
)
def test_every_variant_runs_finite(family, variant):
  if family == "t5" and variant.get("position") == "rope":
    variant = dict(variant, rotary_fraction=0.5)
  model = _model(family, **variant)
  variables = model.init(jax.random.key(0), *_inputs(family))
  out = model.apply(variables, *_inputs(family))
  for leaf in jax.tree.leaves(out):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_num_kv_heads_equal_to_num_heads_is_mha_exactly():
  mha, gqa = _model("bert"), _model("bert", num_kv_heads=4)
  variables = mha.init(jax.random.key(0), *_inputs("bert"))
  np.testing.assert_array_equal(
    mha.apply(variables, *_inputs("bert"))[0], gqa.apply(variables, *_inputs("bert"))[0]
  )


def test_gpt2_sliding_window_as_wide_as_the_sequence_is_causal_attention():
  full, wide, narrow = (
    _model("gpt2"),
    _model("gpt2", sliding_window=LENGTH),
    _model("gpt2", sliding_window=2),
  )
  variables = full.init(jax.random.key(0), *_inputs("gpt2"))
  ref = full.apply(variables, *_inputs("gpt2"))
  np.testing.assert_array_equal(wide.apply(variables, *_inputs("gpt2")), ref)
  windowed = narrow.apply(variables, *_inputs("gpt2"))
  np.testing.assert_allclose(
    windowed[:, :2], ref[:, :2], rtol=1e-6, atol=1e-6
  )  # The first 2 see no further back.
  assert not np.allclose(windowed[:, 2:], ref[:, 2:], atol=1e-4)


def test_gpt2_rope_packed_documents_equal_documents_alone():
  model = _model("gpt2", position="rope")
  ids = np.random.default_rng(1).integers(5, 128, (1, 10)).astype(np.int32)
  segment_ids = np.array([[1] * 4 + [2] * 6], np.int32)
  variables = model.init(jax.random.key(0), ids)
  packed = model.apply(variables, ids, None, segment_ids)
  np.testing.assert_allclose(packed[:, :4], model.apply(variables, ids[:, :4]), atol=2e-5)
  np.testing.assert_allclose(packed[:, 4:], model.apply(variables, ids[:, 4:]), atol=2e-5)


def test_config_sections_read_zero_as_none_and_reject_unknown_keys():
  cfg = bert.BertConfig.from_dict(
    dict(
      dataclasses.asdict(BERT),
      attention=dict(num_kv_heads=0, sliding_window=0, logits_soft_cap=0.0, position="rope"),
    )
  )
  assert cfg.attention == attention.AttentionConfig(position="rope")
  with pytest.raises(PretrainError, match="unknown AttentionConfig keys: kv_heads"):
    gpt2.Gpt2Config.from_dict(dict(dataclasses.asdict(GPT2), attention=dict(kv_heads=2)))
  with pytest.raises(PretrainError, match="T5 takes attention.position in .*'learned'"):
    dataclasses.replace(T5, attention=attention.AttentionConfig(position="learned"))
  with pytest.raises(PretrainError, match="position_offset 2 needs attention.position=learned"):
    dataclasses.replace(
      BERT,
      position_offset=2,
      max_position_embeddings=514,
      attention=attention.AttentionConfig(position="rope"),
    )
