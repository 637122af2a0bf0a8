"""BERT model: shapes, exact parameter counts, scan/remat equivalence, masking, dropout, dtypes, FLOPs."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.families.bert import model as bert

from model_checks import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  assert_trees_close,
  matmul_flops,
  stack_unrolled,
)

TINY = bert.BertConfig(
  vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128
)
BASE = bert.BertConfig(
  vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
)
LARGE = bert.BertConfig(
  vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096
)
BATCH, LENGTH, PREDICTIONS = 4, 16, 3


def make_batch(seed=0, batch=BATCH, length=LENGTH, predictions=PREDICTIONS, vocab=256):
  """Random inputs; sequence b has 12 - b real tokens then padding; masked positions are real."""
  rng = np.random.default_rng(seed)
  lengths = 12 - np.arange(batch) % 12
  input_mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return {
    "input_ids": (rng.integers(1, vocab, (batch, length)) * input_mask).astype(np.int32),
    "segment_ids": ((np.arange(length)[None] >= lengths[:, None] // 2) * input_mask).astype(
      np.int32
    ),
    "input_mask": input_mask,
    "masked_positions": np.stack(
      [rng.choice(n, predictions, replace=False) for n in lengths]
    ).astype(np.int32),
  }


def init_params(config, seed=0):
  model = bert.BertForPreTraining(config)
  return nn.unbox(
    model.init(jax.random.key(seed), **bert.init_inputs(1, LENGTH, PREDICTIONS))["params"]
  )


def loss_fn(config, params, batch, rng=None):
  model = bert.BertForPreTraining(config)
  mlm, nsp = model.apply(
    {"params": params},
    **batch,
    deterministic=rng is None,
    rngs=None if rng is None else {"dropout": rng},
  )
  labels = jnp.arange(mlm.shape[0] * mlm.shape[1]).reshape(mlm.shape[:2]) % config.vocab_size
  mlm_loss = optax.softmax_cross_entropy_with_integer_labels(mlm, labels).mean()
  nsp_loss = optax.softmax_cross_entropy_with_integer_labels(
    nsp, jnp.arange(mlm.shape[0]) % 2
  ).mean()
  return mlm_loss + nsp_loss


def stack_layers(params, num_layers):
  """Non-scan params -> scan layout (encoder/layer_i/... -> encoder/layers/... stacked on axis 0)."""
  params = jax.tree.map(lambda x: x, params)  # copy of the dict structure
  stack_unrolled(params["bert"]["encoder"], "layer_", num_layers, "layers")
  return params


@pytest.fixture(scope="module")
def tiny_params():
  return init_params(TINY)


def test_output_shapes_and_dtypes(tiny_params):
  mlm, nsp = bert.BertForPreTraining(TINY).apply({"params": tiny_params}, **make_batch())
  assert mlm.shape == (BATCH, PREDICTIONS, 256) and mlm.dtype == jnp.float32
  assert nsp.shape == (BATCH, 2) and nsp.dtype == jnp.float32
  assert np.all(np.isfinite(mlm)) and np.all(np.isfinite(nsp))


@pytest.mark.parametrize(
  "config, heads, expected",
  [
    (BASE, True, 110_106_428),
    (BASE, False, 109_482_240),
    (LARGE, True, 336_226_108),
    (LARGE, False, 335_141_888),
  ],
)
def test_parameter_counts_match_published_bert(config, heads, expected):
  assert bert.count_params(config, heads=heads) == expected


def test_scanned_parameter_count_and_axes():
  config = dataclasses.replace(BASE, scan_layers=True)
  assert bert.count_params(config) == 110_106_428
  kernel = bert.abstract_params(config)["bert"]["encoder"]["layers"]["intermediate"]["kernel"]
  assert kernel.names == ("layers", "embed", "mlp") and kernel.value.shape == (12, 768, 3072)


def test_params_are_float32_and_initialized_as_bert(tiny_params):
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tiny_params))
  table = tiny_params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert abs(float(table.std()) - 0.02 * 0.88) < 0.002  # truncated at 2 sigma: std 0.88 * 0.02
  assert float(jnp.abs(table).max()) <= 0.04
  ln = tiny_params["bert"]["encoder"]["layer_0"]["output_layer_norm"]
  np.testing.assert_array_equal(ln["scale"], 1.0)
  np.testing.assert_array_equal(tiny_params["mlm_head"]["output_bias"], 0.0)


def test_scan_matches_unrolled_layers(tiny_params):
  batch = make_batch()
  scan_config = dataclasses.replace(TINY, scan_layers=True)
  stacked = stack_layers(tiny_params, TINY.num_layers)
  scan_init = init_params(scan_config)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scan_init)
  out = bert.BertForPreTraining(TINY).apply({"params": tiny_params}, **batch)
  scan_out = bert.BertForPreTraining(scan_config).apply({"params": stacked}, **batch)
  assert_trees_close(out, scan_out)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("policy", ["full", "dots_with_no_batch_dims_saveable"])
def test_remat_gives_same_loss_and_grads(tiny_params, policy, scan):
  batch = make_batch()
  rng = jax.random.key(7)  # dropout on: the recomputed masks must match the saved ones
  params = stack_layers(tiny_params, TINY.num_layers) if scan else tiny_params
  plain = dataclasses.replace(TINY, scan_layers=scan)
  remat = dataclasses.replace(plain, remat_policy=policy)
  expected = jax.jit(jax.value_and_grad(lambda p: loss_fn(plain, p, batch, rng)))(params)
  actual = jax.jit(jax.value_and_grad(lambda p: loss_fn(remat, p, batch, rng)))(params)
  assert_trees_close(expected, actual)


def test_padding_does_not_change_outputs(tiny_params):
  model = bert.BertForPreTraining(TINY)
  batch = make_batch()
  changed = dict(batch)
  pad = batch["input_mask"] == 0
  changed["input_ids"] = np.where(pad, 77, batch["input_ids"]).astype(np.int32)
  changed["segment_ids"] = np.where(pad, 1, batch["segment_ids"]).astype(np.int32)
  assert pad.any() and not np.array_equal(changed["input_ids"], batch["input_ids"])
  assert_trees_close(
    model.apply({"params": tiny_params}, **batch),
    model.apply({"params": tiny_params}, **changed),
    rtol=0,
    atol=1e-6,
  )


def test_dropout_only_when_not_deterministic(tiny_params):
  model = bert.BertForPreTraining(TINY)
  batch = make_batch()
  apply = jax.jit(
    lambda key, det: model.apply(
      {"params": tiny_params}, **batch, deterministic=det, rngs={"dropout": key}
    ),
    static_argnums=1,
  )
  a, b, a2 = (apply(jax.random.key(s), False)[0] for s in (1, 2, 1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  clean = apply(jax.random.key(1), True)[0]
  np.testing.assert_array_equal(apply(jax.random.key(2), True)[0], clean)
  np.testing.assert_allclose(
    model.apply({"params": tiny_params}, **batch)[0], clean, rtol=0, atol=1e-6
  )
  assert not np.allclose(a, clean)


PRE_LN = dataclasses.replace(TINY, pre_layer_norm=True)


@pytest.fixture(scope="module")
def pre_ln_params():
  return init_params(PRE_LN)


def _encoder_output(config, params, batch):
  ids, types, mask = batch["input_ids"], batch["segment_ids"], batch["input_mask"]
  return bert.BertModel(config).apply({"params": params["bert"]}, ids, types, mask)[0]


def test_pre_layer_norm_normalizes_sublayer_inputs_and_adds_a_final_norm(
  tiny_params, pre_ln_params
):
  """Pre-LN has the papers' params plus bert/encoder/final_layer_norm. With every sublayer's output
  projection at zero, its layers leave the residual stream alone, whatever their LayerNorms hold
  (post-LN's normalize the stream), and the encoder returns final_layer_norm(embeddings)."""
  params = pre_ln_params
  encoder = params["bert"]["encoder"]
  final = encoder["final_layer_norm"]
  assert jax.tree.map(jnp.shape, final) == {"scale": (64,), "bias": (64,)}
  without_final = {k: v for k, v in encoder.items() if k != "final_layer_norm"}
  assert jax.tree.map(jnp.shape, without_final) == jax.tree.map(
    jnp.shape, tiny_params["bert"]["encoder"]
  )

  def edited(params):
    params = jax.tree.map(np.array, params)
    for i in range(TINY.num_layers):
      layer = params["bert"]["encoder"][f"layer_{i}"]
      for dense in (layer["attention"]["out"], layer["output"]):
        dense["kernel"][:], dense["bias"][:] = 0.0, 0.0
      for norm in ("attention_layer_norm", "output_layer_norm"):
        layer[norm]["scale"][:], layer[norm]["bias"][:] = 3.0, 1.0
    return params

  batch = make_batch()
  params = edited(params)
  params["bert"]["encoder"]["final_layer_norm"].update(
    scale=np.full(64, 2.0, np.float32), bias=np.full(64, 0.5, np.float32)
  )
  no_layers = dataclasses.replace(PRE_LN, num_layers=0)
  expected = _encoder_output(no_layers, params, batch)  # Embeddings, then the final LayerNorm.
  np.testing.assert_allclose(_encoder_output(PRE_LN, params, batch), expected, atol=1e-5)
  post_params = edited(tiny_params)
  embeddings = _encoder_output(dataclasses.replace(TINY, num_layers=0), post_params, batch)
  post = _encoder_output(TINY, post_params, batch)  # Post-LN: LN(x + 0) = 3 * (x normalized) + 1.
  np.testing.assert_allclose(post, 3.0 * embeddings + 1.0, atol=1e-4)


def test_pre_layer_norm_scans_as_unrolled(pre_ln_params):
  params = pre_ln_params
  batch = make_batch()
  scan_config = dataclasses.replace(PRE_LN, scan_layers=True)
  stacked = stack_layers(params, PRE_LN.num_layers)
  scanned_shapes = jax.tree.map(lambda x: x.shape, nn.unbox(bert.abstract_params(scan_config)))
  assert jax.tree.map(jnp.shape, stacked) == scanned_shapes

  def apply(config, params):
    return jax.jit(lambda p: bert.BertForPreTraining(config).apply({"params": p}, **batch))(params)

  assert_trees_close(apply(PRE_LN, params), apply(scan_config, stacked))


def test_gelu_is_exact_erf_gelu():
  x = jnp.linspace(-8.0, 8.0, 10001)
  np.testing.assert_allclose(bert.gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(bert.gelu(x) - jax.nn.gelu(x, approximate=True)))) > 1e-4


def test_bfloat16_compute_close_to_float32(tiny_params):
  batch = make_batch()
  f32 = bert.BertForPreTraining(TINY).apply({"params": tiny_params}, **batch)
  bf16_config = dataclasses.replace(TINY, dtype="bfloat16")
  bf16 = bert.BertForPreTraining(bf16_config).apply({"params": tiny_params}, **batch)
  for x, y in zip(f32, bf16):
    assert y.dtype == jnp.float32
    scale = float(jnp.abs(x).max())
    np.testing.assert_allclose(y, x, atol=0.03 * scale, rtol=0)
  grads = jax.jit(jax.grad(lambda p: loss_fn(bf16_config, p, batch)))(tiny_params)
  assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("scan", [False, True])
def test_forward_flops_match_jaxpr(scan):
  config = dataclasses.replace(TINY, scan_layers=scan, remat_policy="full")
  model = bert.BertForPreTraining(config)
  inputs = bert.init_inputs(1, LENGTH, PREDICTIONS)
  params = jax.eval_shape(model.init, jax.random.key(0), **inputs)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, **inputs))(params).jaxpr
  assert matmul_flops(jaxpr) == bert.forward_flops_per_sequence(config, LENGTH, PREDICTIONS)


def test_forward_flops_match_xla_cost_analysis():
  config = bert.BertConfig(
    vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024
  )
  model = bert.BertForPreTraining(config)
  inputs = bert.init_inputs(1, 128, 20)
  params = jax.eval_shape(model.init, jax.random.key(0), **inputs)
  cost = jax.jit(lambda p, x: model.apply(p, **x)).lower(params, inputs).compile().cost_analysis()
  expected = bert.forward_flops_per_sequence(config, 128, 20)
  # XLA also counts elementwise ops (softmax, GELU, LayerNorm): a percent or so here.
  assert expected <= cost["flops"] <= 1.03 * expected


def test_config_from_dict_rejects_unknown_keys():
  config = bert.BertConfig.from_dict(
    dict(
      vocab_size=256,
      hidden_size=64,
      num_layers=2,
      num_heads=4,
      intermediate_size=128,
      remat_policy="full",
    )
  )
  assert config.remat_policy == "full" and config.layer_norm_eps == 1e-12
  with pytest.raises(PretrainError, match="hidden_dropout"):
    bert.BertConfig.from_dict(dict(dataclasses.asdict(TINY), hidden_dropout=0.1))


def test_config_rejects_bad_values():
  with pytest.raises(PretrainError, match="dots_with_no_batch_dims_saveable"):
    dataclasses.replace(TINY, remat_policy="dots_only")
  with pytest.raises(PretrainError, match="xla"):
    bert.BertConfig.from_dict(dict(dataclasses.asdict(TINY), attention={"backend": "flash"}))
  with pytest.raises(PretrainError, match="num_kv_heads 3"):
    bert.BertConfig.from_dict(dict(dataclasses.asdict(TINY), attention={"num_kv_heads": 3}))
  with pytest.raises(PretrainError, match="num_heads"):
    dataclasses.replace(TINY, num_heads=5)


# Attention backends.


def _attention_loss(backend, params, x, mask):
  module = attention.MultiHeadAttention(
    num_heads=4, head_dim=16, config=attention.AttentionConfig(backend=backend)
  )
  y = module.apply({"params": params}, x, mask=attention.padding_mask(mask))
  return jnp.sum(y * jnp.sin(jnp.arange(y.size).reshape(y.shape))), y


def test_dot_product_attention_backend_matches_xla():
  x = jax.random.normal(jax.random.key(0), (3, 10, 32))
  mask = (np.arange(10)[None] < np.array([[10], [6], [1]])).astype(np.int32)
  module = attention.MultiHeadAttention(num_heads=4, head_dim=16)
  params = nn.unbox(module.init(jax.random.key(1), x, mask=attention.padding_mask(mask))["params"])
  results = {}
  for backend in attention.BACKENDS:
    grad_fn = jax.value_and_grad(_attention_loss, argnums=(1, 2), has_aux=True)
    (_, y), grads = jax.jit(grad_fn, static_argnums=0)(backend, params, x, mask)
    results[backend] = (y, grads)
  assert_trees_close(results["xla"], results["dot_product_attention"], rtol=1e-5, atol=1e-6)


def test_dot_product_attention_backend_falls_back_to_xla_for_dropout():
  q = jax.random.normal(jax.random.key(0), (2, 8, 4, 16))
  key = jax.random.key(3)
  outs = [
    attention.dot_product_attention(
      q, q, q, dropout_rng=key, dropout_rate=0.5, deterministic=False, backend=b
    )
    for b in attention.BACKENDS
  ]
  np.testing.assert_array_equal(outs[0], outs[1])
  clean = attention.dot_product_attention(q, q, q)
  assert not np.allclose(outs[0], clean)
