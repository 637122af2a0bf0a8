"""Token-level cross entropy, the one loss every family's objective is made of."""

import jax
import jax.numpy as jnp


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
