"""pretrain: Transformer language-model pretraining in JAX/Flax."""
