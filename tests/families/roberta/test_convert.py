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
from pretrain.checkpoint import Checkpointer
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert_model
from pretrain.training.step import TrainState

VOCAB, LENGTH = 99, 12
HF_CONFIG = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=LENGTH + 2, type_vocab_size=1, layer_norm_eps=1e-5)
TOL = 1e-4


def make_hf(path, seed=0):
  torch.manual_seed(seed)
  model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**HF_CONFIG)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  return model


def inputs(pad_id, seed=0):
  """ids and mask of 3 sequences of 12, 7 and 3 real tokens, right-padded with pad_id."""
  rng = np.random.default_rng(seed)
  mask = (np.arange(LENGTH)[None] < np.array([[12], [7], [3]])).astype(np.int32)
  ids = np.where(mask > 0, rng.integers(5, VOCAB, (3, LENGTH)), pad_id).astype(np.int32)
  return ids, mask


def hf_logits(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()


def project_logits(cfg: bert_model.BertConfig, params, ids, mask):
  model = bert_model.BertForPreTraining(cfg)
  mlm, nsp = jax.jit(lambda p, i, m: model.apply({"params": p}, i, jnp.zeros_like(i), m))(params, ids, mask)
  assert nsp is None
  return np.asarray(mlm)


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("roberta")
  model = make_hf(root / "hf")
  path = root / "hf" / "model.safetensors"
  tensors = load_file(str(path))  # roberta-base's file also holds a pooler, which RobertaForMaskedLM skips.
  tensors.update({"roberta.pooler.dense.weight": np.ones((32, 32), np.float32),
                  "roberta.pooler.dense.bias": np.ones(32, np.float32)})
  save_file(tensors, str(path), metadata={"format": "pt"})
  convert.from_hf(str(root / "hf"), str(root / "converted"))
  return model, str(root / "hf"), str(root / "converted")


def test_logit_parity_at_every_position_with_padding(converted):
  model, _, out = converted
  cfg = convert.load_config(out)
  assert cfg.task.name == "roberta" and not cfg.data.next_sentence_prediction
  m = cfg.model
  assert (m.position_offset, m.type_vocab_size, m.layer_norm_eps, m.pooler, m.nsp_head) == (2, 1, 1e-5, False, False)
  assert cfg.data.max_seq_length == LENGTH
  source = json.loads(open(os.path.join(out, "convert.json")).read())
  assert source["skipped_tensors"] == ["roberta.pooler.dense.bias", "roberta.pooler.dense.weight"]
  assert source["special_ids"] == {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
  ids, mask = inputs(pad_id=1)
  expected = hf_logits(model, ids, mask)
  actual = project_logits(bert_model.BertConfig.from_dict(m.to_dict()), convert.load_params(out), ids, mask)
  assert actual.shape == (3, LENGTH, VOCAB) and max_diff(actual, expected) <= TOL
  assert np.abs(expected).max() > 1.0


def test_round_trip_is_bit_exact(converted, tmp_path):
  model, _, out = converted
  config = convert.to_hf(out, str(tmp_path / "hf2"))
  assert config["architectures"] == ["RobertaForMaskedLM"] and config["pad_token_id"] == 1
  assert config["layer_norm_eps"] == 1e-5 and config["type_vocab_size"] == 1
  reloaded, info = transformers.RobertaForMaskedLM.from_pretrained(str(tmp_path / "hf2"), output_loading_info=True)
  assert not any(info.values()), info
  ids, mask = inputs(pad_id=1, seed=1)
  assert max_diff(hf_logits(model, ids, mask), hf_logits(reloaded.eval(), ids, mask)) == 0.0
  convert.from_hf(str(tmp_path / "hf2"), str(tmp_path / "again"))
  a = checkpoints.flatten(convert.load_params(out))
  b = checkpoints.flatten(convert.load_params(str(tmp_path / "again")))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_export_of_a_model_trained_with_the_project_tokenizer(converted, tmp_path):
  """[PAD] is 0 and [UNK] 1 there: HF must count positions from 1 and still read the rows the model reads."""
  cfg = bert_model.BertConfig.from_dict(dict(convert.load_config(converted[2]).model.to_dict(), scan_layers=True))
  params = checkpoints.stack_layers(convert.load_params(converted[2]))  # Any weights; scanned, as a run may save.
  from pretrain.families.roberta.config import roberta_config  # pylint: disable=import-outside-toplevel
  config = roberta_config()
  config.task.name = "roberta"
  config.model.update({k: v for k, v in dataclasses.asdict(cfg).items() if k != "vocab_size"})
  config = dict(config.to_dict(), _tokenizer={"vocab_size": VOCAB, "fingerprint": "f", "path": "p"})
  ckpt = Checkpointer(str(tmp_path / "run"), every_steps=1, keep=1, async_save=False)
  ckpt.save(3, TrainState(step=np.int32(3), params=params, opt_state={}), {}, config, {})
  ckpt.close()
  hf_config = convert.to_hf(str(tmp_path / "run"), str(tmp_path / "hf"))
  assert (hf_config["pad_token_id"], hf_config["bos_token_id"], hf_config["eos_token_id"]) == (0, 2, 3)
  reloaded = transformers.RobertaForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
  ids, mask = inputs(pad_id=0)
  ids[0, 3] = ids[1, 2] = 1  # [UNK] inside the text.
  expected = project_logits(cfg, params, ids, mask)
  real = mask[:, :, None] > 0
  assert max_diff(np.where(real, hf_logits(reloaded, ids, mask), 0), np.where(real, expected, 0)) <= TOL


def test_bad_input(converted, tmp_path):
  _, hf_dir, out = converted
  config = json.loads(open(os.path.join(hf_dir, "config.json")).read())
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps(dict(config, architectures=["RobertaForCausalLM"])))
  with pytest.raises(PretrainError, match=r"architectures=\['RobertaForCausalLM'\] is not supported for model_type "
                                          r"'roberta'; supported: RobertaForMaskedLM"):
    convert.from_hf(str(bad), str(tmp_path / "out"))
  (bad / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=LENGTH)))
  os.symlink(os.path.join(hf_dir, "model.safetensors"), bad / "model.safetensors")
  with pytest.raises(PretrainError, match=r"tensor roberta.embeddings.position_embeddings.weight has shape "
                                          r"\(14, 32\) but config.json \(max_position_embeddings=12"):
    convert.from_hf(str(bad), str(tmp_path / "out"))
  saved = json.loads(open(os.path.join(out, "config.json")).read())
  saved["task"]["name"] = "xlnet"
  (bad / "config.json").unlink()
  os.symlink(os.path.join(out, "params"), bad / "params")
  os.symlink(os.path.join(out, "convert.json"), bad / "convert.json")
  (bad / "config.json").write_text(json.dumps(saved))
  with pytest.raises(PretrainError, match="the checkpoint's task.name='xlnet' is not supported"):
    convert.to_hf(str(bad), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
