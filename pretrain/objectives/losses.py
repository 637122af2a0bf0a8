"""Token-level cross entropy, the one loss every family's objective is made of.

`cross_entropy` reads logits; `chunked_cross_entropy` takes the hidden states and the output
projection instead, and computes the logits a chunk of tokens at a time, so the [tokens, vocab]
logits (and their gradient) never exist for the whole batch at once: the lever for large
vocabularies (GPT-2's 50,257, T5's 32,128), where they are the step's largest tensors.
"""

import math

import jax
import jax.numpy as jnp

from pretrain.errors import PretrainError
from pretrain.models import layers


def cross_entropy(logits, labels) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(nll, correct, log_z), each float32 [...], of logits [..., vocab] and int labels [...].

  nll = log Z - logit[label] (log Z: the logsumexp over the vocabulary, computed in float32);
  correct is 1.0 where the argmax is the label; log_z is returned for a z-loss (log Z)**2.
  """
  logits = jnp.asarray(logits).astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  nll = log_z - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return nll, correct, log_z


def chunked_cross_entropy(
  hidden,
  kernel,
  labels,
  *,
  chunk_size: int,
  vocab_axis: int = 0,
  bias=None,
  dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """cross_entropy(logits, labels) of logits = hidden @ kernel (+ bias), chunk_size tokens at a time.

  hidden [..., embed]; kernel [vocab, embed] (vocab_axis 0: a tied embedding table, as
  layers.Embed.attend reads it) or [embed, vocab] (vocab_axis 1: an untied Dense head's kernel);
  bias [vocab] or None; dtype the projection's compute dtype (float32 accumulation, as
  layers.matmul). A lax.map over chunks with a checkpointed body: the forward keeps each chunk's
  inputs only, and the backward recomputes that chunk's logits, so no more than one chunk's
  [chunk_size, vocab] logits and gradient are alive at a time. The tokens are padded to a
  multiple of chunk_size (the padding is dropped from the results).
  """
  if chunk_size < 1:
    raise PretrainError(f"chunk_size must be at least 1, got {chunk_size}")
  if vocab_axis not in (0, 1):
    raise PretrainError(
      f"vocab_axis must be 0 ([vocab, embed]) or 1 ([embed, vocab]), got {vocab_axis}"
    )
  *lead, embed = hidden.shape
  tokens = math.prod(lead)
  chunks = -(-tokens // chunk_size)
  pad = chunks * chunk_size - tokens
  x = jnp.pad(hidden.reshape(tokens, embed), ((0, pad), (0, 0))).reshape(chunks, chunk_size, embed)
  y = jnp.pad(labels.reshape(tokens), (0, pad)).reshape(chunks, chunk_size)

  @jax.checkpoint
  def one_chunk(x_chunk, y_chunk):
    logits = layers.matmul(x_chunk, kernel, (1, 1 - vocab_axis), dtype)  # [chunk, vocab] float32
    if bias is not None:
      logits = logits + bias
    return cross_entropy(logits, y_chunk)

  results = jax.lax.map(lambda xy: one_chunk(*xy), (x, y))
  return tuple(r.reshape(-1)[:tokens].reshape(labels.shape) for r in results)
