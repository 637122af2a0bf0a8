"""T5 v1.1 (Raffel et al. 2020, with the v1.1 changes): the encoder-decoder of t5x's t5_1_1.

  * Pre-norm residual blocks with T5's LayerNorm (RMSNorm: no mean
    subtraction, no bias, eps 1e-6), a final norm at the end of each stack.
  * Gated-GELU feed-forward (wi_0, wi_1, wo; GELU with the tanh approximation).
  * No biases anywhere. No 1/sqrt(head_dim) on the attention logits: T5 folds it
    into the query initialization instead.
  * Relative position bias: 32 log-spaced buckets up to distance 128, one
    [buckets, heads] table per stack, looked up once per forward and added in
    every layer's self-attention (bidirectional in the encoder, causal in
    the decoder). Cross-attention has none.
  * One input embedding shared by encoder and decoder; an untied LM head with
    no output rescaling (v1.1 unties it from the embedding).
  * Dropout after the embeddings, inside the FFN, on each residual branch, on
    the attention weights and after each stack's final norm (rate 0 for v1.1
    pretraining).

Parameter tree (HF T5ForConditionalGeneration names in parentheses; kernels are
[in, out], HF's Linear weights [out, in]):
  shared/embedding                                    (shared.weight)
  encoder/relative_attention_bias/embedding           (encoder.block.0.layer.0.SelfAttention.relative_attention_bias)
  encoder/block_{i}/layer_0/SelfAttention/{query,key,value,out}/kernel  (...SelfAttention.{q,k,v,o})
  encoder/block_{i}/layer_0/layer_norm/scale
  encoder/block_{i}/layer_1/DenseReluDense/{wi_0,wi_1,wo}/kernel
  encoder/block_{i}/layer_1/layer_norm/scale
  encoder/final_layer_norm/scale
  decoder/relative_attention_bias/embedding           (decoder.block.0.layer.0.SelfAttention.relative_attention_bias)
  decoder/block_{i}/layer_0/SelfAttention/..., layer_0/layer_norm
  decoder/block_{i}/layer_1/EncDecAttention/..., layer_1/layer_norm
  decoder/block_{i}/layer_2/DenseReluDense/..., layer_2/layer_norm
  decoder/final_layer_norm/scale
  lm_head/kernel                                      (lm_head.weight)
With scan_layers, block_{i} becomes one `block` whose leaves stack the layers on axis 0.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import numpy as np

from pretrain.errors import PretrainError
from pretrain.models import attention as attention_lib
from pretrain.models import layers
from pretrain.models import positions as positions_lib
from pretrain.models import stack

Array = jax.Array

# T5's initializers (t5x): fan-in scaled kernels, unit-variance embedding.
_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
_embedding_init = nn.initializers.normal(stddev=1.0)
_relative_bias_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
# std / stddev of a normal truncated at two standard deviations (MultiHeadAttention's init).
_TRUNCATED_NORMAL_STD = 0.87962566103423978
# Positions T5 can use: none of them adds an embedding to the tokens.
_POSITIONS = ("relative_bias", "rope", "alibi", "none")


@dataclasses.dataclass(frozen=True)
class T5Config(stack.ModelConfig):
  """T5 hyperparameters, named as the other families' (HF's T5Config names in comments); defaults are T5 v1.1 small.

  The relative position bias takes its buckets and distance from
  `attention.relative_num_buckets` / `attention.relative_max_distance` (HF:
  relative_attention_num_buckets / relative_attention_max_distance).
  """

  vocab_size: int = 32128
  hidden_size: int = 512  # d_model
  intermediate_size: int = 1024  # d_ff
  head_dim: int = 64  # d_kv
  num_heads: int = 6
  num_layers: int = 8  # Encoder blocks.
  num_decoder_layers: int = 8
  dropout_rate: float = (
    0.0  # Everywhere, the attention weights included; T5 v1.1 pretrains without.
  )
  layer_norm_eps: float = 1e-6  # layer_norm_epsilon
  dtype: str = "float32"  # Matmul compute dtype; params are always float32.
  scan_layers: bool = False
  remat_policy: str = "none"
  # The attention variant (pretrain/models/attention/config.py). position: 'relative_bias' (T5's, shared by the
  # layers of each stack), 'rope', 'alibi' or 'none'.
  attention: attention_lib.AttentionConfig = attention_lib.AttentionConfig(position="relative_bias")

  def __post_init__(self):
    for name in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "head_dim",
      "num_heads",
      "num_layers",
      "num_decoder_layers",
    ):
      if int(getattr(self, name)) < 1:
        raise PretrainError(f"T5Config.{name}={getattr(self, name)} must be positive")
    layers.check_dtype_and_remat(self.dtype, self.remat_policy)
    self.attention.check_heads(self.num_heads)
    if self.attention.position not in _POSITIONS:
      raise PretrainError(
        f"T5 takes attention.position in {', '.join(_POSITIONS)}, not {self.attention.position!r}"
      )

  def relative_position_bias(
    self, bidirectional: bool
  ) -> positions_lib.RelativePositionBias | None:
    """The stack's shared relative bias module (position='relative_bias'), else None."""
    if self.attention.position != "relative_bias":
      return None
    return positions_lib.RelativePositionBias(
      num_heads=self.num_heads,
      num_buckets=self.attention.relative_num_buckets,
      max_distance=self.attention.relative_max_distance,
      bidirectional=bidirectional,
      embedding_init=_relative_bias_init,
      name="relative_attention_bias",
    )


class GatedGeluFeedForward(nn.Module):
  """wo(gelu(wi_0 x) * wi_1 x), T5 v1.1's FFN (HF: DenseReluDense with feed_forward_proj='gated-gelu')."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    dense = functools.partial(
      layers.Dense, use_bias=False, dtype=cfg.compute_dtype, kernel_init=_kernel_init
    )
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), name="wi_0")(x)  # [batch, length, mlp]
    linear = dense(cfg.intermediate_size, ("embed", "mlp"), name="wi_1")(x)  # [batch, length, mlp]
    h = jax.nn.gelu(gate, approximate=True) * linear
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    h = layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return dense(cfg.hidden_size, ("mlp", "embed"), name="wo")(h)  # [batch, length, embed]


def _attention_inits(cfg: T5Config) -> dict[str, layers.Initializer]:
  """T5's attention initializers: fan-in scaled normals, the query's also divided by sqrt(head_dim).

  The query's 1/sqrt(head_dim) stands in for the logits scale T5 does not apply.
  Key and value draw std hidden_size**-0.5 (from a normal truncated at 2 sigma, so
  its stddev argument is divided by that truncation's std); query and out
  scale the same draw, out to (heads * head_dim)**-0.5.
  """
  init = layers.default_init(cfg.hidden_size**-0.5 / _TRUNCATED_NORMAL_STD)
  return {
    "kernel_init": init,
    "query_init": layers.scaled_init(init, cfg.head_dim**-0.5),
    "out_init": layers.scaled_init(
      init, math.sqrt(cfg.hidden_size / (cfg.num_heads * cfg.head_dim))
    ),
  }


class AttentionSublayer(nn.Module):
  """x + dropout(attention(norm(x), kv)): HF's T5LayerSelfAttention / T5LayerCrossAttention."""

  config: T5Config
  attention_name: str  # 'SelfAttention' or 'EncDecAttention'.
  decode: bool = False  # Self-attention through the key/value cache (see MultiHeadAttention).

  @nn.compact
  def __call__(
    self,
    x: Array,
    kv: Array | None,
    mask: attention_lib.AttentionMask,
    bias: Array | None,
    deterministic: bool,
  ) -> Array:
    cfg = self.config
    h = layers.RMSNorm(cfg.layer_norm_eps, name="layer_norm")(x)
    variant = cfg.attention
    if kv is not None:  # Cross-attention: no positions or window between the two stacks.
      variant = dataclasses.replace(variant, position="none", sliding_window=None)
    h = attention_lib.MultiHeadAttention(
      num_heads=cfg.num_heads,
      head_dim=cfg.head_dim,
      config=variant,
      dtype=cfg.compute_dtype,
      dropout_rate=cfg.dropout_rate,
      use_bias=False,
      logits_scale=1.0,
      name=self.attention_name,
      **_attention_inits(cfg),
    )(h, kv, mask=mask, bias=bias, deterministic=deterministic, decode=self.decode)
    h = layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return nn.with_logical_constraint(x + h, ("act_batch", "act_length", "act_embed"))


class FeedForwardSublayer(nn.Module):
  """x + dropout(ffn(norm(x))): HF's T5LayerFF."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    h = layers.RMSNorm(cfg.layer_norm_eps, name="layer_norm")(x)
    h = GatedGeluFeedForward(cfg, name="DenseReluDense")(h, deterministic)
    h = layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return nn.with_logical_constraint(x + h, ("act_batch", "act_length", "act_embed"))


class EncoderBlock(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(
    self, x: Array, mask: attention_lib.AttentionMask, bias: Array | None, deterministic: bool
  ):
    x = AttentionSublayer(self.config, "SelfAttention", name="layer_0")(
      x, None, mask, bias, deterministic
    )
    x = FeedForwardSublayer(self.config, name="layer_1")(x, deterministic)
    return (x, None) if self.config.scan_layers else x


class DecoderBlock(nn.Module):
  config: T5Config
  decode: bool = (
    False  # Self-attention through the key/value cache; cross-attention recomputes its keys.
  )

  @nn.compact
  def __call__(
    self,
    x: Array,
    encoded: Array,
    self_mask: attention_lib.AttentionMask,
    cross_mask: attention_lib.AttentionMask,
    bias: Array | None,
    deterministic: bool,
  ):
    cfg = self.config
    x = AttentionSublayer(cfg, "SelfAttention", decode=self.decode, name="layer_0")(
      x, None, self_mask, bias, deterministic
    )
    x = AttentionSublayer(cfg, "EncDecAttention", name="layer_1")(
      x, encoded, cross_mask, None, deterministic
    )
    x = FeedForwardSublayer(cfg, name="layer_2")(x, deterministic)
    return (x, None) if cfg.scan_layers else x


def _blocks(
  block_cls, cfg: T5Config, num_blocks: int, x: Array, *args, deterministic: bool, **fields
) -> Array:
  """The stack's blocks, unrolled as block_{i} or scanned as one `block`; fields: e.g. the decoder's decode."""
  return stack.layer_stack(
    block_cls,
    cfg,
    x,
    *args,
    num_layers=num_blocks,
    deterministic=deterministic,
    scanned_name="block",
    unrolled_name="block_{}",
    **fields,
  )


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, input_mask: Array, deterministic: bool) -> Array:
    """Embedded inputs [batch, length, embed], input_mask [batch, length] (1 = real) -> [batch, length, embed]."""
    cfg = self.config
    length = x.shape[1]
    relative = cfg.relative_position_bias(bidirectional=True)
    bias = relative(length, length) if relative else None  # [1, heads, length, length]
    x = layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = _blocks(
      EncoderBlock,
      cfg,
      cfg.num_layers,
      x,
      attention_lib.AttentionMask(input_mask=input_mask),
      bias,
      deterministic=deterministic,
    )
    x = layers.RMSNorm(cfg.layer_norm_eps, name="final_layer_norm")(x)
    return layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(
    self, x: Array, encoded: Array, encoder_mask: Array, deterministic: bool, decode: bool = False
  ) -> Array:
    """Embedded decoder inputs [batch, length, embed] attending to encoded [batch, enc_length, embed].

    decode: the inputs continue the sequence in the 'cache' collection.
    """
    cfg = self.config
    length = x.shape[1]
    relative = cfg.relative_position_bias(bidirectional=False)
    if decode:  # The new tokens at their absolute positions against every cache slot.
      positions, kv_positions = attention_lib.decode_positions(self, length)
      bias = (
        relative(length, kv_positions.shape[1], q_positions=positions, kv_positions=kv_positions)
        if relative
        else None
      )  # [1, heads, length, max_length]
    else:
      bias = relative(length, length) if relative else None  # [1, heads, length, length]
    x = layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = _blocks(
      DecoderBlock,
      cfg,
      cfg.num_decoder_layers,
      x,
      encoded,
      attention_lib.AttentionMask(causal=True),
      attention_lib.AttentionMask(input_mask=encoder_mask),
      bias,
      deterministic=deterministic,
      decode=decode,
    )
    x = layers.RMSNorm(cfg.layer_norm_eps, name="final_layer_norm")(x)
    return layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class T5Model(nn.Module):
  """T5 v1.1 for conditional generation: (encoder tokens, decoder tokens) -> float32 logits."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.shared = layers.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      ("vocab", "embed"),
      cfg.compute_dtype,
      embedding_init=_embedding_init,
    )
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    self.lm_head = layers.Dense(
      cfg.vocab_size,
      ("embed", "vocab"),
      use_bias=False,
      dtype=cfg.compute_dtype,
      kernel_init=_kernel_init,
    )

  def encode(
    self, encoder_input_tokens: Array, encoder_input_mask: Array, deterministic: bool = True
  ) -> Array:
    """int32 [batch, enc_length] tokens and mask (1 = real) -> [batch, enc_length, embed]."""
    x = self.shared(encoder_input_tokens)  # [batch, enc_length, embed]
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    return self.encoder(x, encoder_input_mask, deterministic)

  def decode(
    self,
    encoded: Array,
    encoder_input_mask: Array,
    decoder_input_tokens: Array,
    deterministic: bool = True,
    decode: bool = False,
  ) -> Array:
    """Encoder output + int32 [batch, dec_length] decoder inputs -> float32 logits [batch, dec_length, vocab].

    decode: the decoder inputs continue those in the 'cache' collection (key/value
    cache; the call that creates it, on inputs of the cache's length, stores nothing).
    """
    y = self.shared(decoder_input_tokens)  # [batch, dec_length, embed]
    y = nn.with_logical_constraint(y, ("act_batch", "act_length", "act_embed"))
    y = self.decoder(y, encoded, encoder_input_mask, deterministic, decode)
    logits = self.lm_head(y)  # [batch, dec_length, vocab]
    return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))

  def __call__(
    self,
    encoder_input_tokens: Array,  # int32 [batch, enc_length]
    encoder_input_mask: Array,  # int32 [batch, enc_length], 1 = real token
    decoder_input_tokens: Array,  # int32 [batch, dec_length], targets shifted right (start id 0)
    deterministic: bool = True,
  ) -> Array:
    """-> logits float32 [batch, dec_length, vocab]."""
    encoded = self.encode(encoder_input_tokens, encoder_input_mask, deterministic)
    return self.decode(encoded, encoder_input_mask, decoder_input_tokens, deterministic)


def init_inputs(batch: int, inputs_length: int, targets_length: int) -> dict[str, np.ndarray]:
  """Dummy int32 model inputs, e.g. for `model.init(rng, **init_inputs(...))` or eval_shape."""
  return {
    "encoder_input_tokens": np.zeros((batch, inputs_length), np.int32),
    "encoder_input_mask": np.ones((batch, inputs_length), np.int32),
    "decoder_input_tokens": np.zeros((batch, targets_length), np.int32),
  }


def abstract_params(config: T5Config, inputs_length: int = 8, targets_length: int = 4):
  """The boxed (logically annotated) parameter tree as ShapeDtypeStructs; allocates nothing."""
  return stack.abstract_params(T5Model(config), init_inputs(1, inputs_length, targets_length))


def count_params(config: T5Config) -> int:
  return stack.count_params(abstract_params(config))


def forward_flops_per_example(config: T5Config, inputs_length: int, targets_length: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass over one (inputs, targets) pair."""
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  inner, kv_inner = config.attention_features
  li, lt = inputs_length, targets_length
  encoder_layer = stack.attention_flops(d, inner, kv_inner, li, li) + stack.dense_flops(
    li, d, f, 3
  )  # wi_0, wi_1, wo
  decoder_layer = (
    stack.attention_flops(d, inner, kv_inner, lt, lt)  # self-attention
    + stack.attention_flops(d, inner, kv_inner, lt, li)  # cross-attention: keys from the inputs
    + stack.dense_flops(lt, d, f, 3)
  )  # FFN
  lm_head = stack.dense_flops(lt, d, v)
  return float(
    config.num_layers * encoder_layer + config.num_decoder_layers * decoder_layer + lm_head
  )
