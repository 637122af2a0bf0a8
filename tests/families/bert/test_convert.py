"""BERT <-> HF transformers: logit parity, round trips, scanned export, and every bad input."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from pretrain import convert
from pretrain import sample
from pretrain.convert import checkpoints
from pretrain.data.tokenizer_files import open_tokenizer
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert_model
from pretrain.families.roberta import convert as roberta_convert
from pretrain.families import get_task
from pretrain.train import train

from hf_folders import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  TOL,
  assert_converts_to,
  assert_refused,
  hf_and_converted,
  hf_outputs,
  import_scanned,
  max_diff,
  padded,
  params_equal,
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
  max_position_embeddings=40,
  type_vocab_size=2,
)


def make_hf(cls, path, config_cls=transformers.BertConfig, seed=0, **overrides):
  """A random-weight HF model saved as safetensors; every weight perturbed so no bias or LayerNorm is trivial."""
  torch.manual_seed(seed)
  return perturb_and_save(cls(config_cls(**dict(HF_CONFIG, **overrides))).eval(), path)


def inputs(pad_id=0, seed=0):
  """ids, token types and attention mask of 3 sequences of 12, 7 and 3 real tokens, right-padded with pad_id."""
  ids, mask = padded(np.random.default_rng(seed), VOCAB, LENGTH, pad_id)
  types = ((np.arange(LENGTH)[None] >= np.array([[6], [4], [1]])) * mask).astype(np.int32)
  return ids, types, mask


def hf_forward(model, ids, types, mask):
  return hf_outputs(model, input_ids=ids, token_type_ids=types, attention_mask=mask)


def project_forward(out, ids, types, mask):
  """(mlm logits at every position, nsp logits) of a converted folder's params."""
  cfg = bert_model.BertConfig.from_dict(convert.load_config(out).model.to_dict())
  return apply(bert_model.BertForPreTraining(cfg), convert.load_params(out), ids, types, mask)


def apply(module, params, *args):
  return jax.jit(lambda p, *a: module.apply({"params": p}, *a))(params, *args)


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
  """(HF BertForPreTraining, its folder, the converted folder)."""
  return hf_and_converted(
    tmp_path_factory, "bert", lambda path: make_hf(transformers.BertForPreTraining, path)
  )


def test_pretraining_logit_parity_at_every_position(pretraining):
  model, _, out = pretraining
  ids, types, mask = inputs()
  expected = hf_forward(model, ids, types, mask)
  mlm, nsp = project_forward(out, ids, types, mask)
  assert mlm.shape == (3, LENGTH, VOCAB) and nsp.shape == (3, 2)
  assert max_diff(mlm, expected.prediction_logits) <= TOL
  assert max_diff(nsp, expected.seq_relationship_logits) <= TOL
  assert float(expected.prediction_logits.abs().max()) > 1.0  # Not trivially small logits.


def test_converted_config_and_source(pretraining):
  _, hf_dir, out = pretraining
  cfg = convert.load_config(out)
  assert cfg.task.name == "bert" and cfg.data.next_sentence_prediction
  assert (
    cfg.model.layer_norm_eps == 1e-12 and cfg.model.vocab_size == VOCAB == cfg.tokenizer.vocab_size
  )
  assert (cfg.model.num_layers, cfg.model.num_heads, cfg.model.pooler, cfg.model.nsp_head) == (
    2,
    2,
    True,
    True,
  )
  assert sorted(os.listdir(out)) == ["config.json", "config.py", "convert.json", "params"]
  source = read_json(out, "convert.json")
  assert source["architecture"] == "BertForPreTraining" and source["hf_dir"] == os.path.abspath(
    hf_dir
  )
  assert source["special_ids"]["pad_token_id"] == 0 and source["initialized_fresh"] == []


def test_hf_gelu_is_exact_and_eps_carries_over():
  x = torch.linspace(-6, 6, 2001)
  hf_gelu = transformers.activations.ACT2FN["gelu"](x).numpy()
  np.testing.assert_allclose(jax.jit(bert_model.gelu)(x.numpy()), hf_gelu, atol=1e-6, rtol=0)
  tanh = transformers.activations.ACT2FN["gelu_new"](x).numpy()
  assert np.abs(tanh - hf_gelu).max() > 1e-4  # The check above can tell the two apart.
  assert transformers.BertConfig().layer_norm_eps == 1e-12


def test_round_trip_is_bit_exact_and_transformers_loads_it(pretraining, tmp_path):
  model, _, out = pretraining
  config = convert.to_hf(out, str(tmp_path / "hf2"))
  assert config["architectures"] == ["BertForPreTraining"] and config["dtype"] == "float32"
  reloaded = reload(transformers.BertForPreTraining, tmp_path / "hf2")
  ids, types, mask = inputs(seed=1)
  a, b = hf_forward(model, ids, types, mask), hf_forward(reloaded, ids, types, mask)
  assert max_diff(a.prediction_logits, b.prediction_logits) == 0.0
  assert_converts_to(tmp_path / "hf2", tmp_path / "again", out)


def test_masked_lm_parity_and_round_trip(tmp_path):
  model = make_hf(transformers.BertForMaskedLM, tmp_path / "hf", seed=1)
  out = str(tmp_path / "converted")
  convert.from_hf(str(tmp_path / "hf"), out)
  cfg = convert.load_config(out)
  assert (cfg.model.pooler, cfg.model.nsp_head, cfg.data.next_sentence_prediction) == (
    False,
    False,
    False,
  )
  ids, types, mask = inputs()
  mlm, nsp = project_forward(out, ids, types, mask)
  assert nsp is None and max_diff(mlm, hf_forward(model, ids, types, mask).logits) <= TOL
  assert convert.to_hf(out, str(tmp_path / "hf2"))["architectures"] == ["BertForMaskedLM"]
  reload(transformers.BertForMaskedLM, tmp_path / "hf2")


def test_bert_model_gets_fresh_heads_and_encoder_parity(tmp_path):
  model = make_hf(transformers.BertModel, tmp_path / "hf", seed=2)
  out = str(tmp_path / "converted")
  source = convert.from_hf(str(tmp_path / "hf"), out)
  assert source["initialized_fresh"] == ["mlm_head", "nsp_head"]
  params = convert.load_params(out)
  np.testing.assert_array_equal(params["mlm_head"]["output_bias"], 0.0)
  cfg = bert_model.BertConfig.from_dict(convert.load_config(out).model.to_dict())
  ids, types, mask = inputs()
  sequence, pooled = apply(bert_model.BertModel(cfg), params["bert"], ids, types, mask)
  expected = hf_forward(model, ids, types, mask)
  assert max_diff(sequence, expected.last_hidden_state) <= TOL
  assert max_diff(pooled, expected.pooler_output) <= TOL


def test_scanned_import_and_export_from_a_training_workdir(pretraining, tmp_path):
  model, hf_dir, out = pretraining
  params = import_scanned(hf_dir, tmp_path / "scanned", out)
  cfg = convert.load_config(str(tmp_path / "scanned"))
  kernel = params["bert"]["encoder"]["layers"]["intermediate"]["kernel"]
  assert cfg.model.scan_layers and kernel.shape == (2, 32, 64)
  ids, types, mask = inputs()
  mlm, _ = apply(
    bert_model.BertForPreTraining(bert_model.BertConfig.from_dict(cfg.model.to_dict())),
    params,
    ids,
    types,
    mask,
  )
  assert max_diff(mlm, hf_forward(model, ids, types, mask).prediction_logits) <= TOL

  # A training workdir's checkpoint: TrainState with optimizer state, config with vocab_size 0 (the tokenizer's).
  config = cfg.to_dict()
  config["model"]["vocab_size"] = 0
  config["_tokenizer"] = {
    "vocab_size": VOCAB,
    "fingerprint": "x",
    "path": "x",
    "special_ids": {"pad": 5, "unk": 1, "cls": 7, "sep": 8, "mask": 9, "eos": 8},
  }
  adam = {"mu": jax.tree.map(np.zeros_like, params), "nu": jax.tree.map(np.ones_like, params)}
  workdir = save_checkpoint(
    tmp_path / "run", 7, params, config, opt_state=adam, data_state={"next_batch": 0}, keep=2
  )
  convert.to_hf(workdir, str(tmp_path / "exported"))
  reloaded = reload(transformers.BertForPreTraining, tmp_path / "exported")
  assert reloaded.config.pad_token_id == 5  # The pad id of the tokenizer the run trained with.
  a, b = hf_forward(model, ids, types, mask), hf_forward(reloaded, ids, types, mask)
  assert max_diff(a.prediction_logits, b.prediction_logits) == 0.0
  with pytest.raises(PretrainError, match="no checkpoint of step 3"):
    convert.to_hf(workdir, str(tmp_path / "nope"), step=3)


def test_a_run_trained_from_the_default_config_exports(tiny_config, tmp_path):
  """The quick-start config leaves pooler/nsp_head/... at the model's defaults; to-hf fills them in."""
  c = tiny_config
  c.train.update(steps=2, log_every=1)
  c.eval.every_steps = 0
  c.checkpoint.update(every_steps=2, async_save=False)
  c.model.dtype = "float32"
  workdir = str(tmp_path / "run")
  train(c, workdir)
  convert.to_hf(workdir, str(tmp_path / "hf"))
  hf = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
  config, _, task, params, _ = sample.load_run(workdir)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, task.vocab_size, (2, 16)).astype(np.int32)
  types = np.broadcast_to((np.arange(16) >= 8).astype(np.int32), (2, 16))
  mask = np.ones_like(ids)
  mlm, nsp = apply(bert_model.BertForPreTraining(task.model_config), params, ids, types, mask)
  ref = hf_forward(hf, ids, types, mask)
  assert (
    max_diff(mlm, ref.prediction_logits) <= TOL
    and max_diff(nsp, ref.seq_relationship_logits) <= TOL
  )
  assert hf.config.pad_token_id == 0 and config.model.vocab_size == 0


def test_pre_layer_norm_is_refused_by_to_hf(pretraining, tmp_path):
  """HF's BERT and RoBERTa have post-LN blocks only: a pre-LN run is refused, nothing written."""
  _, _, out = pretraining
  params = convert.load_params(out)
  params["bert"]["encoder"]["final_layer_norm"] = {
    "scale": np.ones(32, np.float32),
    "bias": np.zeros(32, np.float32),
  }
  config = convert.load_config(out).to_dict()
  config["model"]["pre_layer_norm"] = True
  config["_tokenizer"] = {"vocab_size": VOCAB, "fingerprint": "f", "path": "p"}
  workdir = save_checkpoint(tmp_path / "run", 3, params, config)
  message = "model.pre_layer_norm=True cannot be exported: BertForPreTraining has post-LayerNorm"
  with pytest.raises(PretrainError, match=message):
    convert.to_hf(workdir, str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()
  model = roberta_convert.complete_model(dict(config["model"], position_offset=2))
  with pytest.raises(PretrainError, match="RobertaForMaskedLM has post-LayerNorm blocks only"):
    roberta_convert.params_to_hf(params, model, {"pad_token_id": 1}, None)


def test_the_hf_folders_vocabulary_comes_along(pretraining, tmp_path):
  _, hf_dir, _ = pretraining
  src = tmp_path / "hf"
  shutil.copytree(hf_dir, src)
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
  (src / "vocab.txt").write_text("\n".join(words) + "\n")
  out = tmp_path / "out"
  assert convert.from_hf(str(src), str(out))["tokenizer"] == "vocab.txt"
  assert (out / "vocab.txt").read_text() == (src / "vocab.txt").read_text()
  cfg = convert.load_config(str(out))
  assert cfg.tokenizer.path == str(
    out / "vocab.txt"
  )  # Relative in config.json: the folder can move.
  tok = open_tokenizer(cfg.tokenizer.path)
  assert get_task(cfg, tok).vocab_size == VOCAB and tok.encode(["w3 w17"]) == [[8, 22]]
  # A vocabulary the model cannot take is refused, and nothing is written.
  (src / "vocab.txt").write_text("\n".join(words[:-1]) + "\n")
  with pytest.raises(
    PretrainError,
    match=r"vocab.txt does not fit the model: model.vocab_size=99 but the "
    r"tokenizer .* has 98 pieces",
  ):
    convert.from_hf(str(src), str(tmp_path / "out2"))
  assert not os.path.exists(tmp_path / "out2")


def test_load_params_into_a_target_layout_and_sharding(pretraining):
  _, _, out = pretraining
  cfg = bert_model.BertConfig.from_dict(
    dict(convert.load_config(out).model.to_dict(), scan_layers=True)
  )
  mesh = jax.make_mesh((8,), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    nn.unbox(bert_model.abstract_params(cfg)),
  )
  params = convert.load_params(out, target)
  stacked = checkpoints.stack_layers(convert.load_params(out))
  assert params_equal(jax.device_get(params), stacked)
  assert params["bert"]["encoder"]["layers"]["output"]["kernel"].sharding == replicated
  # The stored (unscanned) layout is read straight into the shardings.
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  flat = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    nn.unbox(bert_model.abstract_params(dataclasses.replace(cfg, scan_layers=False))),
  )
  flat["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"] = jax.ShapeDtypeStruct(
    (32, 64), jnp.float32, sharding=sharded
  )
  params = convert.load_params(out, flat)
  assert params["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"].sharding == sharded
  assert params_equal(jax.device_get(params), convert.load_params(out))
  wrong = jax.tree.map(lambda x: x, target)
  emb = wrong["bert"]["embeddings"]["word_embeddings"]
  emb["embedding"] = jax.ShapeDtypeStruct((VOCAB + 1, 32), jnp.float32)
  with pytest.raises(
    PretrainError,
    match=r"word_embeddings/embedding has shape \(99, 32\) but the model's is "
    r"\(100, 32\)",
  ):
    convert.load_params(out, wrong)


# Bad input: one clear error, nothing written.


@pytest.mark.parametrize(
  "edit, message",
  [
    (
      dict(config={"architectures": ["BertForTokenClassification"]}),
      r"config.json architectures=\['BertForTokenClassification'\] is not supported",
    ),
    (
      dict(config={"model_type": "xlnet"}),
      r"config.json model_type='xlnet' is not supported; supported: 'bert'",
    ),
    (
      dict(drop=["bert.encoder.layer.1.output.dense.bias"]),
      r"tensor bert.encoder.layer.1.output.dense.bias is missing",
    ),
    (dict(drop=["cls.seq_relationship.weight"]), r"tensor cls.seq_relationship.weight is missing"),
    (
      dict(config={"intermediate_size": 48}),
      r"tensor bert.encoder.layer.0.intermediate.dense.weight has shape \(64, 32\) but config.json "
      r"\(hidden_size=32, intermediate_size=48\) implies \(48, 32\)",
    ),
    (
      dict(config={"vocab_size": 120}),
      r"vocab mismatch: tensor bert.embeddings.word_embeddings.weight has 99 rows but config.json vocab_size=120",
    ),
    (
      dict(config={"num_hidden_layers": 1}),
      r"tensor bert.encoder.layer.1.\S+ is layer 1 but config.json "
      r"num_hidden_layers=1",
    ),
    (
      dict(add={"bert.encoder.extra.weight": np.zeros(3, np.float32)}),
      r"unexpected tensor bert.encoder.extra.weight",
    ),
    (
      dict(add={"cls.predictions.decoder.weight": np.zeros((VOCAB, 32), np.float32)}),
      r"cls.predictions.decoder.weight differs from bert.embeddings.word_embeddings.weight: an untied MLM decoder",
    ),
    (
      dict(config={"hidden_act": "gelu_new"}),
      r"config.json hidden_act='gelu_new' is not supported",
    ),
    (dict(config={"num_attention_heads": 3}), r"hidden_size 32 is not divisible by num_heads 3"),
  ],
)
def test_bad_hf_folders(pretraining, tmp_path, edit, message):
  assert_refused(pretraining[1], tmp_path, edit, message)


def test_pickle_needs_allow_pickle(pretraining, tmp_path):
  model, hf_dir, out = pretraining
  hf = tmp_path / "bin"
  hf.mkdir()
  shutil.copy(os.path.join(hf_dir, "config.json"), hf)
  torch.save(
    model.state_dict(), hf / "pytorch_model.bin"
  )  # transformers 5 writes safetensors only.
  with pytest.raises(PretrainError, match="only pytorch_model.bin.*--allow_pickle"):
    convert.from_hf(str(hf), str(tmp_path / "a"))
  assert not (tmp_path / "a").exists()
  assert_converts_to(hf, tmp_path / "b", out, allow_pickle=True)


def test_bfloat16_and_sharded_safetensors(pretraining, tmp_path):
  _, hf_dir, out = pretraining
  tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
  names = sorted(tensors)
  sharded = tmp_path / "sharded"
  sharded.mkdir()
  shutil.copy(os.path.join(hf_dir, "config.json"), sharded)
  weight_map = {}
  for i, part in enumerate((names[:10], names[10:])):
    save_file(
      {k: tensors[k] for k in part},
      str(sharded / f"model-{i}.safetensors"),
      metadata={"format": "pt"},
    )
    weight_map.update({k: f"model-{i}.safetensors" for k in part})
  (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  assert_converts_to(sharded, tmp_path / "a", out)

  half = tmp_path / "bf16"
  model = transformers.BertForPreTraining.from_pretrained(hf_dir, dtype=torch.bfloat16)
  model.save_pretrained(str(half))
  convert.from_hf(str(half), str(tmp_path / "b"))
  expected = jax.tree.map(
    lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32), convert.load_params(out)
  )
  actual = convert.load_params(str(tmp_path / "b"))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(actual)) and params_equal(
    actual, expected
  )


def test_existing_output_and_bad_checkpoints(pretraining, tmp_path):
  _, hf_dir, out = pretraining
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("x")
  with pytest.raises(PretrainError, match="already exists and is not an empty directory"):
    convert.from_hf(hf_dir, str(tmp_path / "full"))
  with pytest.raises(PretrainError, match="already exists"):
    convert.to_hf(out, str(tmp_path / "full"))
  assert os.listdir(tmp_path / "full") == ["keep.txt"]
  with pytest.raises(PretrainError, match="holds no checkpoint"):
    convert.to_hf(str(tmp_path / "full"), str(tmp_path / "x"))
  bad = tmp_path / "bad_vocab"
  shutil.copytree(out, bad)
  config = json.loads((bad / "config.json").read_text())
  config["model"]["vocab_size"] = 100
  (bad / "config.json").write_text(json.dumps(config))
  with pytest.raises(
    PretrainError,
    match=r"word_embeddings/embedding has shape \(99, 32\) but the model's is "
    r"\(100, 32\)",
  ):
    convert.to_hf(str(bad), str(tmp_path / "x"))
  assert sorted(os.listdir(tmp_path)) == ["bad_vocab", "full"]  # No output, no temporary folders.


def test_cli(pretraining, tmp_path, capsys):
  _, hf_dir, out = pretraining
  from pretrain.convert import __main__ as cli  # pylint: disable=import-outside-toplevel

  assert cli.main(["to-hf", "--ckpt", out, "--out", str(tmp_path / "hf")]) == 0
  assert json.loads(capsys.readouterr().out)["architecture"] == "BertForPreTraining"
  root = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  )
  env = dict(os.environ, PYTHONPATH=root)
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "pretrain.convert",
      "from-hf",
      "--hf_dir",
      str(tmp_path / "none"),
      "--out",
      str(tmp_path / "o"),
    ],
    capture_output=True,
    text=True,
    env=env,
    check=False,
  )
  assert run.returncode == 2 and run.stdout == ""
  assert (
    run.stderr.strip().splitlines()[-1] == f"error: --hf_dir {tmp_path / 'none'} is not a directory"
  )
  assert not (tmp_path / "o").exists()
