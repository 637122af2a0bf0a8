"""T5 v1.1 pretraining: span corruption on an encoder-decoder (Raffel et al. 2020).

Examples. The corpus's tokens, all documents concatenated without separators
(as T5's reduce_concat_tokens does), are read as a circular stream cut into
raw chunks of `tokens_length` tokens, the length `random_spans_helper` derives
from `data.inputs_length` (512 -> 568 raw tokens, 114 target tokens). Each
epoch starts the cuts at its own random offset and visits the chunks in its
own random order (both seeded by (seed, epoch)); an epoch has
`num_tokens // tokens_length` chunks, and the one crossing the stream's end
wraps to its start. Global index i reads epoch i // N, slot i % N; the noise
mask is keyed by (seed, i). So an example depends only on (corpus, seed, i).
A batch reads its raw chunks in one `Documents.take`.

Special ids come from the tokenizer (`special.pad`, `special.eos`). The
project's sentencepiece tokenizer has [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
[MASK]=4 and no sentinels: [PAD] is T5's padding and decoder start id; [SEP]
is the EOS that ends inputs and targets; `task.extra_ids` sentinel ids sit
right above the tokenizer's pieces, counted down from the top as T5 does:
sentinel k = tokenizer.vocab_size + extra_ids - 1 - k. T5's own tokenizer.json
(<pad>=0, </s>=1, <extra_id_k> = 32099 - k) brings its sentinels, which are
used instead of task.extra_ids. `model.vocab_size=0` takes tokenizer pieces
+ extra ids rounded up to a multiple of 128 (T5: 32,000 + 100 -> 32,128); the
rows above the sentinels are never targets.

Fields of a batch (static shapes):
  encoder_input_tokens   int32 [B, inputs_length]   corrupted text, sentinels, EOS, [PAD]...
  encoder_input_mask     int32 [B, inputs_length]   1 = real token
  decoder_input_tokens   int32 [B, targets_length]  targets shifted right, starting with [PAD]
  decoder_target_tokens  int32 [B, targets_length]  sentinel, span, sentinel, span, ..., EOS
  decoder_loss_weights   float32 [B, targets_length]
The decoder needs no padding mask: padding only ever follows the targets, and
attention is causal.

Loss: token-level cross entropy averaged over the target tokens of the
global batch, plus z-loss (`task.z_loss` * log(Z)**2 per token; 1e-4 as in
t5x's T5.1.1 configs; 0 disables it). t5x sums over tokens instead
(loss_normalizing_factor None); Adafactor's steps do not depend on the loss's
scale, so the two train alike. Metrics: loss (with z-loss), cross_entropy,
z_loss, accuracy (argmax over target tokens).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from pretrain.data.epochs import Epochs
from pretrain.data.tokenized import Documents
from pretrain.data.special_tokens import project_special_tokens, SpecialTokens
from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.families.t5 import model as t5_model
from pretrain.models import stack
from pretrain.objectives import keyed_random
from pretrain.objectives import span_corruption
from pretrain.objectives.losses import cross_entropy

_VOCAB_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class T5ExampleConfig:
  inputs_length: int = 512
  targets_length: int = 0  # 0: as span corruption gives; larger pads; smaller is an error.
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0

  def __post_init__(self):
    made = self.span_lengths().targets_length
    if self.targets_length and self.targets_length < made:
      raise PretrainError(
        f"data.targets_length={self.targets_length} is shorter than the {made} target tokens span "
        f"corruption makes from inputs_length={self.inputs_length}; set it to 0 or >= {made}"
      )

  def span_lengths(self) -> span_corruption.SpanLengths:
    """Raw chunk, noise and output lengths (T5's random_spans_helper)."""
    return span_corruption.random_spans_helper(
      self.inputs_length, self.noise_density, self.mean_noise_span_length
    )

  @property
  def padded_targets_length(self) -> int:
    return self.targets_length or self.span_lengths().targets_length


class T5Examples:
  """Random access to an endless stream of span-corrupted examples: `self[i]` for any i >= 0."""

  def __init__(
    self,
    docs: Documents,
    cfg: T5ExampleConfig,
    first_sentinel: int,
    num_sentinels: int,
    seed: int,
    special: SpecialTokens | None = None,
  ):
    """`special`: the tokenizer's special ids (default: the project's sentencepiece layout)."""
    special = special or project_special_tokens(first_sentinel - num_sentinels + 1)
    special.require("T5", "pad", "eos")
    self.pad_id, self.eos_id = special.pad, special.eos  # T5's decoder start id is its pad id.
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise PretrainError(f"seed={seed!r} must be a non-negative integer")
    self.lengths = cfg.span_lengths()
    self.inputs_length = cfg.inputs_length
    self.targets_length = cfg.padded_targets_length
    if self.lengths.num_noise_spans > num_sentinels:
      raise PretrainError(
        f"an example has {self.lengths.num_noise_spans} noise spans but there are only {num_sentinels} "
        "sentinels (task.extra_ids)"
      )
    n = self.lengths.tokens_length
    if docs.num_tokens < n:
      raise PretrainError(f"the corpus has {docs.num_tokens} tokens; one T5 example needs {n}")
    lowest_sentinel = first_sentinel - num_sentinels + 1
    if docs.max_token_id >= lowest_sentinel:
      raise PretrainError(
        f"the corpus has token id {docs.max_token_id} >= the first sentinel id {lowest_sentinel}"
      )
    self.cfg = cfg
    self.seed = int(seed)
    self.first_sentinel = int(first_sentinel)
    self._docs = docs
    self.num_chunks = docs.num_tokens // n  # Examples per epoch.
    self._epochs = Epochs(self.num_chunks, self._plan)

  def _plan(self, epoch: int) -> tuple[int, np.ndarray]:
    """(offset of the first cut, slot -> chunk) of an epoch."""
    rng = np.random.default_rng([self.seed, epoch])
    offset = int(rng.integers(self.lengths.tokens_length))
    return offset, rng.permutation(self.num_chunks)

  def chunk_starts(self, indices: np.ndarray) -> np.ndarray:
    """int64 [B]: where in the token stream each example's raw chunk starts (it may wrap)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    starts = np.empty(idx.size, np.int64)
    for g in self._epochs.groups(idx):
      offset, order = g.plan
      starts[g.rows] = offset + order[g.slots] * self.lengths.tokens_length
    return starts % self._docs.num_tokens

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.batch(np.asarray([index], np.int64)).items()}

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples of `indices` stacked: each field [B, ...]; row b equals self[indices[b]]."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    b, n = idx.size, self.lengths.tokens_length
    starts = self.chunk_starts(idx)
    raw = self._docs.take(
      (starts[:, None] + np.arange(n)) % self._docs.num_tokens
    )  # [B, tokens_length]
    inputs, targets, _ = span_corruption.span_corrupt(
      raw,
      keyed_random.row_keys(self.seed, idx),
      self.lengths,
      first_sentinel=self.first_sentinel,
      eos_id=self.eos_id,
    )
    li, lt = inputs.shape[1], targets.shape[1]  # Static: the lengths the helper computed.
    encoder_tokens = np.full([b, self.inputs_length], self.pad_id, np.int32)
    encoder_tokens[:, :li] = inputs
    target_tokens = np.full([b, self.targets_length], self.pad_id, np.int32)
    target_tokens[:, :lt] = targets
    decoder_inputs = np.concatenate(
      [np.full([b, 1], self.pad_id, np.int32), target_tokens[:, :-1]], axis=1
    )
    return {
      "encoder_input_tokens": encoder_tokens,
      "encoder_input_mask": np.broadcast_to(
        (np.arange(self.inputs_length) < li).astype(np.int32), (b, self.inputs_length)
      ).copy(),
      "decoder_input_tokens": decoder_inputs,
      "decoder_target_tokens": target_tokens,
      "decoder_loss_weights": np.broadcast_to(
        (np.arange(self.targets_length) < lt).astype(np.float32), (b, self.targets_length)
      ).copy(),
    }


def model_vocab_size(tokenizer_vocab: int, extra_ids: int) -> int:
  """Tokenizer pieces + sentinels, rounded up to a multiple of 128 (T5: 32,000 + 100 -> 32,128)."""
  return -(-(tokenizer_vocab + extra_ids) // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE


class T5Task(base.Task):
  """Span corruption (noise density 0.15, mean span 3) on T5 v1.1."""

  name = "t5"
  sampling = base.ENCODER_DECODER
  layer_stacks = {"block": "block"}  # In the encoder and in the decoder.

  def __init__(self, config, tokenizer):
    extra_ids = int(config.task.extra_ids)
    if extra_ids < 1:
      raise PretrainError(
        f"task.extra_ids={extra_ids} must be >= 1 (span corruption needs sentinels)"
      )
    self.z_loss = float(config.task.z_loss)
    if self.z_loss < 0:
      raise PretrainError(f"task.z_loss={self.z_loss} must be >= 0")
    sentinels = tuple(tokenizer.sentinels)
    if sentinels:  # The vocabulary's own <extra_id_k>: T5 counts them down from the first.
      if sentinels != tuple(range(sentinels[0], sentinels[0] - len(sentinels), -1)):
        raise PretrainError(
          f"the tokenizer {tokenizer.path}'s sentinels <extra_id_0>, <extra_id_1>, ... must "
          f"have consecutive descending ids; they are {sentinels[:4]}..."
        )
      extra_ids = len(sentinels)
      needed = max(tokenizer.vocab_size, sentinels[0] + 1)
    else:
      needed = tokenizer.vocab_size + extra_ids
    vocab = int(config.model.vocab_size) or model_vocab_size(needed, 0)
    if vocab < needed:
      raise PretrainError(
        f"model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer.vocab_size} pieces + "
        f"{extra_ids} sentinels; set model.vocab_size=0 to size it automatically"
      )
    self.model_config = base.model_config(t5_model.T5Config, config, vocab)
    d = config.data
    self.example_config = T5ExampleConfig(
      inputs_length=int(d.inputs_length),
      targets_length=int(d.targets_length),
      noise_density=float(d.noise_density),
      mean_noise_span_length=float(d.mean_noise_span_length),
    )
    self.lengths = self.example_config.span_lengths()
    self.first_sentinel = sentinels[0] if sentinels else needed - 1
    self.num_sentinels = extra_ids
    self.special = tokenizer.special
    self.inputs_length = self.example_config.inputs_length
    self.targets_length = self.example_config.padded_targets_length

  # --- data ---------------------------------------------------------------

  def examples(self, docs, seed: int) -> T5Examples:
    return T5Examples(
      docs, self.example_config, self.first_sentinel, self.num_sentinels, seed, special=self.special
    )

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros of every batch field's shape and dtype (for init and compilation)."""
    li, lt = self.inputs_length, self.targets_length
    return {
      "encoder_input_tokens": np.zeros([batch_size, li], np.int32),
      "encoder_input_mask": np.zeros([batch_size, li], np.int32),
      "decoder_input_tokens": np.zeros([batch_size, lt], np.int32),
      "decoder_target_tokens": np.zeros([batch_size, lt], np.int32),
      "decoder_loss_weights": np.zeros([batch_size, lt], np.float32),
    }

  @property
  def tokens_per_example(self) -> int:
    return self.inputs_length + self.targets_length

  @property
  def min_shard(self) -> tuple[int, int]:
    """(documents, tokens) a shard needs for examples: one raw chunk."""
    return 1, self.lengths.tokens_length

  # --- model, loss, metrics -------------------------------------------------

  def build_model(self):
    return t5_model.T5Model(self.model_config)

  def init_args(self, batch):
    return (
      batch["encoder_input_tokens"],
      batch["encoder_input_mask"],
      batch["decoder_input_tokens"],
    )

  def denominators(self, batch) -> dict:
    """Target tokens of the whole (global) batch, so microbatch gradients sum to the batch gradient."""
    return {"tokens": jnp.maximum(jnp.sum(batch["decoder_loss_weights"]), 1.0)}

  def loss(self, model, params, batch, denominators, *, dropout_rng=None, deterministic=True):
    """(objective, metric sums) for a (micro)batch; objectives of microbatches add up."""
    rngs = None if deterministic else {"dropout": dropout_rng}
    logits = model.apply(
      {"params": params}, *self.init_args(batch), deterministic=deterministic, rngs=rngs
    )  # [batch, targets_length, vocab] float32
    labels, w = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    nll, correct, log_z = cross_entropy(logits, labels)  # [batch, targets_length]
    z_loss = self.z_loss * jnp.square(log_z)
    nll_sum, z_sum = jnp.sum(nll * w), jnp.sum(z_loss * w)
    objective = (nll_sum + z_sum) / denominators["tokens"]
    sums = {
      "cross_entropy": nll_sum,
      "z_loss": z_sum,
      "correct": jnp.sum(correct * w),
      "weight": jnp.sum(w),
    }
    return objective, sums

  @staticmethod
  def finalize(sums) -> dict:
    """Metric values from summed counts (works on jax or numpy scalars); loss includes the z-loss."""
    w = sums["weight"] + 1e-5
    return {
      "loss": (sums["cross_entropy"] + sums["z_loss"]) / w,
      "cross_entropy": sums["cross_entropy"] / w,
      "z_loss": sums["z_loss"] / w,
      "accuracy": sums["correct"] / w,
    }

  def train_flops_per_example(self, *, skip_masked_attention: bool = False) -> float:
    """Model FLOPs of forward + backward for one example (backward = 2x forward).

    skip_masked_attention: leave out the attention matmuls on the query-key
    pairs the decoder's causal mask and a sliding window (self-attention only)
    hide (what an ablation's FLOP budget counts); False counts the full score
    matrices, as MFU does.
    """
    mc, li, lt = self.model_config, self.inputs_length, self.targets_length
    forward = t5_model.forward_flops_per_example(mc, li, lt)
    if skip_masked_attention:
      q_features, window = mc.attention_features[0], mc.attention.sliding_window
      forward -= mc.num_layers * stack.masked_attention_flops(q_features, li, li, window=window)
      forward -= mc.num_decoder_layers * stack.masked_attention_flops(
        q_features, lt, lt, causal=True, window=window
      )
    return 3.0 * forward

  def describe(self) -> dict:
    return {
      "model": dataclasses.asdict(self.model_config),
      "examples": dataclasses.asdict(self.example_config),
      "span_lengths": dataclasses.asdict(self.lengths),
      "first_sentinel": self.first_sentinel,
      "eos_id": self.special.eos,
    }

  def generation_options(self) -> dict:
    """The prompt is encoded with EOS after it; decoding starts from the pad id, as in training."""
    return {
      "max_input_length": self.inputs_length,
      "max_target_length": self.targets_length,
      "eos_id": self.special.eos,
      "decoder_start_id": self.special.pad,
    }
