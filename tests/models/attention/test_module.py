"""MultiHeadAttention: parameters, heads, positions, stabilizers, bad variants."""

import os
import sys

import jax
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.models import layers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For attention_reference.py.
from attention_reference import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  BATCH,
  EMBED,
  HEADS,
  HEAD_DIM,
  L,
  PAD,
  X,
  fast_jit,
  module_params,
  packed,
  reference_attention,
  reference_mask,
  shapes,
)


def test_parameter_tree_changes_only_where_the_variant_needs():
  default = shapes(
    jax.eval_shape(lambda: module_params(attention.MultiHeadAttention(HEADS, HEAD_DIM), X))
  )
  assert default == {
    f"{n}/{p}": s
    for n in ("query", "key", "value")
    for p, s in (("kernel", (EMBED, HEADS * HEAD_DIM)), ("bias", (HEADS * HEAD_DIM,)))
  } | {"out/kernel": (HEADS * HEAD_DIM, EMBED), "out/bias": (EMBED,)}

  def variant(**kw):
    mha = attention.MultiHeadAttention(HEADS, HEAD_DIM, attention.AttentionConfig(**kw))
    return shapes(jax.eval_shape(lambda: module_params(mha, X)))

  for kw in (
    dict(position="rope", rotary_fraction=0.5),
    dict(position="alibi"),
    dict(logits_soft_cap=30.0),
    dict(sliding_window=4),
    dict(num_kv_heads=HEADS),
    dict(backend="auto"),
  ):
    assert variant(**kw) == default, kw
  gqa = dict(default) | {
    "key/kernel": (EMBED, 2 * HEAD_DIM),
    "key/bias": (2 * HEAD_DIM,),
    "value/kernel": (EMBED, 2 * HEAD_DIM),
    "value/bias": (2 * HEAD_DIM,),
  }
  assert variant(num_kv_heads=2) == gqa
  assert variant(qk_norm="layernorm") == default | {
    "query_norm/scale": (HEAD_DIM,),
    "query_norm/bias": (HEAD_DIM,),
    "key_norm/scale": (HEAD_DIM,),
    "key_norm/bias": (HEAD_DIM,),
  }
  assert variant(qk_norm="rmsnorm", num_kv_heads=1) == default | {
    "key/kernel": (EMBED, HEAD_DIM),
    "key/bias": (HEAD_DIM,),
    "value/kernel": (EMBED, HEAD_DIM),
    "value/bias": (HEAD_DIM,),
    "query_norm/scale": (HEAD_DIM,),
    "key_norm/scale": (HEAD_DIM,),
  }


def test_kv_heads_equal_to_heads_is_mha_exactly():
  mask = attention.padding_mask(PAD)
  mha = attention.MultiHeadAttention(HEADS, HEAD_DIM)
  params = module_params(mha, X, mask=mask)
  same = attention.MultiHeadAttention(
    HEADS, HEAD_DIM, attention.AttentionConfig(num_kv_heads=HEADS)
  )
  apply = lambda m: jax.jit(lambda p: m.apply({"params": p}, X, mask=mask))(params)
  np.testing.assert_array_equal(apply(mha), apply(same))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_heads_match_repeated_head_reference(kv_heads):
  mha = attention.MultiHeadAttention(
    HEADS, HEAD_DIM, attention.AttentionConfig(num_kv_heads=kv_heads)
  )
  mask = attention.AttentionMask(causal=True, input_mask=PAD)
  params = module_params(mha, X, mask=mask)
  out = fast_jit(lambda p: mha.apply({"params": p}, X, mask=mask))(params)

  def project(name, heads):
    y = X @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
    return y.reshape(BATCH, L, heads, HEAD_DIM)

  ref = reference_attention(
    project("query", HEADS),
    project("key", kv_heads),
    project("value", kv_heads),
    reference_mask(BATCH, L, L, causal=True, input_mask=PAD),
  )
  ref = ref.reshape(BATCH, L, -1) @ np.asarray(params["out"]["kernel"]) + np.asarray(
    params["out"]["bias"]
  )
  np.testing.assert_allclose(out, ref, atol=2e-5)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_packing_is_invisible_with_positions_inside_attention(position):
  """A sequence packed after another (with per-segment positions) gives what it gives alone."""
  mha = attention.MultiHeadAttention(
    HEADS,
    HEAD_DIM,
    attention.AttentionConfig(position=position, rotary_fraction=0.5),
    kernel_init=layers.default_init(0.3),
  )  # Sharp attention, so positions show.
  params = module_params(mha, X, mask=attention.AttentionMask(causal=True))
  segments = packed([6, 7], L)[None]  # Then 3 padding tokens (id 0).
  both = fast_jit(
    lambda x: mha.apply(
      {"params": params}, x, mask=attention.AttentionMask(causal=True, segment_ids=segments)
    )
  )(X[:1])
  alone = fast_jit(
    lambda x: mha.apply({"params": params}, x, mask=attention.AttentionMask(causal=True))
  )(X[:1, 6:13])
  np.testing.assert_allclose(both[:, 6:13], alone, rtol=1e-5, atol=1e-5)
  # Both schemes are relative, so the ids matter only through their differences: doubled ids change them.
  stretched = fast_jit(
    lambda x: mha.apply(
      {"params": params},
      x,
      mask=attention.AttentionMask(causal=True),
      positions=2 * np.arange(7)[None],
    )
  )(X[:1, 6:13])
  assert np.abs(stretched[:, 1:] - alone[:, 1:]).max() > 0.05 * np.abs(alone).max()


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_qk_norm_params_and_scale_invariance(kind):
  mha = attention.MultiHeadAttention(HEADS, HEAD_DIM, attention.AttentionConfig(qk_norm=kind))
  params = module_params(mha, X)
  names = {"scale", "bias"} if kind == "layernorm" else {"scale"}
  assert set(params["query_norm"]) == names and set(params["key_norm"]) == names
  # Normalized queries and keys: scaling their projections changes nothing.
  scaled = jax.tree.map(lambda x: x, params)
  for name in ("query", "key"):
    scaled[name] = {p: 10.0 * w for p, w in params[name].items()}
  apply = fast_jit(lambda p: mha.apply({"params": p}, X))
  np.testing.assert_allclose(apply(scaled), apply(params), atol=1e-4)
  plain = attention.MultiHeadAttention(HEADS, HEAD_DIM)
  plain_params = {n: params[n] for n in ("query", "key", "value", "out")}
  assert not np.allclose(
    plain.apply({"params": {**plain_params, "query": scaled["query"]}}, X),
    plain.apply({"params": plain_params}, X),
    atol=1e-3,
  )


def test_module_rejects_bad_variants():
  for kw, match in (
    (dict(num_kv_heads=3), "divisor"),
    (dict(position="xpos"), "position"),
    (dict(qk_norm="l2"), "qk_norm"),
    (dict(backend="flash"), "splash_tpu"),
    (dict(rotary_fraction=0.0), "rotary_fraction"),
  ):
    with pytest.raises(PretrainError, match=match):
      attention.MultiHeadAttention(HEADS, HEAD_DIM, attention.AttentionConfig(**kw)).init(
        jax.random.key(0), X[:, :2]
      )


def test_each_projection_has_its_own_initializer():
  zeros, ones = jax.nn.initializers.zeros, jax.nn.initializers.ones
  mha = attention.MultiHeadAttention(
    HEADS, HEAD_DIM, kernel_init=ones, query_init=zeros, out_init=layers.scaled_init(ones, 3.0)
  )
  params = module_params(mha, X)
  assert {n: float(params[n]["kernel"].mean()) for n in ("query", "key", "value", "out")} == {
    "query": 0.0,
    "key": 1.0,
    "value": 1.0,
    "out": 3.0,
  }
  default = module_params(attention.MultiHeadAttention(HEADS, HEAD_DIM), X)
  np.testing.assert_array_equal(
    module_params(
      attention.MultiHeadAttention(HEADS, HEAD_DIM, query_init=layers.default_init(0.02)), X
    )["query"]["kernel"],
    default["query"]["kernel"],
  )
