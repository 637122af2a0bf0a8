"""RoBERTa <-> HF transformers: logit parity, round trip, a project-trained export, bad input."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from pretrain import convert
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert_model

from hf_folders import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  TOL,
  assert_converts_to,
  hf_and_converted,
  hf_outputs,
  max_diff,
  padded,
  perturb_and_save,
  read_json,
  reload,
  save_checkpoint,
)

VOCAB, LENGTH = 99, 12
HF_CONFIG = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  max_position_embeddings=LENGTH + 2,
  type_vocab_size=1,
  layer_norm_eps=1e-5,
)


def make_hf(path, seed=0):
  """A random-weight RobertaForMaskedLM saved with a pooler as roberta-base's file has, which the model skips."""
  torch.manual_seed(seed)
  model = perturb_and_save(
    transformers.RobertaForMaskedLM(transformers.RobertaConfig(**HF_CONFIG)).eval(), path
  )
  tensors = load_file(str(path / "model.safetensors"))
  tensors.update(
    {
      "roberta.pooler.dense.weight": np.ones((32, 32), np.float32),
      "roberta.pooler.dense.bias": np.ones(32, np.float32),
    }
  )
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  return model


def inputs(pad_id, seed=0):
  """ids and mask of 3 sequences of 12, 7 and 3 real tokens, right-padded with pad_id."""
  return padded(np.random.default_rng(seed), VOCAB, LENGTH, pad_id)


def hf_logits(model, ids, mask):
  return hf_outputs(model, input_ids=ids, attention_mask=mask).logits.numpy()


def project_logits(cfg: bert_model.BertConfig, params, ids, mask):
  model = bert_model.BertForPreTraining(cfg)
  mlm, nsp = jax.jit(lambda p, i, m: model.apply({"params": p}, i, jnp.zeros_like(i), m))(
    params, ids, mask
  )
  assert nsp is None
  return np.asarray(mlm)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  return hf_and_converted(tmp_path_factory, "roberta", make_hf)


def test_logit_parity_at_every_position_with_padding(converted):
  model, _, out = converted
  cfg = convert.load_config(out)
  assert cfg.task.name == "roberta" and not cfg.data.next_sentence_prediction
  m = cfg.model
  assert (m.position_offset, m.type_vocab_size, m.layer_norm_eps, m.pooler, m.nsp_head) == (
    2,
    1,
    1e-5,
    False,
    False,
  )
  assert cfg.data.max_seq_length == LENGTH
  source = read_json(out, "convert.json")
  assert source["skipped_tensors"] == ["roberta.pooler.dense.bias", "roberta.pooler.dense.weight"]
  assert source["special_ids"] == {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
  ids, mask = inputs(pad_id=1)
  expected = hf_logits(model, ids, mask)
  actual = project_logits(
    bert_model.BertConfig.from_dict(m.to_dict()), convert.load_params(out), ids, mask
  )
  assert actual.shape == (3, LENGTH, VOCAB) and max_diff(actual, expected) <= TOL
  assert np.abs(expected).max() > 1.0


def test_round_trip_is_bit_exact(converted, tmp_path):
  model, _, out = converted
  config = convert.to_hf(out, str(tmp_path / "hf2"))
  assert config["architectures"] == ["RobertaForMaskedLM"] and config["pad_token_id"] == 1
  assert config["layer_norm_eps"] == 1e-5 and config["type_vocab_size"] == 1
  reloaded = reload(transformers.RobertaForMaskedLM, tmp_path / "hf2")
  ids, mask = inputs(pad_id=1, seed=1)
  assert max_diff(hf_logits(model, ids, mask), hf_logits(reloaded, ids, mask)) == 0.0
  assert_converts_to(tmp_path / "hf2", tmp_path / "again", out)


def test_export_of_a_model_trained_with_the_project_tokenizer(converted, tmp_path):
  """[PAD] is 0 and [UNK] 1 there: HF must count positions from 1 and still read the rows the model reads."""
  cfg = bert_model.BertConfig.from_dict(
    dict(convert.load_config(converted[2]).model.to_dict(), scan_layers=True)
  )
  params = checkpoints.stack_layers(
    convert.load_params(converted[2])
  )  # Any weights; scanned, as a run may save.
  from pretrain.families.roberta.config import roberta_config  # pylint: disable=import-outside-toplevel

  config = roberta_config()
  config.task.name = "roberta"
  config.model.update({k: v for k, v in dataclasses.asdict(cfg).items() if k != "vocab_size"})
  config = dict(config.to_dict(), _tokenizer={"vocab_size": VOCAB, "fingerprint": "f", "path": "p"})
  hf_config = convert.to_hf(
    save_checkpoint(tmp_path / "run", 3, params, config), str(tmp_path / "hf")
  )
  assert (hf_config["pad_token_id"], hf_config["bos_token_id"], hf_config["eos_token_id"]) == (
    0,
    2,
    3,
  )
  reloaded = transformers.RobertaForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
  ids, mask = inputs(pad_id=0)
  ids[0, 3] = ids[1, 2] = 1  # [UNK] inside the text.
  expected = project_logits(cfg, params, ids, mask)
  real = mask[:, :, None] > 0
  assert (
    max_diff(np.where(real, hf_logits(reloaded, ids, mask), 0), np.where(real, expected, 0)) <= TOL
  )


def test_bad_input(converted, tmp_path):
  _, hf_dir, out = converted
  config = read_json(hf_dir, "config.json")
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps(dict(config, architectures=["RobertaForCausalLM"])))
  with pytest.raises(
    PretrainError,
    match=r"architectures=\['RobertaForCausalLM'\] is not supported for model_type "
    r"'roberta'; supported: RobertaForMaskedLM",
  ):
    convert.from_hf(str(bad), str(tmp_path / "out"))
  (bad / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=LENGTH)))
  os.symlink(os.path.join(hf_dir, "model.safetensors"), bad / "model.safetensors")
  with pytest.raises(
    PretrainError,
    match=r"tensor roberta.embeddings.position_embeddings.weight has shape "
    r"\(14, 32\) but config.json \(max_position_embeddings=12",
  ):
    convert.from_hf(str(bad), str(tmp_path / "out"))
  saved = read_json(out, "config.json")
  saved["task"]["name"] = "xlnet"
  (bad / "config.json").unlink()
  os.symlink(os.path.join(out, "params"), bad / "params")
  os.symlink(os.path.join(out, "convert.json"), bad / "convert.json")
  (bad / "config.json").write_text(json.dumps(saved))
  with pytest.raises(PretrainError, match="the checkpoint's task.name='xlnet' is not supported"):
    convert.to_hf(str(bad), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
