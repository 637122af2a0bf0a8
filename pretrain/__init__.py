"""pretrain: Transformer language-model pretraining in JAX/Flax."""

from pretrain import host_allocator

host_allocator.apply()  # Before jax creates its CPU client; see the module.
