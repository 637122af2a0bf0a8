"""T5's part of the benchmark (pretrain/bench/reference.py): HF's T5ForConditionalGeneration of the same
shape, with T5 v1.1's gated GELU and untied head."""

import numpy as np

from pretrain.bench.reference import long_tensor

# Span corruption fills inputs and targets (at data.targets_length=0, the length it makes).
FULL_LENGTH_DATA = {}


def tokenizer_vocab(config) -> int:
  """The tokenizer's pieces: the model's vocabulary adds the sentinels above them (and rounds up)."""
  return int(config.tokenizer.vocab_size)


def describe(task, batch_size: int) -> str:
  m = task.model_config
  return (
    f"T5 v1.1 d_model {m.hidden_size} d_ff {m.intermediate_size} heads {m.num_heads}x{m.head_dim} "
    f"layers {m.num_layers}+{m.num_decoder_layers} vocab {m.vocab_size}, "
    f"batch {batch_size} x (inputs {task.inputs_length} + targets {task.targets_length})"
  )


def ffn_dims(task) -> tuple[int, int]:
  return task.model_config.hidden_size, task.model_config.intermediate_size


def build(transformers, task, b: dict):
  import torch  # pylint: disable=g-import-not-at-top

  m = task.model_config
  hf_config = transformers.T5Config(
    vocab_size=m.vocab_size,
    d_model=m.hidden_size,
    d_kv=m.head_dim,
    d_ff=m.intermediate_size,
    num_layers=m.num_layers,
    num_decoder_layers=m.num_decoder_layers,
    num_heads=m.num_heads,
    relative_attention_num_buckets=m.attention.relative_num_buckets,
    relative_attention_max_distance=m.attention.relative_max_distance,
    dropout_rate=m.dropout_rate,
    layer_norm_epsilon=m.layer_norm_eps,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    pad_token_id=0,
    decoder_start_token_id=0,
  )
  labels = np.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100)
  inputs = {
    "input_ids": long_tensor(b["encoder_input_tokens"]),
    "attention_mask": long_tensor(b["encoder_input_mask"]),
    "decoder_input_ids": long_tensor(b["decoder_input_tokens"]),
    "labels": long_tensor(labels),
  }
  model = transformers.T5ForConditionalGeneration(hf_config)
  if (
    model.lm_head.weight is model.shared.weight
  ):  # transformers 5 ties it despite tie_word_embeddings=False.
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
  return model, inputs


def flops_per_example(task) -> float:
  return task.train_flops_per_example()


def notes(task) -> list[str]:
  del task
  return ["the project's loss adds z-loss (logsumexp squared); HF's is cross entropy alone."]
