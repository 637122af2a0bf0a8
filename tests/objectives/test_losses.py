"""objectives.losses.cross_entropy against a float64 reference."""

import jax.numpy as jnp
import numpy as np

from pretrain.objectives import losses


def test_cross_entropy_is_log_softmax_at_the_label():
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 3.0, (2, 5, 11)).astype(np.float32)
  labels = rng.integers(0, 11, (2, 5))
  nll, correct, log_z = losses.cross_entropy(
    jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), labels
  )
  x = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
  want_z = np.log(np.exp(x).sum(-1))
  np.testing.assert_allclose(log_z, want_z, rtol=1e-6)
  np.testing.assert_allclose(
    nll, want_z - np.take_along_axis(x, labels[..., None], -1)[..., 0], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_array_equal(correct, (x.argmax(-1) == labels).astype(np.float32))
  assert nll.dtype == correct.dtype == log_z.dtype == jnp.float32
  # bfloat16 logits are read in float32.
  nll16, _, _ = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
  np.testing.assert_array_equal(nll16, nll)
