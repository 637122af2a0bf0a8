"""Sequence classification heads vs HF's BertForSequenceClassification / RobertaForSequenceClassification:
from-hf gives the same logits (<= 1e-4), to-hf of the converted folder and of a training workdir loads in
transformers with the same logits."""

import jax
import numpy as np
import pytest
import torch
import transformers

from pretrain import convert
from pretrain.families.bert import model as bert_model
from pretrain.finetune import heads

from hf_folders import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  TOL,
  hf_outputs,
  max_diff,
  padded,
  perturb_and_save,
  read_json,
  reload,
  save_checkpoint,
)

VOCAB, LENGTH = 99, 12
COMMON = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
)
CASES = {
  # name: (HF class, HF config class, config fields, pad id, head, segment ids)
  "bert": (
    transformers.BertForSequenceClassification,
    transformers.BertConfig,
    dict(max_position_embeddings=40, id2label={0: "no", 1: "maybe", 2: "yes"}),
    0,
    heads.POOLED,
  ),
  "roberta_regression": (
    transformers.RobertaForSequenceClassification,
    transformers.RobertaConfig,
    dict(max_position_embeddings=LENGTH + 2, type_vocab_size=1, num_labels=1, layer_norm_eps=1e-5),
    1,
    heads.FIRST_TOKEN,
  ),
}


def _inputs(pad_id, bert):
  ids, mask = padded(np.random.default_rng(0), VOCAB, LENGTH, pad_id)
  types = ((np.arange(LENGTH)[None] >= np.array([[6], [4], [1]])) * mask).astype(np.int32)
  return ids, types if bert else np.zeros_like(ids), mask


def _project_logits(folder_config, params, ids, types, mask):
  ft = folder_config["finetune"]
  cfg = bert_model.BertConfig.from_dict(folder_config["model"])
  model = heads.SequenceClassifier(cfg, int(ft["num_outputs"]), ft["head"])
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, ids, types, mask))(params))


@pytest.mark.parametrize("case", sorted(CASES))
def test_classifier_logit_parity_both_directions(case, tmp_path):
  cls, config_cls, fields, pad_id, head = CASES[case]
  torch.manual_seed(0)
  hf = perturb_and_save(cls(config_cls(**COMMON, **fields)).eval(), tmp_path / "hf")
  ids, types, mask = _inputs(pad_id, case == "bert")
  expected = hf_outputs(hf, input_ids=ids, token_type_ids=types, attention_mask=mask).logits.numpy()

  convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "converted"))
  config = read_json(tmp_path / "converted", "config.json")
  assert config["finetune"]["head"] == head
  assert config["finetune"]["num_outputs"] == expected.shape[1]
  params = convert.load_params(str(tmp_path / "converted"))
  assert sorted(params) == ["bert", "classifier"]
  logits = _project_logits(config, params, ids, types, mask)
  assert max_diff(logits, expected) <= TOL
  assert float(np.ptp(expected, axis=0).max()) > 0.01  # The inputs give different logits.

  # to-hf of the converted folder, and of a training workdir (a fine-tuned run's layout).
  convert.to_hf(str(tmp_path / "converted"), str(tmp_path / "back"))
  workdir = save_checkpoint(tmp_path / "run", 5, params, dict(config, _tokenizer={}))
  convert.to_hf(workdir, str(tmp_path / "exported"))
  for out in ("back", "exported"):
    exported = reload(cls, tmp_path / out)
    again = hf_outputs(exported, input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    assert max_diff(again.numpy(), logits) <= TOL, out
    assert exported.config.num_labels == expected.shape[1]
  if case == "bert":
    assert read_json(tmp_path / "exported", "config.json")["id2label"] == {
      "0": "no",
      "1": "maybe",
      "2": "yes",
    }
  else:
    assert read_json(tmp_path / "exported", "config.json")["problem_type"] == "regression"


def test_the_mean_head_reads_the_mean_over_real_tokens_only():
  cfg = bert_model.BertConfig.from_dict(
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      num_layers=2,
      num_heads=2,
      intermediate_size=64,
      pooler=False,
      nsp_head=False,
    )
  )
  ids, types, mask = _inputs(0, True)
  model = heads.SequenceClassifier(cfg, 3, heads.MEAN)
  params = jax.jit(lambda k: model.init(k, ids, types, mask))(jax.random.key(0))["params"]
  params = bert_model.nn.unbox(params)
  assert set(params) == {"bert", "classifier"} and "pooler" not in params["bert"]
  logits = np.asarray(model.apply({"params": params}, ids, types, mask))
  sequence, _ = bert_model.BertModel(cfg).apply({"params": params["bert"]}, ids, types, mask)
  m = mask[:, :, None].astype(np.float32)
  mean = (np.asarray(sequence, np.float32) * m).sum(1) / m.sum(1)
  k, b = params["classifier"]["kernel"], params["classifier"]["bias"]
  np.testing.assert_allclose(logits, mean @ np.asarray(k) + np.asarray(b), rtol=1e-5, atol=1e-6)
  # Padding tokens change nothing: other ids at padded positions give the same logits.
  noisy = np.where(mask > 0, ids, (ids + 7) % VOCAB).astype(ids.dtype)
  np.testing.assert_allclose(
    np.asarray(model.apply({"params": params}, noisy, types, mask)), logits
  )
