"""Toy task: next-token prediction with a bigram model, on the shared data path and the shared loss."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from pretrain.families import base
from pretrain.objectives.losses import cross_entropy

from toy_family import examples  # pylint: disable=import-error  # The test puts tests/families on sys.path.
from toy_family import model as toy_model  # pylint: disable=import-error


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  vocab_size: int
  hidden_size: int
  seq_len: int


class ToyTask(base.Task):
  """A bigram LM over windows of the corpus."""

  name = "toy"

  def __init__(self, config, tokenizer):
    self.config = ToyConfig(
      vocab_size=tokenizer.vocab_size,
      hidden_size=int(config.model.hidden_size),
      seq_len=int(config.data.max_seq_length),
    )
    self.special = tokenizer.special

  def examples(self, docs, seed: int) -> examples.Windows:
    return examples.Windows(docs, self.config.seq_len, seed, self.special.eos)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    shape = [batch_size, self.config.seq_len]
    return {"input_ids": np.zeros(shape, np.int32), "target_ids": np.zeros(shape, np.int32)}

  @property
  def tokens_per_example(self) -> int:
    return self.config.seq_len

  def build_model(self):
    return toy_model.Bigram(self.config.vocab_size, self.config.hidden_size)

  def init_args(self, batch):
    return (batch["input_ids"],)

  def denominators(self, batch) -> dict:
    return {"tokens": jnp.asarray(batch["input_ids"].size, jnp.float32)}

  def loss(self, model, params, batch, denominators, *, dropout_rng=None, deterministic=True):
    del dropout_rng
    logits = model.apply({"params": params}, *self.init_args(batch), deterministic=deterministic)
    nll, correct, _ = cross_entropy(logits, batch["target_ids"])
    sums = {
      "loss_sum": jnp.sum(nll),
      "correct_sum": jnp.sum(correct),
      "count": jnp.asarray(nll.size, jnp.float32),
    }
    return sums["loss_sum"] / denominators["tokens"], sums

  @staticmethod
  def finalize(sums) -> dict:
    return {
      "loss": sums["loss_sum"] / sums["count"],
      "accuracy": sums["correct_sum"] / sums["count"],
    }

  def train_flops_per_example(self) -> float:
    return 3.0 * 2.0 * self.config.seq_len * self.config.hidden_size * self.config.vocab_size

  def describe(self) -> dict:
    return {"model": dataclasses.asdict(self.config)}
