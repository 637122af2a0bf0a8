"""RoBERTa <-> Hugging Face transformers' RobertaForMaskedLM.

The encoder maps as BERT's (pretrain/families/bert/convert.py) under 'roberta.'; the
MLM head is `lm_head.{dense, layer_norm, bias}` with its decoder tied to the
word embeddings. RobertaForMaskedLM has no pooler: `roberta.pooler.*` tensors
(roberta-base's file has them) are skipped, as transformers skips them.

Positions: HF's RoBERTa gives the j-th non-padding token (j from 0) position
pad_token_id + 1 + j and padding pad_token_id, so the project model's
position_offset is pad_token_id + 1 (2 for roberta-base). On export the table
is written for the checkpoint's own pad id: a model trained with the project's
tokenizer ([PAD] = 0) and offset 2 gets its table shifted up one row, so that
HF, counting from 1 and treating only id 0 as padding, reads the same rows. HF
derives positions from input_ids != pad_token_id, the project model from
input_mask: they agree when padding is exactly the pad id.

RobertaForSequenceClassification (pretrain/finetune/heads.py's first-token head) is the
encoder and `classifier.{dense, out_proj}` (-> classifier/{dense, out_proj}); its labels
become the converted config's finetune section, as for BERT's classifier.

RoBERTa's LayerNorm eps is 1e-5 and its GELU the exact one (config.json's
layer_norm_eps and hidden_act carry over and are checked).
"""

import re

import numpy as np

from pretrain.families.bert import convert as bert
from pretrain.convert.hf_io import HfTensors
from pretrain.errors import PretrainError
from pretrain.families.roberta import task as roberta_task
from pretrain.families.roberta.config import roberta_config

TASK = "roberta"
CLASSIFIER = "RobertaForSequenceClassification"
ARCHITECTURES = ("RobertaForMaskedLM", CLASSIFIER)
base_config = roberta_config  # The converted config's defaults.
PREFIX = "roberta."

# transformers' RobertaConfig defaults (BERT's, with RoBERTa's special ids).
HF_DEFAULTS = dict(bert.HF_DEFAULTS, pad_token_id=1, bos_token_id=0, eos_token_id=2)
HEADS = bert.HeadNames(
  transform="lm_head.dense",
  transform_norm="lm_head.layer_norm",
  output_bias="lm_head.bias",
  decoder="lm_head.decoder",
)
_POOLER = re.compile(r"^roberta\.pooler\.dense\.(weight|bias)$")


def project_sections(hf_config: dict, t: HfTensors) -> dict:
  """The project config sections of an HF RobertaForMaskedLM folder."""
  del t  # The structure is fixed: no pooler, no NSP head.
  f = bert.hf_fields(hf_config, HF_DEFAULTS)
  model = bert.model_fields(
    f, pooler=False, nsp_head=False, position_offset=int(f["pad_token_id"]) + 1
  )
  seq = min(512, model["max_position_embeddings"] - model["position_offset"])
  if hf_config["architectures"][0] == CLASSIFIER:
    return bert.classifier_sections(hf_config, model, TASK, "first_token", seq)
  return {
    "task": {"name": TASK},
    "model": model,
    "data": {"next_sentence_prediction": False, "max_seq_length": seq},
  }


def complete_model(model: dict) -> dict:
  """A config's model section with every field, the missing ones at RoBERTa's defaults."""
  return bert.complete_model(dict(roberta_task.MODEL_DEFAULTS, **model))


def hf_to_params(t: HfTensors, hf_config: dict, model: dict) -> tuple[dict, list[str]]:
  if hf_config["architectures"][0] == CLASSIFIER:
    return bert.read_classifier(t, PREFIX, model, bert.head_section(hf_config, "first_token")), []
  bert.check_tensors(t, PREFIX, model)
  params = bert.read_params(t, bert.entries(model, PREFIX, HEADS))
  bert.skip_buffers(t)
  bert.skip_tied_decoder(t, HEADS, params, PREFIX)
  for name in t.names():
    if _POOLER.match(name):
      t.skip(name)
  return params, []


def params_to_hf(
  params: dict, model: dict, special_ids: dict, base: dict | None, head: dict | None = None
) -> tuple[dict, dict]:
  """(config.json, tensors) of HF's RobertaForMaskedLM (or, with a sequence classification `head`,
  RobertaForSequenceClassification) for a model whose padding is special_ids' pad id."""
  arch = CLASSIFIER if head else "RobertaForMaskedLM"
  bert.check_attention(model, "learned", arch)
  config = bert.hf_config(model, arch, "roberta", base)
  config.update(special_ids)
  if head:
    bert.check_head(head, "first_token", arch)
    config.update(bert.head_hf_config(head))
    table = bert.entries(model, PREFIX, HEADS, with_heads=False) + bert.classifier_entries(
      model, head
    )
  else:
    table = bert.entries(model, PREFIX, HEADS)
  tensors = bert.write_tensors(params, table)
  shift = model["position_offset"] - (special_ids["pad_token_id"] + 1)
  if shift < 0:
    raise PretrainError(
      f"model.position_offset={model['position_offset']} is below HF's first position "
      f"pad_token_id + 1 = {special_ids['pad_token_id'] + 1}"
    )
  if shift:
    name = PREFIX + "embeddings.position_embeddings.weight"
    tensors[name] = np.ascontiguousarray(np.roll(tensors[name], -shift, axis=0))
  return config, tensors


abstract_params = bert.abstract_params
init_heads = bert.init_heads
