"""GPT-2 model: exact parameter counts, init, causality, packed segments, scan/remat equivalence, FLOPs."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.families.gpt2 import model as gpt2

from model_checks import assert_trees_close, stack_unrolled  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = gpt2.Gpt2Config(
  vocab_size=256,
  hidden_size=64,
  num_layers=2,
  num_heads=4,
  intermediate_size=128,
  max_position_embeddings=32,
)
SIZES = {  # name: (shape, published parameter count)
  "small": (
    dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    124_439_808,
  ),
  "medium": (
    dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    354_823_168,
  ),
  "large": (
    dict(hidden_size=1280, num_layers=36, num_heads=20, intermediate_size=5120),
    774_030_080,
  ),
  "xl": (
    dict(hidden_size=1600, num_layers=48, num_heads=25, intermediate_size=6400),
    1_557_611_200,
  ),
}
BATCH, LENGTH = 2, 16


def init_params(config, seed=0):
  model = gpt2.Gpt2LMHeadModel(config)
  init = jax.jit(lambda key: model.init(key, **gpt2.init_inputs(1, LENGTH))["params"])
  return nn.unbox(init(jax.random.key(seed)))


@functools.cache
def _apply(config, deterministic):
  return jax.jit(functools.partial(gpt2.Gpt2LMHeadModel(config).apply, deterministic=deterministic))


def logits(config, params, ids, positions=None, segment_ids=None, rng=None):
  rngs = None if rng is None else {"dropout": rng}
  return _apply(config, rng is None)({"params": params}, ids, positions, segment_ids, rngs=rngs)


def random_ids(seed=0, shape=(BATCH, LENGTH), vocab=256):
  return np.random.default_rng(seed).integers(5, vocab, shape).astype(np.int32)


def stack_layers(params, num_layers):
  """Unrolled params -> scan layout (h_i/... -> h/... stacked on axis 0)."""
  params = dict(params)
  stack_unrolled(params, "h_", num_layers, "h")
  return params


@pytest.fixture(scope="module")
def tiny_params():
  return init_params(TINY)


@pytest.mark.parametrize("size", list(SIZES))
def test_parameter_counts_match_published_gpt2(size):
  shape, expected = SIZES[size]
  # Scanned: the same parameters stacked, and eval_shape traces one block instead of up to 48.
  assert gpt2.count_params(gpt2.Gpt2Config(**shape, scan_layers=True)) == expected


def test_unrolled_small_count_names_and_axes():
  params = gpt2.abstract_params(gpt2.Gpt2Config(**SIZES["small"][0]))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))) == 124_439_808
  assert set(params) == {"wte", "wpe", "ln_f"} | {f"h_{i}" for i in range(12)}
  block = params["h_0"]
  assert set(block) == {"ln_1", "attn", "ln_2", "mlp"}
  assert set(block["attn"]) == {"query", "key", "value", "out"} and set(block["mlp"]) == {
    "c_fc",
    "c_proj",
  }
  assert block["mlp"]["c_fc"]["kernel"].names == ("embed", "mlp")
  assert block["mlp"]["c_fc"]["kernel"].value.shape == (768, 3072)
  assert params["wte"]["embedding"].names == ("vocab", "embed")
  assert params["wpe"]["embedding"].value.shape == (1024, 768)
  scanned = gpt2.abstract_params(gpt2.Gpt2Config(**SIZES["small"][0], scan_layers=True))
  assert scanned["h"]["mlp"]["c_proj"]["kernel"].names == ("layers", "mlp", "embed")
  assert scanned["h"]["mlp"]["c_proj"]["kernel"].value.shape == (12, 3072, 768)


def test_init_is_gpt2s():
  config = dataclasses.replace(TINY, hidden_size=128, intermediate_size=512, num_layers=3)
  params = init_params(config)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  scale = 1 / np.sqrt(2 * 3)
  np.testing.assert_allclose(params["wte"]["embedding"].std(), 0.02, rtol=0.05)
  np.testing.assert_allclose(params["h_2"]["mlp"]["c_fc"]["kernel"].std(), 0.02, rtol=0.05)
  np.testing.assert_allclose(
    params["h_2"]["mlp"]["c_proj"]["kernel"].std(), 0.02 * scale, rtol=0.05
  )
  # Attention projections: MultiHeadAttention's normal truncated at 2 sigma (std 0.88 sigma), out scaled.
  q, out = params["h_2"]["attn"]["query"]["kernel"], params["h_2"]["attn"]["out"]["kernel"]
  np.testing.assert_allclose(q.std(), 0.02 * 0.88, rtol=0.05)
  np.testing.assert_allclose(out.std(), 0.02 * 0.88 * scale, rtol=0.05)
  assert float(jnp.abs(out).max()) <= 0.04 * scale
  np.testing.assert_array_equal(params["h_2"]["ln_2"]["scale"], 1.0)
  np.testing.assert_array_equal(params["h_2"]["mlp"]["c_proj"]["bias"], 0.0)


def test_logits_shape_and_initial_loss_is_log_vocab(tiny_params):
  ids = random_ids()
  out = logits(TINY, tiny_params, ids)
  assert out.shape == (BATCH, LENGTH, 256) and out.dtype == jnp.float32
  nll = -jax.nn.log_softmax(out)[..., :-1, :]
  loss = float(jnp.mean(jnp.take_along_axis(nll, ids[:, 1:, None], axis=-1)))
  # A little above log(V): the tied wte makes each token's own logit stand out slightly at init.
  assert 0 <= loss - np.log(256) < 0.15, loss


def test_causal_a_future_token_changes_no_earlier_logit(tiny_params):
  ids = random_ids()
  changed = ids.copy()
  changed[:, 9] = (ids[:, 9] + 1) % 256
  a, b = logits(TINY, tiny_params, ids), logits(TINY, tiny_params, changed)
  np.testing.assert_array_equal(a[:, :9], b[:, :9])
  assert not np.allclose(a[:, 9:], b[:, 9:])


def test_packed_segments_equal_documents_run_alone(tiny_params):
  """[doc A (5) | doc B (7) | padding (4)]: each segment's logits are its document's run alone."""
  a, b = random_ids(1, (1, 5)), random_ids(2, (1, 7))
  ids = np.concatenate([a, b, np.zeros((1, 4), np.int32)], axis=1)
  segment_ids = np.array([[1] * 5 + [2] * 7 + [0] * 4], np.int32)
  positions = np.array([list(range(5)) + list(range(7)) + [0] * 4], np.int32)
  packed = logits(TINY, tiny_params, ids, positions, segment_ids)
  np.testing.assert_allclose(packed[:, :5], logits(TINY, tiny_params, a), atol=2e-5)
  np.testing.assert_allclose(packed[:, 5:12], logits(TINY, tiny_params, b), atol=2e-5)
  # No attention across segments: changing A or the padding leaves B's logits as they are.
  other = ids.copy()
  other[0, :5] = random_ids(3, (1, 5))
  other[0, 12:] = 77
  np.testing.assert_array_equal(
    logits(TINY, tiny_params, other, positions, segment_ids)[:, 5:12], packed[:, 5:12]
  )
  assert np.all(np.isfinite(packed))


def test_scanned_and_rematerialized_blocks_match_unrolled(tiny_params):
  ids = random_ids()
  scan_config = dataclasses.replace(TINY, scan_layers=True, remat_policy="full")
  stacked = stack_layers(tiny_params, TINY.num_layers)
  abstract = jax.eval_shape(
    lambda: gpt2.Gpt2LMHeadModel(scan_config).init(
      jax.random.key(0), **gpt2.init_inputs(1, LENGTH)
    )["params"]
  )
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, nn.unbox(abstract))

  def loss(config, p):
    return jnp.mean(jax.nn.logsumexp(logits(config, p, ids), axis=-1))

  plain_loss, plain_grads = jax.jit(jax.value_and_grad(lambda p: loss(TINY, p)))(tiny_params)
  scan_loss, scan_grads = jax.jit(jax.value_and_grad(lambda p: loss(scan_config, p)))(stacked)
  assert_trees_close(
    (plain_loss, stack_layers(plain_grads, TINY.num_layers)), (scan_loss, scan_grads), atol=1e-5
  )


def test_dropout_only_when_not_deterministic(tiny_params):
  ids = random_ids()
  a, b = (logits(TINY, tiny_params, ids, rng=jax.random.key(s)) for s in (1, 2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, logits(TINY, tiny_params, ids, rng=jax.random.key(1)))
  clean = logits(TINY, tiny_params, ids)
  assert not np.allclose(a, clean)


def test_bfloat16_compute_is_close_to_float32(tiny_params):
  ids = random_ids()
  bf16 = logits(dataclasses.replace(TINY, dtype="bfloat16"), tiny_params, ids)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, logits(TINY, tiny_params, ids), atol=0.05)


def test_forward_flops():
  config = gpt2.Gpt2Config(**SIZES["small"][0])
  # 2 x (non-embedding parameters' matmuls) per token + attention scores + the tied LM head.
  per_token = 2 * 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 2 * 12 * 2 * 1024 * 768 + 2 * 768 * 50257
  assert gpt2.forward_flops_per_sequence(config, 1024) == 1024 * per_token


def test_bad_config(tiny_params):
  with pytest.raises(PretrainError, match="divisible"):
    gpt2.Gpt2Config(hidden_size=100, num_heads=12)
  with pytest.raises(PretrainError, match="n_embd"):
    gpt2.Gpt2Config.from_dict({"n_embd": 768})
  with pytest.raises(PretrainError, match="remat_policy"):
    gpt2.Gpt2Config(remat_policy="some")
  with pytest.raises(PretrainError, match="max_position_embeddings 32"):
    logits(TINY, tiny_params, random_ids(shape=(1, 33)))
