"""BERT (Devlin et al. 2018) for MLM + NSP pretraining, as google-research/bert.

Post-LayerNorm encoder with learned position and token-type embeddings, exact
(erf) GELU, a tanh pooler on [CLS], a masked-LM head whose decoder is tied to
the word embeddings, and a next-sentence head on the pooled output. The MLM
head runs only on the gathered masked positions, as BERT's run_pretraining.py
does: the vocabulary projection then costs P rather than L positions.

RoBERTa (Liu et al. 2019) is the same network with three options:
`position_offset=2` (positions count from 2 over the real tokens, padding reads
row 1, as HF's RoBERTa with padding_idx 1; 514 rows hold 512 tokens),
`type_vocab_size=1`, and `pooler=False, nsp_head=False` (MLM head only).

`pre_layer_norm=True` (an option of neither paper) normalizes each sublayer's
input instead of its residual sum and adds a final LayerNorm after the last
layer (bert/encoder/final_layer_norm): the pre-LN block that Cramming (Geiping
& Goldstein 2022) found to train far sooner at a high learning rate on a small
budget. HF's BERT and RoBERTa have no such block, so to-hf refuses it.

Parameter tree (HF/TF names in parentheses):
  bert/embeddings/{word,position,token_type}_embeddings, layer_norm
  bert/encoder/layer_{i}/ (or bert/encoder/layers/ stacked when scan_layers)
    attention/{query,key,value,out}  (attention.self.*, attention.output.dense)
    attention_layer_norm             (attention.output.LayerNorm)
    intermediate, output             (intermediate.dense, output.dense)
    output_layer_norm                (output.LayerNorm)
  bert/pooler                        (pooler.dense; when pooler)
  mlm_head/transform, transform_layer_norm, output_bias  (cls.predictions.*)
  nsp_head                           (cls.seq_relationship; when nsp_head)
"""

import dataclasses
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.models import attention as attention_lib
from pretrain.models import layers
from pretrain.models import positions as positions_lib
from pretrain.models import stack

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig(stack.ModelConfig):
  """BERT hyperparameters; names follow google-research/bert's bert_config.json; defaults are BERT-base."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  dtype: str = "float32"  # Matmul compute dtype; params are always float32.
  scan_layers: bool = False
  remat_policy: str = "none"
  # The attention variant (pretrain/models/attention/config.py). position: 'learned' (BERT's table),
  # 'sinusoidal', 'rope', 'alibi', 'relative_bias' (one T5 bias shared by the layers) or 'none'.
  attention: attention_lib.AttentionConfig = attention_lib.AttentionConfig(position="learned")
  position_offset: int = 0  # Row of the first real token's position; RoBERTa: 2.
  pooler: bool = True  # The tanh pooler on [CLS]; RoBERTa has none.
  # Pre-LN blocks (x + f(LN(x)), a final LayerNorm) instead of the papers' post-LN (LN(x + f(x))).
  pre_layer_norm: bool = False
  nsp_head: bool = True  # The next-sentence head (needs the pooler).

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise PretrainError(
        f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
      )
    if not 0 <= self.position_offset < self.max_position_embeddings:
      raise PretrainError(
        f"position_offset {self.position_offset} must be in [0, max_position_embeddings "
        f"{self.max_position_embeddings})"
      )
    if self.nsp_head and not self.pooler:
      raise PretrainError(
        "nsp_head=True needs pooler=True: the next-sentence head reads the pooled [CLS]"
      )
    layers.check_dtype_and_remat(self.dtype, self.remat_policy)
    self.attention.check_heads(self.num_heads)
    if self.position_offset and self.attention.position != "learned":
      raise PretrainError(
        f"position_offset {self.position_offset} needs attention.position=learned, "
        f"not {self.attention.position!r}"
      )

  @property
  def max_length(self) -> int:
    """The longest sequence the position table holds (any length without a table)."""
    if self.attention.position != "learned":
      return sys.maxsize
    return self.max_position_embeddings - self.position_offset

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def gelu(x: Array) -> Array:
  """BERT's exact GELU, x * Phi(x), written with erf as BERT does.

  jax.nn.gelu(approximate=False) is written with erfc, whose XLA:CPU expansion
  is several times as costly as erf's: the FFN's fwd+bwd ran ~6% slower with it.
  """
  return x * 0.5 * (1.0 + jax.lax.erf(x * np.float32(1.0 / np.sqrt(2.0))))


class BertEmbeddings(nn.Module):
  config: BertConfig

  def setup(self):
    cfg = self.config
    init = layers.default_init(cfg.initializer_range)
    self.word_embeddings = layers.Embed(
      cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg.compute_dtype, init
    )
    if cfg.attention.position == "learned":
      self.position_embeddings = layers.Embed(
        cfg.max_position_embeddings, cfg.hidden_size, ("position", "embed"), embedding_init=init
      )
    self.token_type_embeddings = layers.Embed(
      cfg.type_vocab_size, cfg.hidden_size, ("types", "embed"), embedding_init=init
    )
    self.layer_norm = layers.LayerNorm(cfg.layer_norm_eps)
    self.dropout = layers.Dropout(cfg.dropout_rate)

  def __call__(
    self, input_ids: Array, segment_ids: Array, input_mask: Array, deterministic: bool
  ) -> Array:
    cfg = self.config
    length = input_ids.shape[1]
    if length > cfg.max_length:
      raise PretrainError(
        f"sequence length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}"
        + (f" minus position_offset {cfg.position_offset}" if cfg.position_offset else "")
      )
    x = self.word_embeddings(input_ids)  # [batch, length, embed]
    if cfg.position_offset:
      # HF RoBERTa: the j-th real token reads row offset + j, padding reads row offset - 1.
      count = jnp.cumsum(input_mask, axis=1)  # [batch, length]
      positions = jnp.where(
        input_mask > 0, count - 1 + cfg.position_offset, cfg.position_offset - 1
      )
      x = x + self.position_embeddings(positions)
    elif cfg.attention.position == "learned":
      x = x + self.position_embeddings.embedding[None, :length]
    elif cfg.attention.position == "sinusoidal":
      x = x + positions_lib.sinusoidal_table(length, cfg.hidden_size)[None]
    x = x + self.token_type_embeddings(segment_ids)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    x = self.layer_norm(x)
    return self.dropout(x, deterministic=deterministic)


class BertLayer(nn.Module):
  """One encoder layer. Post-LN (BERT): x = LN(x + attn(x)); x = LN(x + ffn(x)).

  Pre-LN (config.pre_layer_norm): x = x + attn(LN(x)); x = x + ffn(LN(x)), the
  same two LayerNorms (same names) applied to the sublayers' inputs.
  """

  config: BertConfig

  @nn.compact
  def __call__(
    self, x: Array, mask: attention_lib.AttentionMask, bias: Array | None, deterministic: bool
  ):
    cfg = self.config
    init = layers.default_init(cfg.initializer_range)
    dtype = cfg.compute_dtype
    dropout = layers.Dropout(cfg.dropout_rate)
    attention_norm = layers.LayerNorm(cfg.layer_norm_eps, name="attention_layer_norm")
    output_norm = layers.LayerNorm(cfg.layer_norm_eps, name="output_layer_norm")

    h = attention_norm(x) if cfg.pre_layer_norm else x
    h = attention_lib.MultiHeadAttention(
      num_heads=cfg.num_heads,
      head_dim=cfg.head_dim,
      config=cfg.attention,
      dtype=dtype,
      dropout_rate=cfg.attention_dropout_rate,
      kernel_init=init,
      name="attention",
    )(h, mask=mask, bias=bias, deterministic=deterministic)
    x = x + dropout(h, deterministic=deterministic)
    if not cfg.pre_layer_norm:
      x = attention_norm(x)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

    h = output_norm(x) if cfg.pre_layer_norm else x
    h = layers.Dense(
      cfg.intermediate_size, ("embed", "mlp"), dtype=dtype, kernel_init=init, name="intermediate"
    )(h)  # [batch, length, mlp]
    h = nn.with_logical_constraint(gelu(h), ("act_batch", "act_length", "act_mlp"))
    h = layers.Dense(
      cfg.hidden_size, ("mlp", "embed"), dtype=dtype, kernel_init=init, name="output"
    )(h)
    x = x + dropout(h, deterministic=deterministic)
    if not cfg.pre_layer_norm:
      x = output_norm(x)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    return (x, None) if cfg.scan_layers else x


class BertEncoder(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, input_mask: Array, deterministic: bool) -> Array:
    cfg = self.config
    mask = attention_lib.AttentionMask(input_mask=input_mask)
    bias = None
    if cfg.attention.position == "relative_bias":
      length = x.shape[1]
      bias = cfg.attention.relative_position_bias(
        num_heads=cfg.num_heads, bidirectional=True, name="relative_attention_bias"
      )(length, length)
    x = stack.layer_stack(
      BertLayer,
      cfg,
      x,
      mask,
      bias,
      num_layers=cfg.num_layers,
      deterministic=deterministic,
      scanned_name="layers",
      unrolled_name="layer_{}",
    )
    if cfg.pre_layer_norm:  # Pre-LN leaves the residual stream unnormalized.
      x = layers.LayerNorm(cfg.layer_norm_eps, name="final_layer_norm")(x)
    return x


class BertModel(nn.Module):
  """Embeddings + encoder + pooler: (sequence_output [B, L, H], pooled_output [B, H] or None)."""

  config: BertConfig

  def setup(self):
    cfg = self.config
    self.embeddings = BertEmbeddings(cfg)
    self.encoder = BertEncoder(cfg)
    if cfg.pooler:
      self.pooler = layers.Dense(
        cfg.hidden_size,
        ("embed", "mlp"),
        dtype=cfg.compute_dtype,
        kernel_init=layers.default_init(cfg.initializer_range),
      )

  def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
    x = self.embeddings(input_ids, segment_ids, input_mask, deterministic)  # [batch, length, embed]
    x = self.encoder(x, input_mask, deterministic)
    pooled = jnp.tanh(self.pooler(x[:, 0])) if self.config.pooler else None  # [batch, embed]
    return x, pooled


class MlmHead(nn.Module):
  """Transform (dense + GELU + LayerNorm), then logits against the tied word embeddings."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, word_embeddings: layers.Embed) -> Array:
    cfg = self.config
    x = layers.Dense(
      cfg.hidden_size,
      ("embed", "mlp"),
      dtype=cfg.compute_dtype,
      kernel_init=layers.default_init(cfg.initializer_range),
      name="transform",
    )(x)
    x = layers.LayerNorm(cfg.layer_norm_eps, name="transform_layer_norm")(gelu(x))
    bias = self.param(
      "output_bias",
      nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
      (cfg.vocab_size,),
      jnp.float32,
    )
    return word_embeddings.attend(x) + bias  # [batch, predictions, vocab] float32


class BertForPreTraining(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(
    self,
    input_ids: Array,  # int32 [batch, length]
    segment_ids: Array,  # int32 [batch, length]
    input_mask: Array,  # int32 [batch, length], 1 = real token
    masked_positions: Array | None = None,  # int32 [batch, predictions]; None: every position
    deterministic: bool = True,
  ) -> tuple[Array, Array | None]:
    """-> (mlm_logits float32 [batch, predictions, vocab], nsp_logits float32 [batch, 2] or None).

    With masked_positions=None the MLM head runs at all L positions (as HF's heads do).
    """
    cfg = self.config
    bert = BertModel(cfg, name="bert")
    sequence_output, pooled = bert(input_ids, segment_ids, input_mask, deterministic)
    x = sequence_output
    if masked_positions is not None:
      x = jnp.take_along_axis(
        x, masked_positions[:, :, None], axis=1
      )  # [batch, predictions, embed]
    mlm_logits = MlmHead(cfg, name="mlm_head")(x, bert.embeddings.word_embeddings)
    nsp_logits = None
    if cfg.nsp_head:
      nsp_logits = layers.Dense(
        2,
        ("embed", "classes"),
        dtype=cfg.compute_dtype,
        kernel_init=layers.default_init(cfg.initializer_range),
        name="nsp_head",
      )(pooled)  # [batch, 2]
    return mlm_logits, nsp_logits


def init_inputs(batch: int, seq_len: int, num_predictions: int) -> dict[str, np.ndarray]:
  """Dummy int32 model inputs, e.g. for `model.init(rng, **init_inputs(...))` or eval_shape."""
  return {
    "input_ids": np.zeros((batch, seq_len), np.int32),
    "segment_ids": np.zeros((batch, seq_len), np.int32),
    "input_mask": np.ones((batch, seq_len), np.int32),
    "masked_positions": np.zeros((batch, num_predictions), np.int32),
  }


def abstract_params(config: BertConfig, seq_len: int = 8, num_predictions: int = 2):
  """The boxed (logically annotated) parameter tree as ShapeDtypeStructs; allocates nothing."""
  return stack.abstract_params(BertForPreTraining(config), init_inputs(1, seq_len, num_predictions))


def count_params(config: BertConfig, heads: bool = True) -> int:
  """Number of parameters; heads=False counts embeddings + encoder (+ pooler) only."""
  params = abstract_params(config)
  if not heads:
    params = params["bert"]
  return stack.count_params(params)


def forward_flops_per_sequence(config: BertConfig, seq_len: int, num_predictions: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass over one sequence."""
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
  attn_features, kv_features = config.attention_features
  per_layer = stack.attention_flops(
    h, attn_features, kv_features, seq_len, seq_len
  ) + stack.dense_flops(seq_len, h, i, 2)  # FFN
  heads = (
    2 * h * h * config.pooler
    + 2 * h * 2 * config.nsp_head  # pooler + NSP on [CLS]
    + num_predictions * (2 * h * h + 2 * h * v)  # MLM transform + tied decoder
  )
  return float(config.num_layers * per_layer + heads)
