"""GPT-2 <-> HF transformers: logit parity (padded and packed), round trips, a project-trained export, bad input."""

import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from pretrain import convert
from pretrain.errors import PretrainError
from pretrain.families.gpt2 import model as gpt2_model

from hf_folders import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  TOL,
  assert_converts_to,
  assert_refused,
  hf_and_converted,
  hf_outputs,
  import_scanned,
  max_diff,
  padded,
  perturb_and_save,
  project_outputs,
  read_json,
  reload,
  run_config,
  save_checkpoint,
)

VOCAB, LENGTH, POSITIONS = 99, 12, 16
HF_CONFIG = dict(
  vocab_size=VOCAB,
  n_embd=32,
  n_layer=2,
  n_head=2,
  n_positions=POSITIONS,
  bos_token_id=98,
  eos_token_id=98,
)


def make_hf(path, seed=0):
  """A random-weight GPT2LMHeadModel saved as safetensors; every weight perturbed so no bias or norm is trivial."""
  torch.manual_seed(seed)
  return perturb_and_save(
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_CONFIG)).eval(), path
  )


def padded_inputs(seed=0):
  """ids and mask of 3 sequences of 12, 7 and 3 real tokens, right-padded with 0."""
  return padded(np.random.default_rng(seed), VOCAB, LENGTH)


def hf_logits(model, ids, mask=None):
  return hf_outputs(model, input_ids=ids, attention_mask=mask).logits.numpy()


def model_config(out, **overrides) -> gpt2_model.Gpt2Config:
  """The converted folder's model, computing in float32 (the converted config keeps GPT-2's bfloat16 recipe)."""
  return gpt2_model.Gpt2Config.from_dict(
    dict(convert.load_config(out).model.to_dict(), dtype="float32", **overrides)
  )


def project_logits(cfg, params, ids, positions=None, segment_ids=None):
  return project_outputs(gpt2_model.Gpt2LMHeadModel, cfg, params, ids, positions, segment_ids)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(HF GPT2LMHeadModel, its folder, the converted folder)."""
  return hf_and_converted(tmp_path_factory, "gpt2", make_hf)


def test_converted_config_and_source(converted):
  _, hf_dir, out = converted
  cfg = convert.load_config(out)
  assert cfg.task.name == "gpt2" and cfg.model.attention.position == "learned"
  m = cfg.model
  assert (m.vocab_size, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (
    VOCAB,
    32,
    2,
    2,
    128,
  )
  assert (m.max_position_embeddings, m.layer_norm_eps, m.dropout_rate, m.dtype) == (
    POSITIONS,
    1e-5,
    0.1,
    "bfloat16",
  )
  assert cfg.data.max_seq_length == POSITIONS and cfg.tokenizer.vocab_size == VOCAB
  assert (
    cfg.optimizer.b2 == 0.95
  )  # GPT-2's recipe (pretrain.families.gpt2.config.gpt2_config), not BERT's.
  source = read_json(out, "convert.json")
  assert source["architecture"] == "GPT2LMHeadModel" and source["hf_dir"] == os.path.abspath(hf_dir)
  assert source["special_ids"] == {"pad_token_id": None, "bos_token_id": 98, "eos_token_id": 98}
  assert source["skipped_tensors"] == [] and source["initialized_fresh"] == []
  params = convert.load_params(out)
  c_attn = load_file(os.path.join(hf_dir, "model.safetensors"))[
    "transformer.h.1.attn.c_attn.weight"
  ]  # [32, 96]
  np.testing.assert_array_equal(params["h_1"]["attn"]["key"]["kernel"], c_attn[:, 32:64])


def test_logit_parity_with_padding(converted):
  model, _, out = converted
  ids, mask = padded_inputs()
  expected = hf_logits(model, ids, mask)
  actual = project_logits(model_config(out), convert.load_params(out), ids, segment_ids=mask)
  real = (
    mask[:, :, None] > 0
  )  # Padding rows are not predictions (the project's attend to padding only).
  assert actual.shape == (3, LENGTH, VOCAB)
  assert max_diff(np.where(real, actual, 0), np.where(real, expected, 0)) <= TOL
  assert np.abs(expected).max() > 1.0  # Not trivially small logits.


def test_packed_row_matches_each_document_alone(converted):
  model, _, out = converted
  rng = np.random.default_rng(1)
  a, b = rng.integers(5, VOCAB, 5), rng.integers(5, VOCAB, 6)
  ids = np.concatenate([a, b, [0]])[None].astype(
    np.int32
  )  # [1, 12]: two documents and one padding token
  segment_ids = np.array([[1] * 5 + [2] * 6 + [0]], np.int32)
  positions = np.array([list(range(5)) + list(range(6)) + [0]], np.int32)
  actual = project_logits(model_config(out), convert.load_params(out), ids, positions, segment_ids)[
    0
  ]
  assert max_diff(actual[:5], hf_logits(model, a[None])[0]) <= TOL
  assert max_diff(actual[5:11], hf_logits(model, b[None])[0]) <= TOL
  # Without segments the second document reads the first one: the check above can tell.
  assert (
    max_diff(
      project_logits(model_config(out), convert.load_params(out), ids)[0, 5:11],
      hf_logits(model, b[None])[0],
    )
    > 0.1
  )


def test_round_trip_is_bit_exact_and_transformers_loads_it(converted, tmp_path):
  model, hf_dir, out = converted
  config = convert.to_hf(out, str(tmp_path / "hf2"))
  base = read_json(hf_dir, "config.json")
  assert config["architectures"] == ["GPT2LMHeadModel"] and config["dtype"] == "float32"
  assert {k: config[k] for k in ("n_inner", "bos_token_id", "eos_token_id", "pad_token_id")} == {
    "n_inner": 128,
    "bos_token_id": 98,
    "eos_token_id": 98,
    "pad_token_id": None,
  }
  skip = ("n_inner", "transformers_version")  # n_inner: HF's None means 4 * n_embd.
  assert {k: v for k, v in config.items() if k not in skip} == {
    k: v for k, v in base.items() if k not in skip
  }
  assert sorted(load_file(str(tmp_path / "hf2" / "model.safetensors"))) == sorted(
    load_file(os.path.join(hf_dir, "model.safetensors"))
  )
  reloaded = reload(transformers.GPT2LMHeadModel, tmp_path / "hf2")
  ids, mask = padded_inputs(seed=2)
  assert max_diff(hf_logits(model, ids, mask), hf_logits(reloaded, ids, mask)) == 0.0
  assert_converts_to(tmp_path / "hf2", tmp_path / "again", out)


def test_gpt2_model_file_layout_with_buffers_and_a_stored_head(converted, tmp_path):
  """openai-community/gpt2's file: names without 'transformer.', causal-mask buffers, maybe a stored head."""
  _, hf_dir, out = converted
  hf = tmp_path / "old"
  hf.mkdir()
  shutil.copy(os.path.join(hf_dir, "config.json"), hf)
  tensors = {
    k.removeprefix("transformer."): v
    for k, v in load_file(os.path.join(hf_dir, "model.safetensors")).items()
  }
  causal = np.tril(np.ones((POSITIONS, POSITIONS), np.float32))[None, None]
  for i in range(2):
    tensors.update(
      {f"h.{i}.attn.bias": causal, f"h.{i}.attn.masked_bias": np.array(-1e4, np.float32)}
    )
  tensors["lm_head.weight"] = tensors["wte.weight"]
  save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
  source = assert_converts_to(hf, tmp_path / "converted", out)
  assert source["skipped_tensors"] == [
    "h.0.attn.bias",
    "h.0.attn.masked_bias",
    "h.1.attn.bias",
    "h.1.attn.masked_bias",
    "lm_head.weight",
  ]


def test_export_of_a_model_trained_here(converted, tmp_path):
  """A training workdir: vocab_size 0 (the tokenizer's), [SEP] = 3 ends documents; HF must give the same logits."""
  _, _, out = converted
  params = convert.load_params(out)
  config = run_config(out, VOCAB)
  hf_config = convert.to_hf(
    save_checkpoint(tmp_path / "run", 5, params, config), str(tmp_path / "hf")
  )
  assert (hf_config["pad_token_id"], hf_config["bos_token_id"], hf_config["eos_token_id"]) == (
    0,
    3,
    3,
  )
  assert hf_config["vocab_size"] == VOCAB and hf_config["n_embd"] == 32
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
  ids, mask = padded_inputs(seed=3)
  real = mask[:, :, None] > 0
  expected = project_logits(model_config(out), params, ids, segment_ids=mask)
  assert (
    max_diff(np.where(real, hf_logits(reloaded, ids, mask), 0), np.where(real, expected, 0)) <= TOL
  )

  # An attention variant HF's GPT-2 does not have is refused, even when the params fit.
  config["model"]["attention"]["sliding_window"] = 4
  windowed = save_checkpoint(tmp_path / "windowed", 5, params, config)
  with pytest.raises(
    PretrainError,
    match="model.attention.sliding_window=4 cannot be exported: GPT2LMHeadModel "
    "attends to the whole context",
  ):
    convert.to_hf(windowed, str(tmp_path / "nope"))
  assert not (tmp_path / "nope").exists()


# Bad input: one clear error, nothing written.


@pytest.mark.parametrize(
  "edit, message",
  [
    (
      dict(config={"architectures": ["GPT2ForSequenceClassification"]}),
      r"config.json architectures=\['GPT2ForSequenceClassification'\] is not supported for model_type 'gpt2'; "
      r"supported: GPT2LMHeadModel",
    ),
    (
      dict(drop=["transformer.h.1.attn.c_attn.bias"]),
      r"tensor transformer.h.1.attn.c_attn.bias is missing",
    ),
    (
      dict(config={"n_inner": 48}),
      r"tensor transformer.h.0.mlp.c_fc.weight has shape \(32, 128\) but config.json "
      r"\(n_embd=32, n_inner=48\) implies \(32, 48\)",
    ),
    (
      dict(config={"n_positions": 20}),
      r"tensor transformer.wpe.weight has shape \(16, 32\) but config.json "
      r"\(n_positions=20, n_embd=32\) implies \(20, 32\)",
    ),
    (
      dict(config={"n_layer": 1}),
      r"tensor transformer.h.1.\S+ is layer 1 but config.json n_layer=1",
    ),
    (
      dict(add={"lm_head.weight": np.zeros((VOCAB, 32), np.float32)}),
      r"tensor lm_head.weight differs from transformer.wte.weight: an untied LM head is not supported",
    ),
    (
      dict(add={"transformer.h.0.attn.q_attn.weight": np.zeros((32, 32), np.float32)}),
      r"unexpected tensor transformer.h.0.attn.q_attn.weight",
    ),
    (
      dict(config={"activation_function": "relu"}),
      r"config.json activation_function='relu' is not supported",
    ),
    (
      dict(config={"scale_attn_by_inverse_layer_idx": True}),
      r"config.json scale_attn_by_inverse_layer_idx=True is not supported",
    ),
    (dict(config={"embd_pdrop": 0.0}), r"config.json embd_pdrop=0.0 differs from resid_pdrop=0.1"),
    (dict(config={"n_head": 3}), r"hidden_size 32 is not divisible by num_heads 3"),
  ],
)
def test_bad_hf_folders(converted, tmp_path, edit, message):
  assert_refused(converted[1], tmp_path, edit, message)


def test_scanned_import_has_the_same_logits(converted, tmp_path):
  _, hf_dir, out = converted
  params = import_scanned(hf_dir, tmp_path / "scanned", out)
  assert (
    "h" in params and "h_0" not in params and params["h"]["attn"]["query"]["kernel"].shape[0] == 2
  )
  ids, _ = padded_inputs()
  got = project_logits(model_config(str(tmp_path / "scanned")), params, ids)
  np.testing.assert_allclose(
    got, project_logits(model_config(out), convert.load_params(out), ids), atol=1e-5
  )
