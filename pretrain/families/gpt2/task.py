"""GPT-2 pretraining: causal language modelling (Radford et al. 2019).

Config sections read here:
  task.name = 'gpt2'
  model     the fields of pretrain.families.gpt2.model.Gpt2Config (vocab_size 0: the tokenizer's)
  data      max_seq_length (the context, L) and packing (see pretrain/families/gpt2/examples.py)
pretrain.families.gpt2.config.gpt2_config() gives all of them with GPT-2 small's
shape and the usual recipe; configs/gpt2_*.py override it.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.families.gpt2 import model as gpt2_model
from pretrain.families.gpt2.examples import FIELDS, CausalExampleConfig, CausalExamples
from pretrain.models import stack
from pretrain.objectives.losses import chunked_cross_entropy, cross_entropy


class Gpt2Task(base.Task):
  """Next-token prediction over chunked or packed document streams."""

  name = "gpt2"
  sampling = base.DECODER_ONLY
  layer_stacks = {"h": "h"}
  resumable_fields = base.RESUMABLE_FIELDS | {"model.loss_chunk_size"}

  def __init__(self, config, tokenizer):
    vocab = base.tokenizer_vocab_size(
      config,
      tokenizer,
      fix="set model.vocab_size=0 to follow the tokenizer, or tokenizer.vocab_size to match",
    )
    self.model_config = base.model_config(gpt2_model.Gpt2Config, config, vocab)
    d = config.data
    self.example_config = CausalExampleConfig(
      seq_len=d.max_seq_length, packing=d.get("packing", False)
    )
    if d.max_seq_length > self.model_config.max_position_embeddings:
      raise PretrainError(
        f"data.max_seq_length={d.max_seq_length} exceeds model.max_position_embeddings="
        f"{self.model_config.max_position_embeddings}"
      )
    self.vocab_size = vocab
    self.special = tokenizer.special
    self.seq_len = d.max_seq_length

  # --- data ---------------------------------------------------------------

  def examples(self, docs, seed: int) -> CausalExamples:
    return CausalExamples(docs, self.example_config, self.vocab_size, seed, special=self.special)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros of every batch field's shape and dtype (for init and compilation)."""
    shape = [batch_size, self.seq_len]
    return {k: np.zeros(shape, np.float32 if k == "loss_weights" else np.int32) for k in FIELDS}

  @property
  def tokens_per_example(self) -> int:
    return self.seq_len

  @property
  def min_shard(self) -> tuple[int, int]:
    """(documents, tokens) a shard needs for examples: a chunked stream at least one window long."""
    return 1, (1 if self.example_config.packing else self.seq_len)

  # --- model, loss, metrics -------------------------------------------------

  def build_model(self):
    return gpt2_model.Gpt2LMHeadModel(self.model_config)

  def init_args(self, batch):
    return (batch["input_ids"], batch["positions"], batch["segment_ids"])

  def denominators(self, batch) -> dict:
    """Normalisers over the whole (global) batch, so microbatch gradients sum to the batch gradient."""
    return {"tokens": jnp.maximum(jnp.sum(batch["loss_weights"]), 1.0)}

  def loss(self, model, params, batch, denominators, *, dropout_rng=None, deterministic=True):
    """(objective, metric sums) for a (micro)batch; objectives of microbatches add up."""
    rngs = None if deterministic else {"dropout": dropout_rng}
    chunk_size = self.model_config.loss_chunk_size
    out = model.apply(
      {"params": params},
      *self.init_args(batch),
      deterministic=deterministic,
      rngs=rngs,
      return_hidden=chunk_size > 0,
    )  # [B, L, V] logits, or [B, L, E] hidden states with chunk_size
    targets, w = batch["target_ids"], batch["loss_weights"]
    if chunk_size:  # The tied head's logits a chunk at a time (argmax for accuracy there too).
      nll, correct, _ = chunked_cross_entropy(
        out,
        params["wte"]["embedding"],
        targets,
        chunk_size=chunk_size,
        dtype=self.model_config.compute_dtype,
      )
    else:
      nll, correct, _ = cross_entropy(out, targets)  # [B, L]
    loss_sum = jnp.sum(nll * w)
    sums = {"loss_sum": loss_sum, "correct_sum": jnp.sum(correct * w), "weight_sum": jnp.sum(w)}
    return loss_sum / denominators["tokens"], sums

  @staticmethod
  def finalize(sums) -> dict:
    """Metric values from summed counts (works on jax or numpy scalars)."""
    weight = jnp.maximum(sums["weight_sum"], 1.0)
    loss = sums["loss_sum"] / weight
    return {"loss": loss, "accuracy": sums["correct_sum"] / weight, "perplexity": jnp.exp(loss)}

  def train_flops_per_example(self, *, skip_masked_attention: bool = False) -> float:
    """Model FLOPs of forward + backward for one sequence (backward = 2x forward).

    skip_masked_attention: leave out the attention matmuls on the query-key
    pairs the causal mask (and a sliding window) hides (what an ablation's FLOP
    budget counts); False counts the full score matrix, as MFU does.
    """
    mc = self.model_config
    forward = gpt2_model.forward_flops_per_sequence(mc, self.seq_len)
    if skip_masked_attention:
      forward -= mc.num_layers * stack.masked_attention_flops(
        mc.attention_features[0],
        self.seq_len,
        self.seq_len,
        causal=True,
        window=mc.attention.sliding_window,
      )
    return 3.0 * forward

  def describe(self) -> dict:
    return {
      "model": dataclasses.asdict(self.model_config),
      "examples": dataclasses.asdict(self.example_config),
    }

  def generation_prompt(self, ids: list[int]) -> list[int]:
    """End-of-text, then the prompt: every training document follows an end-of-text token."""
    return [self.special.eos] + list(ids)
