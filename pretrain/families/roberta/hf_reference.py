"""RoBERTa's part of the benchmark (pretrain/bench/reference.py): HF's RobertaForMaskedLM of the same shape.

The network and its MLM head are BERT's, so are HF's FLOPs and the notes.
"""

from pretrain.bench import reference
from pretrain.families.bert import hf_reference as bert_reference

# Synthetic sentences longer than a block are blocks of their own, cropped: every position is filled;
# masked_lm_prob 1 fills every prediction slot (max_predictions_per_seq caps it).
FULL_LENGTH_DATA = {"masked_lm_prob": 1.0}
tokenizer_vocab = reference.tokenizer_vocab
ffn_dims = reference.ffn_dims
flops_per_example = bert_reference.flops_per_example
notes = bert_reference.notes


def describe(task, batch_size: int) -> str:
  shape = reference.layers_shape(task.model_config, batch_size, task.seq_len)
  return f"RoBERTa {shape}, {task.num_predictions} predictions"


def build(transformers, task, b: dict):
  # HF counts positions from pad_token_id + 1 = 2, as the project's position_offset does.
  hf_config = transformers.RobertaConfig(
    **dict(bert_reference.hf_config_fields(task.model_config), type_vocab_size=1), pad_token_id=1
  )
  inputs = {
    "input_ids": reference.long_tensor(b["input_ids"]),
    "attention_mask": reference.long_tensor(b["input_mask"]),
    "labels": reference.long_tensor(bert_reference.mlm_labels(b)),
  }
  return transformers.RobertaForMaskedLM(hf_config), inputs
