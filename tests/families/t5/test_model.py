"""T5 v1.1 model: exact parameter counts, HF equivalence, causality, padding, buckets, init, scan/remat, FLOPs."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import positions
from pretrain.families.t5 import model as t5

from model_checks import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  assert_trees_close,
  count_primitive,
  matmul_flops,
  stack_unrolled,
)

TINY = t5.T5Config(
  vocab_size=96,
  hidden_size=32,
  intermediate_size=48,
  head_dim=8,
  num_heads=3,
  num_layers=2,
  num_decoder_layers=2,
)
SMALL = t5.T5Config(
  vocab_size=32128,
  hidden_size=512,
  intermediate_size=1024,
  head_dim=64,
  num_heads=6,
  num_layers=8,
  num_decoder_layers=8,
)
BASE = t5.T5Config(
  vocab_size=32128,
  hidden_size=768,
  intermediate_size=2048,
  head_dim=64,
  num_heads=12,
  num_layers=12,
  num_decoder_layers=12,
)
LARGE = t5.T5Config(
  vocab_size=32128,
  hidden_size=1024,
  intermediate_size=2816,
  head_dim=64,
  num_heads=16,
  num_layers=24,
  num_decoder_layers=24,
)
BATCH, ENC, DEC = 2, 12, 7


def make_batch(seed=0, batch=BATCH, enc=ENC, dec=DEC, vocab=96):
  """Random tokens; row b has ENC - 3b real encoder tokens, then padding."""
  rng = np.random.default_rng(seed)
  real = ENC - 3 * np.arange(batch)
  mask = (np.arange(enc)[None] < real[:, None]).astype(np.int32)
  return {
    "encoder_input_tokens": (rng.integers(1, vocab, (batch, enc)) * mask).astype(np.int32),
    "encoder_input_mask": mask,
    "decoder_input_tokens": np.concatenate(
      [np.zeros((batch, 1), np.int32), rng.integers(1, vocab, (batch, dec - 1)).astype(np.int32)],
      axis=1,
    ),
  }


def init_params(config, seed=0):
  init = jax.jit(functools.partial(t5.T5Model(config).init, **t5.init_inputs(1, ENC, DEC)))
  return nn.unbox(init(jax.random.key(seed))["params"])


@pytest.fixture(scope="module")
def tiny_params():
  return init_params(TINY)


@functools.lru_cache(maxsize=None)
def _jitted_apply(config, deterministic, method):
  model = t5.T5Model(config)
  return jax.jit(
    lambda p, b, key: model.apply(
      {"params": p},
      **b,
      deterministic=deterministic,
      rngs=None if key is None else {"dropout": key},
      method=method,
    )
  )


def apply(config, params, batch, dropout_key=None, method=None):
  """Jitted model.apply (eager flax is slow on CPU); dropout is on when a key is given."""
  return _jitted_apply(config, dropout_key is None, method)(params, batch, dropout_key)


# Base and large are counted in the scanned layout, which traces one block per stack (the
# counts are the same: see the next test).
@pytest.mark.parametrize(
  "config, expected",
  [
    (SMALL, 76_961_152),
    (dataclasses.replace(BASE, scan_layers=True), 247_577_856),
    (dataclasses.replace(LARGE, scan_layers=True), 783_150_080),
  ],
)
def test_parameter_counts_match_public_t5_v1_1(config, expected):
  assert t5.count_params(config) == expected


def test_scanned_parameters_stack_on_a_layers_axis():
  scan = dataclasses.replace(SMALL, scan_layers=True)
  assert t5.count_params(scan) == 76_961_152
  q = t5.abstract_params(scan)["decoder"]["block"]["layer_1"]["EncDecAttention"]["query"]["kernel"]
  assert q.value.shape == (8, 512, 384) and q.names == ("layers", "embed", "heads")


def test_matches_hf_t5_v1_1(tiny_params):
  """Same weights in transformers' T5ForConditionalGeneration (gated-gelu, untied) give the same logits."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  cfg = TINY
  hf_config = transformers.T5Config(
    vocab_size=cfg.vocab_size,
    d_model=cfg.hidden_size,
    d_ff=cfg.intermediate_size,
    d_kv=cfg.head_dim,
    num_heads=cfg.num_heads,
    num_layers=cfg.num_layers,
    num_decoder_layers=cfg.num_decoder_layers,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    decoder_start_token_id=0,
    pad_token_id=0,
    tie_word_embeddings=False,
  )  # In transformers 5 this turns off the tied head's output scaling...
  hf_config.tie_word_embeddings = False  # ...and this unties the head.
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(hf_config).eval()
  tensor = lambda x: torch.tensor(np.asarray(x))
  p = tiny_params
  state = {"lm_head.weight": tensor(p["lm_head"]["kernel"].T)}
  for name in ("shared", "encoder.embed_tokens", "decoder.embed_tokens"):
    state[f"{name}.weight"] = tensor(p["shared"]["embedding"])
  projections = {"query": "q", "key": "k", "value": "v", "out": "o"}
  for stack, sublayers in (
    ("encoder", ("SelfAttention", "ffn")),
    ("decoder", ("SelfAttention", "EncDecAttention", "ffn")),
  ):
    state[f"{stack}.final_layer_norm.weight"] = tensor(p[stack]["final_layer_norm"]["scale"])
    state[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = tensor(
      p[stack]["relative_attention_bias"]["embedding"]
    )
    for i in range(cfg.num_layers):
      for j, sub in enumerate(sublayers):
        ours, hf_name = p[stack][f"block_{i}"][f"layer_{j}"], f"{stack}.block.{i}.layer.{j}"
        state[f"{hf_name}.layer_norm.weight"] = tensor(ours["layer_norm"]["scale"])
        if sub == "ffn":
          for w in ("wi_0", "wi_1", "wo"):
            state[f"{hf_name}.DenseReluDense.{w}.weight"] = tensor(
              ours["DenseReluDense"][w]["kernel"].T
            )
        else:
          for a, b in projections.items():
            state[f"{hf_name}.{sub}.{b}.weight"] = tensor(ours[sub][a]["kernel"].T)
  assert set(state) == set(hf.state_dict())
  hf.load_state_dict(state)
  batch = make_batch(enc=150, dec=140)  # Past max_distance: every bucket is used.
  batch["encoder_input_mask"][1, 100:] = 0
  ours = apply(cfg, p, batch)
  with torch.no_grad():
    theirs = hf(
      input_ids=tensor(batch["encoder_input_tokens"]).long(),
      attention_mask=tensor(batch["encoder_input_mask"]).long(),
      decoder_input_ids=tensor(batch["decoder_input_tokens"]).long(),
    ).logits.numpy()
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())


def test_relative_position_buckets_known_values():
  rel = np.array(
    [-1000, -128, -127, -64, -63, -32, -31, -16, -15, -12, -8, -7, -1, 0, 1, 7, 8, 16, 100, 1000]
  )
  bidirectional = [15, 15, 15, 14, 13, 12, 11, 10, 9, 9, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31]
  causal = [31, 31, 31, 26, 26, 21, 21, 16, 15, 12, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0]
  np.testing.assert_array_equal(
    positions.relative_position_bucket(rel, bidirectional=True), bidirectional
  )
  np.testing.assert_array_equal(
    positions.relative_position_bucket(rel, bidirectional=False), causal
  )


def test_decoder_is_causal(tiny_params):
  batch = make_batch()
  out = apply(TINY, tiny_params, batch)
  changed = dict(batch, decoder_input_tokens=batch["decoder_input_tokens"].copy())
  changed["decoder_input_tokens"][:, 4] = (changed["decoder_input_tokens"][:, 4] + 1) % 96
  out2 = apply(TINY, tiny_params, changed)
  np.testing.assert_array_equal(out[:, :4], out2[:, :4])
  assert np.abs(out[:, 4:] - out2[:, 4:]).max(axis=(1, 2)).min() > 1e-3


def test_encoder_padding_does_not_change_outputs(tiny_params):
  batch = make_batch()
  pad = batch["encoder_input_mask"] == 0
  assert pad.any()
  changed = dict(
    batch, encoder_input_tokens=np.where(pad, 77, batch["encoder_input_tokens"]).astype(np.int32)
  )
  out = apply(TINY, tiny_params, batch)
  np.testing.assert_allclose(apply(TINY, tiny_params, changed), out, rtol=0, atol=1e-5)
  # More padding after the real tokens changes nothing either (positions are relative).
  longer = {
    k: np.pad(v, ((0, 0), (0, 5))) if k.startswith("encoder") else v for k, v in batch.items()
  }
  np.testing.assert_allclose(apply(TINY, tiny_params, longer), out, rtol=0, atol=1e-5)
  encoder_batch = lambda b: {k: v for k, v in b.items() if k.startswith("encoder")}
  encoded = apply(TINY, tiny_params, encoder_batch(batch), method=t5.T5Model.encode)
  encoded_changed = apply(TINY, tiny_params, encoder_batch(changed), method=t5.T5Model.encode)
  np.testing.assert_allclose(
    np.where(pad[..., None], 0, encoded_changed),
    np.where(pad[..., None], 0, encoded),
    rtol=0,
    atol=1e-5,
  )


def test_initialization_follows_t5(tiny_params):
  p, d, heads_dim = tiny_params, TINY.hidden_size, TINY.num_heads * TINY.head_dim
  attn = p["encoder"]["block_0"]["layer_0"]["SelfAttention"]
  stds = {k: float(np.std(attn[k]["kernel"])) for k in ("query", "key", "value", "out")}
  np.testing.assert_allclose(
    stds["query"], d**-0.5 / TINY.head_dim**0.5, rtol=0.1
  )  # Folds in 1/sqrt(d_kv).
  np.testing.assert_allclose(stds["key"], d**-0.5, rtol=0.1)
  np.testing.assert_allclose(stds["value"], d**-0.5, rtol=0.1)
  np.testing.assert_allclose(stds["out"], heads_dim**-0.5, rtol=0.1)
  ffn = p["decoder"]["block_1"]["layer_2"]["DenseReluDense"]
  np.testing.assert_allclose(float(np.std(ffn["wi_0"]["kernel"])), d**-0.5, rtol=0.1)
  np.testing.assert_allclose(
    float(np.std(ffn["wo"]["kernel"])), TINY.intermediate_size**-0.5, rtol=0.1
  )
  np.testing.assert_allclose(float(np.std(p["shared"]["embedding"])), 1.0, rtol=0.1)
  np.testing.assert_allclose(float(np.std(p["lm_head"]["kernel"])), d**-0.5, rtol=0.1)
  np.testing.assert_array_equal(p["encoder"]["final_layer_norm"]["scale"], 1.0)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
  assert not any("bias" == str(path[-1].key) for path, _ in jax.tree_util.tree_leaves_with_path(p))


def stack_blocks(params, config):
  """Unrolled block_{i} params -> the scanned layout (one `block`, leaves stacked on axis 0)."""
  params = jax.tree.map(lambda x: x, params)
  for stack, n in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
    stack_unrolled(params[stack], "block_", n, "block")
  return params


def test_scan_and_remat_match_unrolled(tiny_params):
  """Scanned blocks under remat give the unrolled model's loss and gradients."""
  batch = make_batch()
  variant = dataclasses.replace(TINY, scan_layers=True, remat_policy="full")

  def loss(cfg, p):
    logits = t5.T5Model(cfg).apply({"params": p}, **batch, deterministic=False)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

  expected_loss, expected_grads = jax.jit(jax.value_and_grad(lambda p: loss(TINY, p)))(tiny_params)
  actual_loss, actual_grads = jax.jit(jax.value_and_grad(lambda p: loss(variant, p)))(
    stack_blocks(tiny_params, TINY)
  )
  expected_grads = stack_blocks(expected_grads, TINY)
  np.testing.assert_allclose(actual_loss, expected_loss, rtol=1e-5)
  assert_trees_close(actual_grads, expected_grads, rtol=1e-4, atol=1e-6)


def test_dropout_sites_only_when_not_deterministic():
  """T5's dropout sites: after the embeddings and each stack's final norm, inside every FFN, on every
  residual branch and on every attention's weights; none when deterministic."""
  model = t5.T5Model(dataclasses.replace(TINY, dropout_rate=0.1))
  inputs = t5.init_inputs(2, ENC, DEC)
  params = jax.eval_shape(model.init, jax.random.key(0), **inputs)

  def draws(deterministic):
    jaxpr = jax.make_jaxpr(
      lambda p: model.apply(
        p, **inputs, deterministic=deterministic, rngs={"dropout": jax.random.key(1)}
      )
    )(params).jaxpr
    return count_primitive(jaxpr, "random_bits")

  encoder = (
    1 + TINY.num_layers * 4 + 1
  )  # embeddings; attention weights, residual, FFN inner, residual; final
  decoder = 1 + TINY.num_decoder_layers * 6 + 1  # ... and cross-attention weights and residual
  assert draws(False) == encoder + decoder
  assert draws(True) == 0


@pytest.mark.parametrize("scan", [False, True])
def test_forward_flops_match_jaxpr(scan):
  config = dataclasses.replace(TINY, scan_layers=scan, num_decoder_layers=3)
  model = t5.T5Model(config)
  inputs = t5.init_inputs(2, 10, 6)
  params = jax.eval_shape(model.init, jax.random.key(0), **inputs)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, **inputs))(params).jaxpr
  assert matmul_flops(jaxpr) == 2 * t5.forward_flops_per_example(config, 10, 6)


def test_config_checks():
  with pytest.raises(PretrainError, match="unknown T5Config keys: d_model"):
    t5.T5Config.from_dict(dict(dataclasses.asdict(TINY), d_model=3))
  with pytest.raises(PretrainError, match="remat_policy"):
    dataclasses.replace(TINY, remat_policy="some")
  with pytest.raises(PretrainError, match="head_dim"):
    dataclasses.replace(TINY, head_dim=0)
  assert t5.T5Config.from_dict(dataclasses.asdict(TINY)) == TINY
