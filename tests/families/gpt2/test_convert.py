"""GPT-2 <-> HF transformers: logit parity (padded and packed), round trips, a project-trained export, bad input."""
import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from pretrain import convert
from pretrain.checkpoint import Checkpointer
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.families.gpt2 import model as gpt2_model
from pretrain.training.step import TrainState

VOCAB, LENGTH, POSITIONS = 99, 12, 16
HF_CONFIG = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=POSITIONS, bos_token_id=98,
                 eos_token_id=98)
TOL = 1e-4


def make_hf(path, seed=0):
  """A random-weight GPT2LMHeadModel saved as safetensors; every weight perturbed so no bias or norm is trivial."""
  torch.manual_seed(seed)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_CONFIG)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  return model


def padded_inputs(seed=0):
  """ids and mask of 3 sequences of 12, 7 and 3 real tokens, right-padded with 0."""
  rng = np.random.default_rng(seed)
  mask = (np.arange(LENGTH)[None] < np.array([[12], [7], [3]])).astype(np.int32)
  return np.where(mask > 0, rng.integers(5, VOCAB, (3, LENGTH)), 0).astype(np.int32), mask


def hf_logits(model, ids, mask=None):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=None if mask is None else torch.tensor(mask, dtype=torch.long)).logits.numpy()


def model_config(out, **overrides) -> gpt2_model.Gpt2Config:
  """The converted folder's model, computing in float32 (the converted config keeps GPT-2's bfloat16 recipe)."""
  return gpt2_model.Gpt2Config.from_dict(dict(convert.load_config(out).model.to_dict(), dtype="float32",
                                              **overrides))


@functools.cache
def _apply(cfg: gpt2_model.Gpt2Config):
  return jax.jit(gpt2_model.Gpt2LMHeadModel(cfg).apply)


def project_logits(cfg, params, ids, positions=None, segment_ids=None):
  return np.asarray(_apply(cfg)({"params": params}, ids, positions, segment_ids))


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def params_equal(a, b):
  fa, fb = checkpoints.flatten(a), checkpoints.flatten(b)
  return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(HF GPT2LMHeadModel, its folder, the converted folder)."""
  root = tmp_path_factory.mktemp("gpt2")
  model = make_hf(root / "hf")
  convert.from_hf(str(root / "hf"), str(root / "converted"))
  return model, str(root / "hf"), str(root / "converted")


def test_converted_config_and_source(converted):
  _, hf_dir, out = converted
  cfg = convert.load_config(out)
  assert cfg.task.name == "gpt2" and cfg.model.attention.position == "learned"
  m = cfg.model
  assert (m.vocab_size, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (VOCAB, 32, 2, 2, 128)
  assert (m.max_position_embeddings, m.layer_norm_eps, m.dropout_rate, m.dtype) == (POSITIONS, 1e-5, 0.1, "bfloat16")
  assert cfg.data.max_seq_length == POSITIONS and cfg.tokenizer.vocab_size == VOCAB
  assert cfg.optimizer.b2 == 0.95  # GPT-2's recipe (pretrain.families.gpt2.config.gpt2_config), not BERT's.
  source = json.loads(open(os.path.join(out, "convert.json")).read())
  assert source["architecture"] == "GPT2LMHeadModel" and source["hf_dir"] == os.path.abspath(hf_dir)
  assert source["special_ids"] == {"pad_token_id": None, "bos_token_id": 98, "eos_token_id": 98}
  assert source["skipped_tensors"] == [] and source["initialized_fresh"] == []
  params = convert.load_params(out)
  c_attn = load_file(os.path.join(hf_dir, "model.safetensors"))["transformer.h.1.attn.c_attn.weight"]  # [32, 96]
  np.testing.assert_array_equal(params["h_1"]["attn"]["key"]["kernel"], c_attn[:, 32:64])


def test_logit_parity_with_padding(converted):
  model, _, out = converted
  ids, mask = padded_inputs()
  expected = hf_logits(model, ids, mask)
  actual = project_logits(model_config(out), convert.load_params(out), ids, segment_ids=mask)
  real = mask[:, :, None] > 0  # Padding rows are not predictions (the project's attend to padding only).
  assert actual.shape == (3, LENGTH, VOCAB)
  assert max_diff(np.where(real, actual, 0), np.where(real, expected, 0)) <= TOL
  assert np.abs(expected).max() > 1.0  # Not trivially small logits.


def test_packed_row_matches_each_document_alone(converted):
  model, _, out = converted
  rng = np.random.default_rng(1)
  a, b = rng.integers(5, VOCAB, 5), rng.integers(5, VOCAB, 6)
  ids = np.concatenate([a, b, [0]])[None].astype(np.int32)  # [1, 12]: two documents and one padding token
  segment_ids = np.array([[1] * 5 + [2] * 6 + [0]], np.int32)
  positions = np.array([list(range(5)) + list(range(6)) + [0]], np.int32)
  actual = project_logits(model_config(out), convert.load_params(out), ids, positions, segment_ids)[0]
  assert max_diff(actual[:5], hf_logits(model, a[None])[0]) <= TOL
  assert max_diff(actual[5:11], hf_logits(model, b[None])[0]) <= TOL
  # Without segments the second document reads the first one: the check above can tell.
  assert max_diff(project_logits(model_config(out), convert.load_params(out), ids)[0, 5:11],
                  hf_logits(model, b[None])[0]) > 0.1


def test_round_trip_is_bit_exact_and_transformers_loads_it(converted, tmp_path):
  model, hf_dir, out = converted
  config = convert.to_hf(out, str(tmp_path / "hf2"))
  base = json.loads(open(os.path.join(hf_dir, "config.json")).read())
  assert config["architectures"] == ["GPT2LMHeadModel"] and config["dtype"] == "float32"
  assert {k: config[k] for k in ("n_inner", "bos_token_id", "eos_token_id", "pad_token_id")} == {
      "n_inner": 128, "bos_token_id": 98, "eos_token_id": 98, "pad_token_id": None}
  skip = ("n_inner", "transformers_version")  # n_inner: HF's None means 4 * n_embd.
  assert {k: v for k, v in config.items() if k not in skip} == {k: v for k, v in base.items() if k not in skip}
  assert sorted(load_file(str(tmp_path / "hf2" / "model.safetensors"))) == sorted(
      load_file(os.path.join(hf_dir, "model.safetensors")))
  reloaded, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf2"), output_loading_info=True)
  assert not any(info.values()), info  # No missing, unexpected or mismatched keys.
  ids, mask = padded_inputs(seed=2)
  assert max_diff(hf_logits(model, ids, mask), hf_logits(reloaded.eval(), ids, mask)) == 0.0
  convert.from_hf(str(tmp_path / "hf2"), str(tmp_path / "again"))
  assert params_equal(convert.load_params(out), convert.load_params(str(tmp_path / "again")))


def test_gpt2_model_file_layout_with_buffers_and_a_stored_head(converted, tmp_path):
  """openai-community/gpt2's file: names without 'transformer.', causal-mask buffers, maybe a stored head."""
  _, hf_dir, out = converted
  hf = tmp_path / "old"
  hf.mkdir()
  shutil.copy(os.path.join(hf_dir, "config.json"), hf)
  tensors = {k.removeprefix("transformer."): v for k, v in load_file(os.path.join(hf_dir, "model.safetensors")).items()}
  causal = np.tril(np.ones((POSITIONS, POSITIONS), np.float32))[None, None]
  for i in range(2):
    tensors.update({f"h.{i}.attn.bias": causal, f"h.{i}.attn.masked_bias": np.array(-1e4, np.float32)})
  tensors["lm_head.weight"] = tensors["wte.weight"]
  save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
  source = convert.from_hf(str(hf), str(tmp_path / "converted"))
  assert source["skipped_tensors"] == ["h.0.attn.bias", "h.0.attn.masked_bias", "h.1.attn.bias",
                                       "h.1.attn.masked_bias", "lm_head.weight"]
  assert params_equal(convert.load_params(out), convert.load_params(str(tmp_path / "converted")))


def test_export_of_a_model_trained_here(converted, tmp_path):
  """A training workdir: vocab_size 0 (the tokenizer's), [SEP] = 3 ends documents; HF must give the same logits."""
  _, _, out = converted
  params = convert.load_params(out)
  config = convert.load_config(out).to_dict()
  config["model"].update(vocab_size=0, dtype="float32")
  config["_tokenizer"] = {"vocab_size": VOCAB, "fingerprint": "f", "path": "p"}
  ckpt = Checkpointer(str(tmp_path / "run"), every_steps=1, keep=1, async_save=False)
  ckpt.save(5, TrainState(step=np.int32(5), params=params, opt_state={}), {}, config, {})
  ckpt.close()
  hf_config = convert.to_hf(str(tmp_path / "run"), str(tmp_path / "hf"))
  assert (hf_config["pad_token_id"], hf_config["bos_token_id"], hf_config["eos_token_id"]) == (0, 3, 3)
  assert hf_config["vocab_size"] == VOCAB and hf_config["n_embd"] == 32
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
  ids, mask = padded_inputs(seed=3)
  real = mask[:, :, None] > 0
  expected = project_logits(model_config(out), params, ids, segment_ids=mask)
  assert max_diff(np.where(real, hf_logits(reloaded, ids, mask), 0), np.where(real, expected, 0)) <= TOL

  # An attention variant HF's GPT-2 does not have is refused, even when the params fit.
  config["model"]["attention"]["sliding_window"] = 4
  ckpt = Checkpointer(str(tmp_path / "windowed"), every_steps=1, keep=1, async_save=False)
  ckpt.save(5, TrainState(step=np.int32(5), params=params, opt_state={}), {}, config, {})
  ckpt.close()
  with pytest.raises(PretrainError, match="model.attention.sliding_window=4 cannot be exported: GPT2LMHeadModel "
                                          "attends to the whole context"):
    convert.to_hf(str(tmp_path / "windowed"), str(tmp_path / "nope"))
  assert not (tmp_path / "nope").exists()


# Bad input: one clear error, nothing written.


def _edited(src, dst, config=None, drop=(), add=None):
  """A copy of an HF folder with config.json fields replaced and tensors dropped or added."""
  shutil.copytree(src, dst)
  if config:
    with open(os.path.join(dst, "config.json")) as f:
      c = json.load(f)
    c.update(config)
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(c, f)
  if drop or add:
    path = os.path.join(dst, "model.safetensors")
    tensors = {k: v for k, v in load_file(path).items() if k not in drop}
    tensors.update(add or {})
    save_file(tensors, path, metadata={"format": "pt"})
  return str(dst)


@pytest.mark.parametrize("edit, message", [
    (dict(config={"architectures": ["GPT2ForSequenceClassification"]}),
     r"config.json architectures=\['GPT2ForSequenceClassification'\] is not supported for model_type 'gpt2'; "
     r"supported: GPT2LMHeadModel"),
    (dict(drop=["transformer.h.1.attn.c_attn.bias"]), r"tensor transformer.h.1.attn.c_attn.bias is missing"),
    (dict(config={"n_inner": 48}), r"tensor transformer.h.0.mlp.c_fc.weight has shape \(32, 128\) but config.json "
                                   r"\(n_embd=32, n_inner=48\) implies \(32, 48\)"),
    (dict(config={"n_positions": 20}), r"tensor transformer.wpe.weight has shape \(16, 32\) but config.json "
                                       r"\(n_positions=20, n_embd=32\) implies \(20, 32\)"),
    (dict(config={"n_layer": 1}), r"tensor transformer.h.1.\S+ is layer 1 but config.json n_layer=1"),
    (dict(add={"lm_head.weight": np.zeros((VOCAB, 32), np.float32)}),
     r"tensor lm_head.weight differs from transformer.wte.weight: an untied LM head is not supported"),
    (dict(add={"transformer.h.0.attn.q_attn.weight": np.zeros((32, 32), np.float32)}),
     r"unexpected tensor transformer.h.0.attn.q_attn.weight"),
    (dict(config={"activation_function": "relu"}), r"config.json activation_function='relu' is not supported"),
    (dict(config={"scale_attn_by_inverse_layer_idx": True}),
     r"config.json scale_attn_by_inverse_layer_idx=True is not supported"),
    (dict(config={"embd_pdrop": 0.0}), r"config.json embd_pdrop=0.0 differs from resid_pdrop=0.1"),
    (dict(config={"n_head": 3}), r"hidden_size 32 is not divisible by num_heads 3"),
])
def test_bad_hf_folders(converted, tmp_path, edit, message):
  src = _edited(converted[1], tmp_path / "bad", **edit)
  out = tmp_path / "out" / "converted"
  with pytest.raises(PretrainError, match=message):
    convert.from_hf(src, str(out))
  assert not (tmp_path / "out").exists()  # Nothing written, not even the parent.


def test_scanned_import_has_the_same_logits(converted, tmp_path):
  hf_model, hf_dir, out = converted
  scanned = str(tmp_path / "scanned")
  convert.from_hf(hf_dir, scanned, scan_layers=True)
  assert convert.load_config(scanned).model.scan_layers
  params = convert.load_params(scanned)
  assert "h" in params and "h_0" not in params and params["h"]["attn"]["query"]["kernel"].shape[0] == 2
  ids, mask = padded_inputs()
  got = project_logits(model_config(scanned), params, ids)
  np.testing.assert_allclose(got, project_logits(model_config(out), convert.load_params(out), ids), atol=1e-5)
  assert params_equal(checkpoints.unstack_layers(params), convert.load_params(out))
