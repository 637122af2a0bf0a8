"""Micro configs of every family, small enough that a compile for a TPU or GPU target takes seconds."""

import importlib.util
import os

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAMILIES = ("bert", "roberta", "gpt2", "t5")


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(f"plan_test_{name}", f"{_REPO}/configs/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def micro_config(family: str, **model):
  """configs/<family>_tiny.py at hidden size 64, one or two layers, 32 tokens, batch 8, 256 pieces."""
  c = load_config(f"{family}_tiny")
  c.tokenizer.vocab_size = 256
  shape = dict(hidden_size=64, num_heads=2, intermediate_size=128, num_layers=1)
  if family == "t5":
    shape.update(head_dim=32, num_layers=1, num_decoder_layers=1)
    c.data.update(inputs_length=32)
  else:
    shape.update(max_position_embeddings=64)
    c.data.max_seq_length = 32
    if family != "gpt2":
      c.data.max_predictions_per_seq = 4
  c.model.update(shape, **model)
  c.train.update(steps=10, batch_size=8)
  c.optimizer.warmup_steps = 1
  c.eval.every_steps = 0
  return c
