"""GPT-2 (Radford et al. 2019): a pre-LayerNorm Transformer decoder for causal LM.

Learned position embeddings, token embeddings tied to the LM head, GELU (tanh
approximation), LayerNorm (eps 1e-5) before attention and MLP and once more
after the last block, biases everywhere, dropout on the embeddings, the
residual branches and the attention probabilities.

Parameter tree (HF `GPT2LMHeadModel` names in parentheses):
  wte/embedding, wpe/embedding            (transformer.wte, transformer.wpe)
  h_{i}/ (or h/ stacked on a leading layers axis when scan_layers)
    ln_1, ln_2                            (h.{i}.ln_1, h.{i}.ln_2)
    attn/{query,key,value}                (h.{i}.attn.c_attn: the three [in, out]
                                           kernels concatenated on the out axis)
    attn/out                              (h.{i}.attn.c_proj)
    mlp/c_fc, mlp/c_proj                  (h.{i}.mlp.c_fc, h.{i}.mlp.c_proj)
  ln_f                                    (transformer.ln_f; lm_head is wte)
Kernels are [in, out], as HF's Conv1D weights; LayerNorm scale is HF's weight.

Initialization as GPT-2 (and HF, nanoGPT): normal(0.02) weights, zero biases,
and the two residual output projections (attn/out, mlp/c_proj) scaled by
1/sqrt(2 * num_layers). The attention projections are drawn from a normal
truncated at 2 sigma (MultiHeadAttention's default), attn/out's draw then scaled.

Packed sequences: `segment_ids` (1, 2, ... per document, 0 = padding) keep
attention inside a document, and `positions` restart at 0 in each one.
"""

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Gpt2Config(stack.ModelConfig):
  """GPT-2 hyperparameters (HF GPT2Config names in comments); defaults are GPT-2 small."""

  vocab_size: int = 50257
  hidden_size: int = 768  # n_embd
  num_layers: int = 12  # n_layer
  num_heads: int = 12  # n_head
  intermediate_size: int = 3072  # n_inner (4 * n_embd)
  max_position_embeddings: int = 1024  # n_positions
  dropout_rate: float = 0.1  # embd_pdrop and resid_pdrop
  attention_dropout_rate: float = 0.1  # attn_pdrop
  layer_norm_eps: float = 1e-5  # layer_norm_epsilon
  initializer_range: float = 0.02
  dtype: str = "float32"  # Matmul compute dtype; params are always float32.
  scan_layers: bool = False
  remat_policy: str = "none"
  # The attention variant (pretrain/models/attention/config.py). position: 'learned' (GPT-2's wpe),
  # 'sinusoidal', 'rope', 'alibi', 'relative_bias' (one causal T5 bias shared by the blocks) or 'none'.
  attention: attention_lib.AttentionConfig = attention_lib.AttentionConfig(position="learned")
  # >0: the task's loss computes the tied head's logits this many tokens at a time
  # (losses.chunked_cross_entropy), so the [tokens, vocab] logits never exist for the whole batch;
  # 0: the model's logits, as HF. How the loss is computed, not what the model is.
  loss_chunk_size: int = 0

  def __post_init__(self):
    for name in (
      "vocab_size",
      "hidden_size",
      "num_layers",
      "num_heads",
      "intermediate_size",
      "max_position_embeddings",
    ):
      if getattr(self, name) < 1:
        raise PretrainError(f"{name}={getattr(self, name)} must be positive")
    if self.hidden_size % self.num_heads:
      raise PretrainError(
        f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
      )
    layers.check_dtype_and_remat(self.dtype, self.remat_policy)
    if self.loss_chunk_size < 0:
      raise PretrainError(f"loss_chunk_size={self.loss_chunk_size} must be 0 (off) or positive")
    self.attention.check_heads(self.num_heads)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def residual_init_scale(self) -> float:
    """GPT-2 scales the weights of the 2 * num_layers residual projections by 1/sqrt(2 * num_layers)."""
    return 1.0 / math.sqrt(2 * self.num_layers)


def gelu(x: Array) -> Array:
  """GPT-2's GELU, the tanh approximation."""
  return jax.nn.gelu(x, approximate=True)


class Gpt2Mlp(nn.Module):
  config: Gpt2Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    std = cfg.initializer_range
    h = layers.Dense(
      cfg.intermediate_size,
      ("embed", "mlp"),
      dtype=cfg.compute_dtype,
      kernel_init=nn.initializers.normal(std),
      name="c_fc",
    )(x)  # [batch, length, mlp]
    h = nn.with_logical_constraint(gelu(h), ("act_batch", "act_length", "act_mlp"))
    return layers.Dense(
      cfg.hidden_size,
      ("mlp", "embed"),
      dtype=cfg.compute_dtype,
      kernel_init=nn.initializers.normal(std * cfg.residual_init_scale),
      name="c_proj",
    )(h)  # [batch, length, embed]


class Gpt2Block(nn.Module):
  """One pre-LN decoder block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""

  config: Gpt2Config
  decode: bool = False  # Attention through the key/value cache (see MultiHeadAttention).

  @nn.compact
  def __call__(
    self,
    x: Array,
    mask: attention_lib.AttentionMask,
    bias: Array | None,
    positions: Array | None,
    deterministic: bool,
  ):
    cfg = self.config
    dropout = layers.Dropout(cfg.dropout_rate)

    h = layers.LayerNorm(cfg.layer_norm_eps, name="ln_1")(x)
    init = layers.default_init(cfg.initializer_range)
    h = attention_lib.MultiHeadAttention(
      num_heads=cfg.num_heads,
      head_dim=cfg.head_dim,
      config=cfg.attention,
      dtype=cfg.compute_dtype,
      dropout_rate=cfg.attention_dropout_rate,
      kernel_init=init,
      out_init=layers.scaled_init(init, cfg.residual_init_scale),  # A residual projection.
      name="attn",
    )(h, mask=mask, bias=bias, positions=positions, deterministic=deterministic, decode=self.decode)
    x = x + dropout(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

    h = layers.LayerNorm(cfg.layer_norm_eps, name="ln_2")(x)
    h = Gpt2Mlp(cfg, name="mlp")(h)
    x = x + dropout(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    return (x, None) if cfg.scan_layers else x


class Gpt2LMHeadModel(nn.Module):
  """Token ids -> next-token logits, float32 `[batch, length, vocab]` (or, with return_hidden,
  the final hidden states `[batch, length, embed]` that the tied head wte/embedding reads)."""

  config: Gpt2Config

  @nn.compact
  def __call__(
    self,
    input_ids: Array,  # int32 [batch, length]
    positions: Array | None = None,  # int32 [batch, length]; None: 0, 1, ..., length - 1
    segment_ids: Array | None = None,  # int32 [batch, length]; 1, 2, ... per document, 0 = padding
    deterministic: bool = True,
    decode: bool = False,  # Continue the sequence in the 'cache' collection (see `decode_positions`).
    return_hidden: bool = False,  # ln_f's output instead of logits (for a chunked loss).
  ) -> Array:
    cfg = self.config
    position = cfg.attention.position
    length = input_ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise PretrainError(
        f"sequence length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}"
      )
    kv_positions = positions
    if decode:  # Absolute positions: the tokens continue those already in the cache.
      decoded, kv_positions = attention_lib.decode_positions(self, length)
      positions = decoded if positions is None else positions
    init = nn.initializers.normal(cfg.initializer_range)
    wte = layers.Embed(
      cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg.compute_dtype, init, name="wte"
    )

    x = wte(input_ids)  # [batch, length, embed]
    if position == "learned":
      wpe = layers.Embed(
        cfg.max_position_embeddings,
        cfg.hidden_size,
        ("position", "embed"),
        embedding_init=init,
        name="wpe",
      )
      x = x + (wpe.embedding[None, :length] if positions is None else wpe(positions))
    elif position == "sinusoidal":
      ids = positions_lib.default_positions(length) if positions is None else positions
      x = x + positions_lib.sinusoidal_embedding(ids, cfg.hidden_size)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    x = layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    # Causal within each document; padding (segment 0) attends only to padding.
    mask = attention_lib.AttentionMask(causal=True, segment_ids=segment_ids)
    bias = None
    if position == "relative_bias":
      bias = cfg.attention.relative_position_bias(
        num_heads=cfg.num_heads, bidirectional=False, name="relative_attention_bias"
      )(length, length, q_positions=positions, kv_positions=kv_positions)
    x = self.blocks(x, mask, bias, positions, deterministic, decode)
    x = layers.LayerNorm(cfg.layer_norm_eps, name="ln_f")(x)
    if return_hidden:
      return x
    logits = wte.attend(x)  # [batch, length, vocab] float32
    return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))

  def blocks(
    self,
    x: Array,
    mask: attention_lib.AttentionMask,
    bias: Array | None,
    positions: Array | None,
    deterministic: bool,
    decode: bool = False,
  ) -> Array:
    """The num_layers blocks, unrolled (h_0, h_1, ...) or scanned (h, stacked on a layers axis)."""
    cfg = self.config
    return stack.layer_stack(
      Gpt2Block,
      cfg,
      x,
      mask,
      bias,
      positions,
      num_layers=cfg.num_layers,
      deterministic=deterministic,
      scanned_name="h",
      unrolled_name="h_{}",
      decode=decode,
    )


def init_inputs(batch: int, seq_len: int) -> dict[str, np.ndarray]:
  """Dummy int32 model inputs, e.g. for `model.init(rng, **init_inputs(...))` or eval_shape."""
  return {
    "input_ids": np.zeros((batch, seq_len), np.int32),
    "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)),
    "segment_ids": np.ones((batch, seq_len), np.int32),
  }


def abstract_params(config: Gpt2Config, seq_len: int = 8):
  """The boxed (logically annotated) parameter tree as ShapeDtypeStructs; allocates nothing."""
  return stack.abstract_params(Gpt2LMHeadModel(config), init_inputs(1, seq_len))


def count_params(config: Gpt2Config) -> int:
  """Number of parameters (the LM head is the tied wte, counted once)."""
  return stack.count_params(abstract_params(config))


def forward_flops_per_sequence(config: Gpt2Config, seq_len: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass over one sequence.

  Attention counts the full seq_len x seq_len score matrix, not the causal
  half, as the usual MFU accounting does.
  """
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
  attn_features, kv_features = config.attention_features
  per_layer = stack.attention_flops(
    h, attn_features, kv_features, seq_len, seq_len
  ) + stack.dense_flops(seq_len, h, i, 2)  # MLP
  lm_head = stack.dense_flops(seq_len, h, v)  # tied wte at every position
  return float(config.num_layers * per_layer + lm_head)
