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
1/sqrt(2 * num_layers). MultiHeadAttention draws its four projections from one
initializer (normal truncated at 2 sigma), so `init` scales attn/out after it
is drawn.

Packed sequences: `segment_ids` (1, 2, ... per document, 0 = padding) keep
attention inside a document, and `positions` restart at 0 in each one.
"""
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.models import layers
from pretrain.models.bert import DTYPES, REMAT_POLICIES, remat_policy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Gpt2Config:
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
  dtype: str = 'float32'  # Matmul compute dtype; params are always float32.
  scan_layers: bool = False
  remat_policy: str = 'none'
  attention_backend: str = 'xla'

  def __post_init__(self):
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
                 'max_position_embeddings'):
      if getattr(self, name) < 1:
        raise PretrainError(f'{name}={getattr(self, name)} must be positive')
    if self.hidden_size % self.num_heads:
      raise PretrainError(f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}')
    if self.dtype not in DTYPES:
      raise PretrainError(f'unknown dtype {self.dtype!r}; valid: {", ".join(DTYPES)}')
    if self.remat_policy not in REMAT_POLICIES:
      raise PretrainError(f'unknown remat_policy {self.remat_policy!r}; valid: {", ".join(REMAT_POLICIES)}')
    attention.check_backend(self.attention_backend)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def residual_init_scale(self) -> float:
    """GPT-2 scales the weights of the 2 * num_layers residual projections by 1/sqrt(2 * num_layers)."""
    return 1.0 / math.sqrt(2 * self.num_layers)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'Gpt2Config':
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise PretrainError(f'unknown Gpt2Config keys: {", ".join(unknown)}; valid: {", ".join(sorted(names))}')
    return cls(**d)


def gelu(x: Array) -> Array:
  """GPT-2's GELU, the tanh approximation."""
  return jax.nn.gelu(x, approximate=True)


def causal_mask(segment_ids: Array | None, length: int) -> Array:
  """Boolean `[batch or 1, 1, q_length, kv_length]`: may attend to earlier positions of the same segment.

  Padding is segment 0, so same-segment already keeps every real token off the
  padding; padding rows attend among themselves, so no row is all False (a
  fully masked row can give NaN in fused kernels).
  """
  mask = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]  # [1, 1, q, kv]
  if segment_ids is None:
    return mask
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # [batch, q, kv]
  return mask & same_segment[:, None]


class Gpt2Mlp(nn.Module):
  config: Gpt2Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    std = cfg.initializer_range
    h = layers.Dense(cfg.intermediate_size, ('embed', 'mlp'), dtype=cfg.compute_dtype,
                     kernel_init=nn.initializers.normal(std), name='c_fc')(x)  # [batch, length, mlp]
    h = nn.with_logical_constraint(gelu(h), ('act_batch', 'act_length', 'act_mlp'))
    return layers.Dense(cfg.hidden_size, ('mlp', 'embed'), dtype=cfg.compute_dtype,
                        kernel_init=nn.initializers.normal(std * cfg.residual_init_scale),
                        name='c_proj')(h)  # [batch, length, embed]


class Gpt2Block(nn.Module):
  """One pre-LN decoder block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""
  config: Gpt2Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool):
    cfg = self.config
    dropout = layers.Dropout(cfg.dropout_rate)

    h = layers.LayerNorm(cfg.layer_norm_eps, name='ln_1')(x)
    h = attention.MultiHeadAttention(
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        dtype=cfg.compute_dtype,
        dropout_rate=cfg.attention_dropout_rate,
        backend=cfg.attention_backend,
        initializer_range=cfg.initializer_range,
        name='attn',
    )(h, mask=mask, deterministic=deterministic)
    x = x + dropout(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))

    h = layers.LayerNorm(cfg.layer_norm_eps, name='ln_2')(x)
    h = Gpt2Mlp(cfg, name='mlp')(h)
    x = x + dropout(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))
    return (x, None) if cfg.scan_layers else x


def _scale_attention_out(variables, factor: float):
  """variables with every attn/out kernel multiplied by factor (boxed or not)."""
  def scale(path, leaf):
    names = [getattr(k, 'key', None) for k in path]
    if names[-3:] != ['attn', 'out', 'kernel']:
      return leaf
    if isinstance(leaf, nn.Partitioned):
      return leaf.replace_boxed(leaf.unbox() * factor)
    return leaf * factor

  return jax.tree_util.tree_map_with_path(scale, variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))


class Gpt2LMHeadModel(nn.Module):
  """Token ids -> next-token logits, float32 `[batch, length, vocab]`."""
  config: Gpt2Config

  @nn.nowrap
  def init(self, rngs, *args, **kwargs):
    """flax's init, then GPT-2's residual scaling of the attention output projections.

    (A draw from the truncated normal scaled afterwards has the same
    distribution as one drawn at the scaled standard deviation.)
    """
    variables = super().init(rngs, *args, **kwargs)
    return _scale_attention_out(variables, self.config.residual_init_scale)

  @nn.compact
  def __call__(
      self,
      input_ids: Array,  # int32 [batch, length]
      positions: Array | None = None,  # int32 [batch, length]; None: 0, 1, ..., length - 1
      segment_ids: Array | None = None,  # int32 [batch, length]; 1, 2, ... per document, 0 = padding
      deterministic: bool = True,
  ) -> Array:
    cfg = self.config
    length = input_ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise PretrainError(
          f'sequence length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}')
    init = nn.initializers.normal(cfg.initializer_range)
    wte = layers.Embed(cfg.vocab_size, cfg.hidden_size, ('vocab', 'embed'), cfg.compute_dtype, init, name='wte')
    wpe = layers.Embed(cfg.max_position_embeddings, cfg.hidden_size, ('position', 'embed'),
                       embedding_init=init, name='wpe')

    x = wte(input_ids)  # [batch, length, embed]
    if positions is None:
      x = x + wpe.embedding[None, :length]
    else:
      x = x + wpe(positions)
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_embed'))
    x = layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    x = self.blocks(x, causal_mask(segment_ids, length), deterministic)
    x = layers.LayerNorm(cfg.layer_norm_eps, name='ln_f')(x)
    logits = wte.attend(x)  # [batch, length, vocab] float32
    return nn.with_logical_constraint(logits, ('act_batch', 'act_length', 'act_vocab'))

  def blocks(self, x: Array, mask: Array, deterministic: bool) -> Array:
    """The num_layers blocks, unrolled (h_0, h_1, ...) or scanned (h, stacked on a layers axis)."""
    cfg = self.config
    block_cls = Gpt2Block
    if cfg.remat_policy != 'none':
      # deterministic (argument 3, counting self) picks the dropout branch at trace time.
      block_cls = nn.remat(block_cls, policy=remat_policy(cfg.remat_policy),
                           prevent_cse=not cfg.scan_layers, static_argnums=(3,))
    if cfg.scan_layers:
      block_cls = nn.scan(
          block_cls,
          variable_axes={'params': 0},
          split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'},
      )
      x, _ = block_cls(cfg, name='h')(x, mask, deterministic)
      return x
    for i in range(cfg.num_layers):
      x = block_cls(cfg, name=f'h_{i}')(x, mask, deterministic)
    return x


def init_inputs(batch: int, seq_len: int) -> dict[str, np.ndarray]:
  """Dummy int32 model inputs, e.g. for `model.init(rng, **init_inputs(...))` or eval_shape."""
  return {
      'input_ids': np.zeros((batch, seq_len), np.int32),
      'positions': np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)),
      'segment_ids': np.ones((batch, seq_len), np.int32),
  }


def abstract_params(config: Gpt2Config, seq_len: int = 8):
  """The boxed (logically annotated) parameter tree as ShapeDtypeStructs; allocates nothing."""
  model = Gpt2LMHeadModel(config)
  init = functools.partial(model.init, **init_inputs(1, seq_len))
  return jax.eval_shape(init, jax.random.key(0))['params']


def count_params(config: Gpt2Config) -> int:
  """Number of parameters (the LM head is the tied wte, counted once)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract_params(config))))


def forward_flops_per_sequence(config: Gpt2Config, seq_len: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass over one sequence.

  Attention counts the full seq_len x seq_len score matrix, not the causal
  half, as the usual MFU accounting does.
  """
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
  attn_features = config.num_heads * config.head_dim
  per_layer = (
      2 * seq_len * h * attn_features * 4  # q, k, v, out projections
      + 2 * seq_len * seq_len * attn_features * 2  # q k^T and probs v
      + 2 * seq_len * h * i * 2  # MLP
  )
  lm_head = 2 * seq_len * h * v  # tied wte at every position
  return float(config.num_layers * per_layer + lm_head)
