"""T5 v1.1 <-> HF transformers: logit parity with padding, the head layouts, round trips, a project-trained export,
bad input."""
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
from pretrain.families.t5 import model as t5_model
from pretrain.training.step import TrainState

VOCAB, ENC_LENGTH, DEC_LENGTH = 256, 12, 9
# Few buckets and a short max_distance, so that 12 positions reach the log-spaced and the last buckets;
# num_heads * d_kv = 24 differs from d_model, as in T5 v1.1 small (6 x 64 = 384 vs 512).
HF_CONFIG = dict(vocab_size=VOCAB, d_model=32, d_kv=6, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=3,
                 relative_attention_num_buckets=8, relative_attention_max_distance=10, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, decoder_start_token_id=0)
TOL = 1e-4


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
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  return model.eval()


def inputs(seed=0):
  """Encoder ids and mask of 3 sequences of 12, 7 and 3 real tokens (right-padded with 0); decoder ids from 0."""
  rng = np.random.default_rng(seed)
  mask = (np.arange(ENC_LENGTH)[None] < np.array([[12], [7], [3]])).astype(np.int32)
  ids = np.where(mask > 0, rng.integers(2, VOCAB, (3, ENC_LENGTH)), 0).astype(np.int32)
  decoder_ids = np.concatenate([np.zeros((3, 1)), rng.integers(2, VOCAB, (3, DEC_LENGTH - 1))], 1).astype(np.int32)
  return ids, mask, decoder_ids


def hf_logits(model, ids, mask, decoder_ids):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                 decoder_input_ids=torch.tensor(decoder_ids, dtype=torch.long)).logits.numpy()


def model_config(out) -> t5_model.T5Config:
  """The converted folder's model, computing in float32 (the converted config keeps T5's bfloat16 recipe)."""
  return t5_model.T5Config.from_dict(dict(convert.load_config(out).model.to_dict(), dtype="float32"))


@functools.cache
def _apply(cfg: t5_model.T5Config):
  return jax.jit(t5_model.T5Model(cfg).apply)


def project_logits(cfg, params, ids, mask, decoder_ids):
  return np.asarray(_apply(cfg)({"params": params}, ids, mask, decoder_ids))


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def params_equal(a, b):
  fa, fb = checkpoints.flatten(a), checkpoints.flatten(b)
  return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(HF model with an untied head, its folder, the converted folder)."""
  root = tmp_path_factory.mktemp("t5")
  model = make_hf(root / "hf")
  convert.from_hf(str(root / "hf"), str(root / "converted"))
  return model, str(root / "hf"), str(root / "converted")


def test_logit_parity_with_padding(converted):
  model, _, out = converted
  cfg = convert.load_config(out)
  assert cfg.task.name == "t5" and cfg.model.attention.position == "relative_bias"
  m = cfg.model
  assert (m.vocab_size, m.hidden_size, m.head_dim, m.num_heads, m.intermediate_size, m.num_layers,
          m.num_decoder_layers) == (VOCAB, 32, 6, 4, 48, 2, 3)
  assert (m.attention.relative_num_buckets, m.attention.relative_max_distance, m.dropout_rate) == (8, 10, 0.1)
  assert (cfg.task.extra_ids, cfg.tokenizer.vocab_size, m.dtype) == (100, VOCAB - 100, "bfloat16")
  source = json.loads(open(os.path.join(out, "convert.json")).read())
  assert source["special_ids"] == {"pad_token_id": 0, "bos_token_id": None, "eos_token_id": 1}
  assert source["skipped_tensors"] == [] and source["initialized_fresh"] == []
  ids, mask, decoder_ids = inputs()
  expected = hf_logits(model, ids, mask, decoder_ids)
  actual = project_logits(model_config(out), convert.load_params(out), ids, mask, decoder_ids)
  assert actual.shape == (3, DEC_LENGTH, VOCAB) and max_diff(actual, expected) <= TOL
  assert np.abs(expected).max() > 1.0  # Not trivially small logits.
  # Padding matters: the same inputs without a mask give other logits in the short rows.
  unmasked = project_logits(model_config(out), convert.load_params(out), ids, np.ones_like(mask), decoder_ids)
  assert max_diff(unmasked[2], expected[2]) > 0.1


def test_relative_bias_of_block_0_is_the_stack_table(converted):
  _, hf_dir, out = converted
  tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
  params = convert.load_params(out)
  for stack in ("encoder", "decoder"):
    table = tensors[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]  # [buckets, heads]
    np.testing.assert_array_equal(params[stack]["relative_attention_bias"]["embedding"], table)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], tensors["lm_head.weight"].T)
  assert not np.array_equal(params["lm_head"]["kernel"], params["shared"]["embedding"].T)


def test_round_trip_is_bit_exact_and_transformers_loads_it(converted, tmp_path):
  model, hf_dir, out = converted
  config = convert.to_hf(out, str(tmp_path / "hf2"))
  assert config["architectures"] == ["T5ForConditionalGeneration"] and config["dtype"] == "float32"
  assert (config["tie_word_embeddings"], config["scale_decoder_outputs"], config["feed_forward_proj"]) == (
      False, False, "gated-gelu")
  assert (config["pad_token_id"], config["eos_token_id"], config["decoder_start_token_id"]) == (0, 1, 0)
  assert sorted(load_file(str(tmp_path / "hf2" / "model.safetensors"))) == sorted(
      load_file(os.path.join(hf_dir, "model.safetensors")))
  reloaded, info = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf2"),
                                                                           output_loading_info=True)
  assert not any(info.values()), info  # No missing, unexpected or mismatched keys.
  ids, mask, decoder_ids = inputs(seed=1)
  assert max_diff(hf_logits(model, ids, mask, decoder_ids), hf_logits(reloaded.eval(), ids, mask, decoder_ids)) == 0
  convert.from_hf(str(tmp_path / "hf2"), str(tmp_path / "again"))
  assert params_equal(convert.load_params(out), convert.load_params(str(tmp_path / "again")))


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
  tensors.update({"encoder.embed_tokens.weight": tensors["shared.weight"],
                  "decoder.embed_tokens.weight": tensors["shared.weight"],
                  "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight": np.ones((8, 4), np.float32)})
  save_file(tensors, str(published / "model.safetensors"), metadata={"format": "pt"})
  source = convert.from_hf(str(published), str(tmp_path / "from_published"))
  assert source["skipped_tensors"] == ["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
                                       "decoder.embed_tokens.weight", "encoder.embed_tokens.weight"]
  assert params_equal(convert.load_params(out), convert.load_params(str(tmp_path / "from_published")))


def test_export_of_a_model_trained_here(converted, tmp_path):
  """A training workdir: vocab_size 0 (tokenizer pieces + 100 sentinels, rounded up to 128), [SEP] = 3 is EOS."""
  _, _, out = converted
  params = convert.load_params(out)
  config = convert.load_config(out).to_dict()
  config["model"].update(vocab_size=0, dtype="float32")
  config["_tokenizer"] = {"vocab_size": 150, "fingerprint": "f", "path": "p"}  # 150 + 100 -> 256 rows.
  ckpt = Checkpointer(str(tmp_path / "run"), every_steps=1, keep=1, async_save=False)
  ckpt.save(4, TrainState(step=np.int32(4), params=params, opt_state={}), {}, config, {})
  ckpt.close()
  hf_config = convert.to_hf(str(tmp_path / "run"), str(tmp_path / "hf"))
  assert hf_config["vocab_size"] == VOCAB and "bos_token_id" not in hf_config
  assert (hf_config["pad_token_id"], hf_config["eos_token_id"], hf_config["decoder_start_token_id"]) == (0, 3, 0)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
  ids, mask, decoder_ids = inputs(seed=3)
  expected = project_logits(model_config(out), params, ids, mask, decoder_ids)
  assert max_diff(hf_logits(reloaded, ids, mask, decoder_ids), expected) <= TOL


# Bad input: one clear error, nothing written.


def _edited(src, dst, config=None, drop=(), add=None):
  """A copy of an HF folder with config.json fields replaced (None: removed) and tensors dropped or added."""
  shutil.copytree(src, dst)
  if config:
    with open(os.path.join(dst, "config.json")) as f:
      c = json.load(f)
    c.update(config)
    c = {k: v for k, v in c.items() if v is not None}
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(c, f)
  if drop or add:
    path = os.path.join(dst, "model.safetensors")
    tensors = {k: v for k, v in load_file(path).items() if k not in drop}
    tensors.update(add or {})
    save_file(tensors, path, metadata={"format": "pt"})
  return str(dst)


@pytest.mark.parametrize("edit, message", [
    (dict(config={"architectures": ["T5EncoderModel"]}),
     r"config.json architectures=\['T5EncoderModel'\] is not supported for model_type 't5'; "
     r"supported: T5ForConditionalGeneration"),
    (dict(drop=["decoder.block.2.layer.1.EncDecAttention.k.weight"]),
     r"tensor decoder.block.2.layer.1.EncDecAttention.k.weight is missing"),
    (dict(drop=["lm_head.weight"], config={"tie_word_embeddings": False, "scale_decoder_outputs": None}),
     r"tensor lm_head.weight is missing"),
    (dict(config={"d_ff": 64}), r"tensor encoder.block.0.layer.1.DenseReluDense.wi_0.weight has shape \(48, 32\) but "
                                r"config.json \(d_model=32, d_ff=64\) implies \(64, 32\)"),
    (dict(config={"relative_attention_num_buckets": 16}),
     r"tensor encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight has shape \(8, 4\) but "
     r"config.json \(relative_attention_num_buckets=16, num_heads=4\) implies \(16, 4\)"),
    (dict(config={"num_decoder_layers": 2}), r"tensor decoder.block.2.\S+ is decoder block 2 but config.json "
                                             r"num_decoder_layers=2"),
    (dict(add={"encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": np.ones((8, 4), np.float32)}),
     r"unexpected tensor encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"),
    (dict(add={"encoder.embed_tokens.weight": np.zeros((VOCAB, 32), np.float32)}),
     r"tensor encoder.embed_tokens.weight differs from shared.weight"),
    (dict(config={"feed_forward_proj": "relu"}), r"config.json feed_forward_proj='relu' is not supported: the "
                                                 r"project's T5 is v1.1"),
    (dict(config={"tie_word_embeddings": None, "scale_decoder_outputs": None}),
     r"config.json tie_word_embeddings=None, scale_decoder_outputs=None is not supported: transformers then "
     r"rescales the decoder output by d_model\*\*-0.5 \(T5 v1.0\)"),
])
def test_bad_hf_folders(converted, tmp_path, edit, message):
  src = _edited(converted[1], tmp_path / "bad", **edit)
  out = tmp_path / "out" / "converted"
  with pytest.raises(PretrainError, match=message):
    convert.from_hf(src, str(out))
  assert not (tmp_path / "out").exists()  # Nothing written, not even the parent.


def test_scanned_import_has_the_same_logits(converted, tmp_path):
  _, hf_dir, out = converted
  scanned = str(tmp_path / "scanned")
  convert.from_hf(hf_dir, scanned, scan_layers=True)
  params = convert.load_params(scanned)
  assert "block" in params["encoder"] and "block_0" not in params["decoder"]
  assert params["decoder"]["block"]["layer_0"]["SelfAttention"]["query"]["kernel"].shape[0] == 3
  ids, mask, decoder_ids = inputs()
  got = project_logits(model_config(scanned), params, ids, mask, decoder_ids)
  want = project_logits(model_config(out), convert.load_params(out), ids, mask, decoder_ids)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert params_equal(checkpoints.unstack_layers(params), convert.load_params(out))
