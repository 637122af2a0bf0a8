"""Toy model: each token's embedding -> logits of the next token (a bigram LM)."""

import flax.linen as nn


class Bigram(nn.Module):
  vocab_size: int
  hidden_size: int

  @nn.compact
  def __call__(self, ids, deterministic: bool = True):
    del deterministic
    x = nn.Embed(self.vocab_size, self.hidden_size, name="embed")(ids)
    return nn.Dense(self.vocab_size, name="out")(x)  # [batch, length, vocab]
