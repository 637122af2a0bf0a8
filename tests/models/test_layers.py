"""Building blocks: dropout's rate and scaling."""

import jax
import jax.numpy as jnp
import numpy as np

from pretrain.models import layers


def test_dropout_rate_and_scaling():
  x = jnp.ones((256, 1023))  # odd last dim exercises the two-per-word packing
  y = np.asarray(jax.jit(lambda k: layers.dropout(x, 0.1, k))(jax.random.key(0)))
  dropped = (y == 0).mean()
  assert abs(dropped - 0.1) < 0.005
  np.testing.assert_allclose(y[y != 0], 1 / (1 - 6554 / 65536), rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.01
