"""BERT's part of the benchmark (pretrain/bench/reference.py): HF's BertForPreTraining of the same shape."""

import numpy as np

from pretrain.bench import reference
from pretrain.families.bert import model as bert_model

# One sentence per synthetic document and no short targets: [CLS] A [SEP] B [SEP] fills every position;
# masked_lm_prob 1 fills every prediction slot (max_predictions_per_seq caps it).
FULL_LENGTH_DATA = {"short_seq_prob": 0.0, "masked_lm_prob": 1.0}
tokenizer_vocab = reference.tokenizer_vocab
ffn_dims = reference.ffn_dims


def describe(task, batch_size: int) -> str:
  shape = reference.layers_shape(task.model_config, batch_size, task.seq_len)
  return f"BERT {shape}, {task.num_predictions} predictions"


def mlm_labels(b: dict) -> np.ndarray:
  """int64 [batch, seq_len]: the masked tokens' ids at their positions, -100 (HF's ignore index) elsewhere.

  Only the prediction slots of weight > 0: an unused slot (position 0, id 0) would otherwise label
  [CLS] with id 0.
  """
  labels = np.full(b["input_ids"].shape, -100, np.int64)
  rows, slots = np.nonzero(b["masked_lm_weights"] > 0)
  labels[rows, b["masked_lm_positions"][rows, slots]] = b["masked_lm_ids"][rows, slots]
  return labels


def hf_config_fields(m: bert_model.BertConfig) -> dict:
  """The keyword arguments of HF's BertConfig (and RobertaConfig) for the project's BertConfig."""
  return dict(
    vocab_size=m.vocab_size,
    hidden_size=m.hidden_size,
    num_hidden_layers=m.num_layers,
    num_attention_heads=m.num_heads,
    intermediate_size=m.intermediate_size,
    hidden_act="gelu",
    hidden_dropout_prob=m.dropout_rate,
    attention_probs_dropout_prob=m.attention_dropout_rate,
    max_position_embeddings=m.max_position_embeddings,
    type_vocab_size=m.type_vocab_size,
    initializer_range=m.initializer_range,
    layer_norm_eps=m.layer_norm_eps,
  )


def build(transformers, task, b: dict):
  hf_config = transformers.BertConfig(**hf_config_fields(task.model_config))
  long = reference.long_tensor
  inputs = {
    "input_ids": long(b["input_ids"]),
    "token_type_ids": long(b["segment_ids"]),
    "attention_mask": long(b["input_mask"]),
    "labels": long(mlm_labels(b)),
    "next_sentence_label": long(b["next_sentence_labels"]),
  }
  return transformers.BertForPreTraining(hf_config), inputs


def flops_per_example(task) -> float:
  """HF's MLM head projects every position onto the vocabulary."""
  return 3.0 * bert_model.forward_flops_per_sequence(task.model_config, task.seq_len, task.seq_len)


def notes(task) -> list[str]:
  return [
    f"HF projects all {task.seq_len} positions onto the vocabulary (labels -100 except masked); "
    f"the project gathers the {task.num_predictions} masked positions first. HF's TFLOP/s and "
    "MFU count its dense head."
  ]
