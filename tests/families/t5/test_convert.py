"""T5 v1.1 <-> HF transformers: logit parity with padding, the head layouts, round trips, a project-trained export,
bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from pretrain import convert
from pretrain.families.t5 import model as t5_model

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

VOCAB, ENC_LENGTH, DEC_LENGTH = 256, 12, 9
# Few buckets and a short max_distance, so that 12 positions reach the log-spaced and the last buckets;
# num_heads * d_kv = 24 differs from d_model, as in T5 v1.1 small (6 x 64 = 384 vs 512).
HF_CONFIG = dict(
  vocab_size=VOCAB,
  d_model=32,
  d_kv=6,
  num_heads=4,
  d_ff=48,
  num_layers=2,
  num_decoder_layers=3,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=10,
  feed_forward_proj="gated-gelu",
  tie_word_embeddings=False,
  decoder_start_token_id=0,
)


def make_hf(path, seed=0, untie=True):
  """A random-weight T5ForConditionalGeneration (v1.1) saved as safetensors, every weight perturbed.

  transformers 5 ties lm_head to shared.weight even for v1.1 (and then saves no
  lm_head.weight); untie=True gives the head its own weights, as the published
  v1.1 checkpoints have.
  """
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIG))
  if untie:
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.2)
  return perturb_and_save(model, path).eval()


def inputs(seed=0):
  """Encoder ids and mask of 3 sequences of 12, 7 and 3 real tokens (right-padded with 0); decoder ids from 0."""
  rng = np.random.default_rng(seed)
  ids, mask = padded(rng, VOCAB, ENC_LENGTH, low=2)
  decoder_ids = np.concatenate(
    [np.zeros((3, 1)), rng.integers(2, VOCAB, (3, DEC_LENGTH - 1))], 1
  ).astype(np.int32)
  return ids, mask, decoder_ids


def hf_logits(model, ids, mask, decoder_ids):
  return hf_outputs(
    model, input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids
  ).logits.numpy()


def model_config(out) -> t5_model.T5Config:
  """The converted folder's model, computing in float32 (the converted config keeps T5's bfloat16 recipe)."""
  return t5_model.T5Config.from_dict(
    dict(convert.load_config(out).model.to_dict(), dtype="float32")
  )


def project_logits(cfg, params, ids, mask, decoder_ids):
  return project_outputs(t5_model.T5Model, cfg, params, ids, mask, decoder_ids)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(HF model with an untied head, its folder, the converted folder)."""
  return hf_and_converted(tmp_path_factory, "t5", make_hf)


def test_logit_parity_with_padding(converted):
  model, _, out = converted
  cfg = convert.load_config(out)
  assert cfg.task.name == "t5" and cfg.model.attention.position == "relative_bias"
  m = cfg.model
  assert (
    m.vocab_size,
    m.hidden_size,
    m.head_dim,
    m.num_heads,
    m.intermediate_size,
    m.num_layers,
    m.num_decoder_layers,
  ) == (VOCAB, 32, 6, 4, 48, 2, 3)
  assert (m.attention.relative_num_buckets, m.attention.relative_max_distance, m.dropout_rate) == (
    8,
    10,
    0.1,
  )
  assert (cfg.task.extra_ids, cfg.tokenizer.vocab_size, m.dtype) == (100, VOCAB - 100, "bfloat16")
  source = read_json(out, "convert.json")
  assert source["special_ids"] == {"pad_token_id": 0, "bos_token_id": None, "eos_token_id": 1}
  assert source["skipped_tensors"] == [] and source["initialized_fresh"] == []
  ids, mask, decoder_ids = inputs()
  expected = hf_logits(model, ids, mask, decoder_ids)
  actual = project_logits(model_config(out), convert.load_params(out), ids, mask, decoder_ids)
  assert actual.shape == (3, DEC_LENGTH, VOCAB) and max_diff(actual, expected) <= TOL
  assert np.abs(expected).max() > 1.0  # Not trivially small logits.
  # Padding matters: the same inputs without a mask give other logits in the short rows.
  unmasked = project_logits(
    model_config(out), convert.load_params(out), ids, np.ones_like(mask), decoder_ids
  )
  assert max_diff(unmasked[2], expected[2]) > 0.1


def test_relative_bias_of_block_0_is_the_stack_table(converted):
  _, hf_dir, out = converted
  tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
  params = convert.load_params(out)
  for stack in ("encoder", "decoder"):
    table = tensors[
      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    ]  # [buckets, heads]
    np.testing.assert_array_equal(params[stack]["relative_attention_bias"]["embedding"], table)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], tensors["lm_head.weight"].T)
  assert not np.array_equal(params["lm_head"]["kernel"], params["shared"]["embedding"].T)


def test_round_trip_is_bit_exact_and_transformers_loads_it(converted, tmp_path):
  model, hf_dir, out = converted
  config = convert.to_hf(out, str(tmp_path / "hf2"))
  assert config["architectures"] == ["T5ForConditionalGeneration"] and config["dtype"] == "float32"
  assert (
    config["tie_word_embeddings"],
    config["scale_decoder_outputs"],
    config["feed_forward_proj"],
  ) == (False, False, "gated-gelu")
  assert (config["pad_token_id"], config["eos_token_id"], config["decoder_start_token_id"]) == (
    0,
    1,
    0,
  )
  assert sorted(load_file(str(tmp_path / "hf2" / "model.safetensors"))) == sorted(
    load_file(os.path.join(hf_dir, "model.safetensors"))
  )
  reloaded = reload(transformers.T5ForConditionalGeneration, tmp_path / "hf2")
  ids, mask, decoder_ids = inputs(seed=1)
  assert (
    max_diff(hf_logits(model, ids, mask, decoder_ids), hf_logits(reloaded, ids, mask, decoder_ids))
    == 0
  )
  assert_converts_to(tmp_path / "hf2", tmp_path / "again", out)


def test_head_tied_by_transformers_5_and_published_config(converted, tmp_path):
  """transformers 5 saves v1.1 with tie_word_embeddings true, scale_decoder_outputs false and no lm_head.weight."""
  model = make_hf(tmp_path / "tied", seed=1, untie=False)
  saved = json.loads((tmp_path / "tied" / "config.json").read_text())
  assert (saved["tie_word_embeddings"], saved["scale_decoder_outputs"]) == (True, False)
  assert "lm_head.weight" not in load_file(str(tmp_path / "tied" / "model.safetensors"))
  convert.from_hf(str(tmp_path / "tied"), str(tmp_path / "converted"))
  params = convert.load_params(str(tmp_path / "converted"))
  np.testing.assert_array_equal(params["lm_head"]["kernel"], params["shared"]["embedding"].T)
  ids, mask, decoder_ids = inputs(seed=2)
  actual = project_logits(model_config(str(tmp_path / "converted")), params, ids, mask, decoder_ids)
  assert max_diff(actual, hf_logits(model, ids, mask, decoder_ids)) <= TOL

  # The published v1.1 config.json: tie_word_embeddings false and no scale_decoder_outputs; old files also
  # store the stacks' embed_tokens (copies of shared) and a decoder cross-attention bias table HF ignores.
  _, hf_dir, out = converted
  published = tmp_path / "published"
  shutil.copytree(hf_dir, published)
  config = json.loads((published / "config.json").read_text())
  del config["scale_decoder_outputs"]
  (published / "config.json").write_text(json.dumps(dict(config, tie_word_embeddings=False)))
  tensors = load_file(str(published / "model.safetensors"))
  tensors.update(
    {
      "encoder.embed_tokens.weight": tensors["shared.weight"],
      "decoder.embed_tokens.weight": tensors["shared.weight"],
      "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight": np.ones(
        (8, 4), np.float32
      ),
    }
  )
  save_file(tensors, str(published / "model.safetensors"), metadata={"format": "pt"})
  source = assert_converts_to(published, tmp_path / "from_published", out)
  assert source["skipped_tensors"] == [
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
    "decoder.embed_tokens.weight",
    "encoder.embed_tokens.weight",
  ]


def test_export_of_a_model_trained_here(converted, tmp_path):
  """A training workdir: vocab_size 0 (tokenizer pieces + 100 sentinels, rounded up to 128), [SEP] = 3 is EOS."""
  _, _, out = converted
  params = convert.load_params(out)
  config = run_config(out, 150)  # 150 + 100 -> 256 rows.
  hf_config = convert.to_hf(
    save_checkpoint(tmp_path / "run", 4, params, config), str(tmp_path / "hf")
  )
  assert hf_config["vocab_size"] == VOCAB and "bos_token_id" not in hf_config
  assert (
    hf_config["pad_token_id"],
    hf_config["eos_token_id"],
    hf_config["decoder_start_token_id"],
  ) == (0, 3, 0)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
  ids, mask, decoder_ids = inputs(seed=3)
  expected = project_logits(model_config(out), params, ids, mask, decoder_ids)
  assert max_diff(hf_logits(reloaded, ids, mask, decoder_ids), expected) <= TOL


# Bad input: one clear error, nothing written.


@pytest.mark.parametrize(
  "edit, message",
  [
    (
      dict(config={"architectures": ["T5EncoderModel"]}),
      r"config.json architectures=\['T5EncoderModel'\] is not supported for model_type 't5'; "
      r"supported: T5ForConditionalGeneration",
    ),
    (
      dict(drop=["decoder.block.2.layer.1.EncDecAttention.k.weight"]),
      r"tensor decoder.block.2.layer.1.EncDecAttention.k.weight is missing",
    ),
    (
      dict(
        drop=["lm_head.weight"],
        config={"tie_word_embeddings": False, "scale_decoder_outputs": None},
      ),
      r"tensor lm_head.weight is missing",
    ),
    (
      dict(config={"d_ff": 64}),
      r"tensor encoder.block.0.layer.1.DenseReluDense.wi_0.weight has shape \(48, 32\) but "
      r"config.json \(d_model=32, d_ff=64\) implies \(64, 32\)",
    ),
    (
      dict(config={"relative_attention_num_buckets": 16}),
      r"tensor encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight has shape \(8, 4\) but "
      r"config.json \(relative_attention_num_buckets=16, num_heads=4\) implies \(16, 4\)",
    ),
    (
      dict(config={"num_decoder_layers": 2}),
      r"tensor decoder.block.2.\S+ is decoder block 2 but config.json "
      r"num_decoder_layers=2",
    ),
    (
      dict(
        add={
          "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": np.ones(
            (8, 4), np.float32
          )
        }
      ),
      r"unexpected tensor encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (
      dict(add={"encoder.embed_tokens.weight": np.zeros((VOCAB, 32), np.float32)}),
      r"tensor encoder.embed_tokens.weight differs from shared.weight",
    ),
    (
      dict(config={"feed_forward_proj": "relu"}),
      r"config.json feed_forward_proj='relu' is not supported: the "
      r"project's T5 is v1.1",
    ),
    (
      dict(config={"tie_word_embeddings": None, "scale_decoder_outputs": None}),
      r"config.json tie_word_embeddings=None, scale_decoder_outputs=None is not supported: transformers then "
      r"rescales the decoder output by d_model\*\*-0.5 \(T5 v1.0\)",
    ),
  ],
)
def test_bad_hf_folders(converted, tmp_path, edit, message):
  assert_refused(converted[1], tmp_path, edit, message)


def test_scanned_import_has_the_same_logits(converted, tmp_path):
  _, hf_dir, out = converted
  params = import_scanned(hf_dir, tmp_path / "scanned", out)
  assert "block" in params["encoder"] and "block_0" not in params["decoder"]
  assert params["decoder"]["block"]["layer_0"]["SelfAttention"]["query"]["kernel"].shape[0] == 3
  ids, mask, decoder_ids = inputs()
  got = project_logits(model_config(str(tmp_path / "scanned")), params, ids, mask, decoder_ids)
  want = project_logits(model_config(out), convert.load_params(out), ids, mask, decoder_ids)
  np.testing.assert_allclose(got, want, atol=1e-5)
