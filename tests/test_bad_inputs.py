"""Bad inputs through `python -m pretrain.train`'s main: each is refused with one `error:` line naming the
field or file, exit 2, no traceback, and an existing workdir's checkpoints left byte for byte as they were.

One small run trains a workdir once; a single subprocess (one jax import) then runs the CLI's main once per
case against that workdir, flags parsed afresh each time, and reports each case's exit code, stderr and
whether the workdir changed.
"""

import hashlib
import inspect
import json
import logging
import os
import subprocess
import sys

import pytest

from pretrain import sharding
from pretrain import config as config_lib
from pretrain import train as train_lib
from pretrain.data import tokenizer_files

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(root) -> dict:
  """Every folder's listing and every file's sha256 under `root`."""
  out = {}
  for d, dirs, files in os.walk(root):
    rel = os.path.relpath(d, root)
    out[rel + "/"] = sorted(dirs)
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
  return out


# Runs main() for each case of the JSON file argv[1]; writes the results as JSON to argv[2].
_DRIVER = (
  inspect.getsource(_snapshot)
  + r"""
import contextlib, hashlib, io, json, os, sys, time, traceback
from absl import flags
from pretrain import train

spec_path, out_path = sys.argv[1:3]
spec = json.load(open(spec_path))
train.define_flags()
before = _snapshot(spec["checkpoints"])
results = {}
for name, args in spec["cases"].items():
  flags.FLAGS.unparse_flags()
  for n in [n for n in flags.FLAGS if n.startswith("config.")]:  # Overrides are defined per parse.
    delattr(flags.FLAGS, n)
  argv = ["pretrain.train", f"--config={spec['config']}", f"--workdir={spec['workdir']}", *args]
  sys.argv = argv  # config_flags reads its overrides from sys.argv.
  err = io.StringIO()
  start = time.time()
  with contextlib.redirect_stderr(err):
    try:
      flags.FLAGS(argv)
      train.main([])
      code = 0
    except SystemExit as e:
      code = e.code
    except BaseException:  # What the CLI would show as a traceback.
      traceback.print_exc()
      code = "raised"
  after = _snapshot(spec["checkpoints"])
  results[name] = {"code": code, "stderr": err.getvalue(), "unchanged": after == before,
                   "seconds": time.time() - start}
  before = after  # Each case is judged on what it changed itself.
json.dump(results, open(out_path, "w"))
"""
)


def _flag(key: str, value) -> str:
  return f"--config.{key}={value}"


# (case, overrides, what the error line must name). Floats spelt as Python reads them (nan, inf).
_VALUES = [
  ("steps_zero", "train.steps", 0),
  ("steps_negative", "train.steps", -4),
  ("batch_zero", "train.batch_size", 0),
  ("batch_negative", "train.batch_size", -16),
  ("grad_accum_zero", "train.grad_accum_steps", 0),
  ("log_every_zero", "train.log_every", 0),
  ("lr_negative", "optimizer.learning_rate", -1e-3),
  ("lr_nan", "optimizer.learning_rate", "nan"),
  ("lr_inf", "optimizer.learning_rate", "inf"),
  ("end_lr_negative", "optimizer.end_learning_rate", -1.0),
  ("end_lr_nan", "optimizer.end_learning_rate", "nan"),
  ("warmup_negative", "optimizer.warmup_steps", -1),
  ("weight_decay_nan", "optimizer.weight_decay", "nan"),
  ("weight_decay_inf", "optimizer.weight_decay", "inf"),
  ("weight_decay_negative", "optimizer.weight_decay", -0.01),
  ("grad_clip_nan", "optimizer.grad_clip_norm", "nan"),
  ("grad_clip_inf", "optimizer.grad_clip_norm", "inf"),
  ("grad_clip_negative", "optimizer.grad_clip_norm", -1.0),
  ("b1_one", "optimizer.b1", 1.0),
  ("b2_nan", "optimizer.b2", "nan"),
  ("eps_negative", "optimizer.eps", -1e-6),
  ("optimizer_name", "optimizer.name", "sgd"),
  ("optimizer_decay", "optimizer.decay", "exponential"),
  ("dropout_nan", "model.dropout_rate", "nan"),
  ("dropout_one", "model.dropout_rate", 1.0),
  ("dropout_negative", "model.dropout_rate", -0.1),
  ("attention_dropout_nan", "model.attention_dropout_rate", "nan"),
  ("attention_dropout_inf", "model.attention_dropout_rate", "inf"),
  ("masked_lm_prob_zero", "data.masked_lm_prob", 0.0),
  ("masked_lm_prob_negative", "data.masked_lm_prob", -0.15),
  ("masked_lm_prob_above_one", "data.masked_lm_prob", 1.5),
  ("masked_lm_prob_nan", "data.masked_lm_prob", "nan"),
  ("short_seq_prob_nan", "data.short_seq_prob", "nan"),
  ("max_predictions_zero", "data.max_predictions_per_seq", 0),
  ("heldout_fraction_one", "data.heldout_fraction", 1.0),
  ("heldout_fraction_nan", "data.heldout_fraction", "nan"),
  ("num_threads_negative", "data.num_threads", -1),
  ("prefetch_negative", "data.prefetch_batches", -1),
  ("mixture_run_length_zero", "data.mixture_run_length", 0),
  ("data_source", "data.source", "parquet"),
  ("model_dtype", "model.dtype", "float17"),
  ("remat_policy", "model.remat_policy", "sometimes"),
  ("attention_backend", "model.attention.backend", "cudnn9"),
  ("attention_position", "model.attention.position", "spiral"),
  ("attention_qk_norm", "model.attention.qk_norm", "batchnorm"),
  ("tokenizer_model_type", "tokenizer.model_type", "wordpiece"),
  ("tokenizer_vocab_zero", "tokenizer.vocab_size", 0),
  ("model_vocab_mismatch", "model.vocab_size", 1000),
  ("mesh_data_not_dividing", "mesh.data", 3),
  ("mesh_fsdp_not_dividing", "mesh.fsdp", 3),
  ("mesh_tensor_too_large", "mesh.tensor", 16),
  ("mesh_data_zero", "mesh.data", 0),
  ("eval_batch_zero", "eval.batch_size", 0),
  ("eval_num_batches_zero", "eval.num_batches", 0),
  ("eval_every_negative", "eval.every_steps", -1),
  ("checkpoint_every_negative", "checkpoint.every_steps", -1),
  ("checkpoint_keep_zero", "checkpoint.keep", 0),
  ("peak_flops_nan", "metrics.peak_flops_per_device", "nan"),
  ("cpu_peak_flops_zero", "metrics.cpu_peak_flops", 0.0),
]
# Each case: (overrides, what its error line must hold: the field's name and the bad value).
_CASES = {
  name: ([_flag(key, value)], [key.rsplit(".", 1)[-1], str(value)]) for name, key, value in _VALUES
}
# Lengths that run into another field: the error names the one set here.
_CASES["max_seq_length_beyond_positions"] = (
  [_flag("data.max_seq_length", 128)],
  ["data.max_seq_length=128", "max_position_embeddings"],
)
_CASES["max_predictions_beyond_length"] = (
  [_flag("data.max_predictions_per_seq", 100)],
  ["max_predictions_per_seq=100", "max_seq_length"],
)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, text_corpus, tiny_config_factory):
  """Malformed files, and the (overrides, expected name) case of each."""
  root = tmp_path_factory.mktemp("bad-files")
  config = tiny_config_factory(text_corpus)
  good_model = tokenizer_files.load_tokenizer(config.tokenizer, config.data).path
  with open(good_model, "rb") as f:
    model_bytes = f.read()
  truncated = root / "truncated.model"
  truncated.write_bytes(model_bytes[: len(model_bytes) // 3])
  not_json = root / "tokenizer.json"
  not_json.write_text('{"model": {"type": "BPE", "vocab": {"a": 0,', encoding="utf-8")
  empty_model = root / "empty.model"
  empty_model.write_bytes(b"")
  blank = root / "blank.txt"
  blank.write_text("\n \n\n\t\n\n", encoding="utf-8")
  binary = root / "binary.txt"
  binary.write_bytes(bytes(range(256)) * 64 + b"\x00\xff\xfe" * 1000)
  missing = root / "missing.txt"
  tok = f"--config.tokenizer.path={good_model}"
  return {
    "truncated_sentencepiece": ([f"--config.tokenizer.path={truncated}"], [str(truncated)]),
    "empty_sentencepiece": ([f"--config.tokenizer.path={empty_model}"], [str(empty_model)]),
    "tokenizer_json_not_json": ([f"--config.tokenizer.path={not_json}"], [str(not_json)]),
    "blank_corpus": ([f"--config.data.paths={blank}", tok], [str(blank)]),
    "blank_corpus_training_tokenizer": ([f"--config.data.paths={blank}"], [str(blank)]),
    "binary_corpus": ([f"--config.data.paths={binary}", tok], [str(binary)]),
    "binary_corpus_training_tokenizer": ([f"--config.data.paths={binary}"], [str(binary)]),
    "missing_corpus": ([f"--config.data.paths={missing}", tok], [str(missing)]),
  }


@pytest.fixture(scope="module")
def results(tmp_path_factory, text_corpus, tiny_config_factory, bad_files):
  """{case: {code, stderr, unchanged}} of every case run against one trained workdir, and its snapshots."""
  root = tmp_path_factory.mktemp("bad-inputs")
  config = tiny_config_factory(text_corpus)
  config.train.steps = 4
  config.checkpoint.every_steps = 2
  config.eval.every_steps = 2
  workdir = root / "run"
  train_lib.train(config, str(workdir))
  checkpoints = workdir / "checkpoints"
  before = _snapshot(checkpoints)
  assert len([k for k in before if k.endswith("/")]) > 2, before  # Steps 2 and 4 were saved.
  config_file = root / "config.py"
  config_file.write_text(
    f"import ml_collections\n\n\ndef get_config():\n"
    f"  return ml_collections.ConfigDict({config.to_dict()!r})\n"
  )
  cases = {name: args for name, (args, _) in {**_CASES, **bad_files}.items()}
  spec = root / "spec.json"
  spec.write_text(
    json.dumps(
      dict(config=str(config_file), workdir=str(workdir), checkpoints=str(checkpoints), cases=cases)
    )
  )
  out = root / "results.json"
  r = subprocess.run(
    [sys.executable, "-c", _DRIVER, str(spec), str(out)],
    capture_output=True,
    text=True,
    cwd=_REPO,
    env=dict(os.environ),
  )
  assert r.returncode == 0 and out.exists(), r.stderr[-5000:]
  return json.loads(out.read_text()), before, _snapshot(checkpoints)


def _check(result: dict, names: list[str]):
  """One `error:` line holding every one of `names`, exit 2, no traceback, the checkpoints untouched."""
  assert "Traceback" not in result["stderr"], result["stderr"]
  errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result["stderr"]
  assert all(n in errors[0] for n in names), (names, errors[0])
  assert result["code"] == 2, result
  assert result["unchanged"], "the workdir's checkpoints changed"


@pytest.mark.parametrize("case", sorted(_CASES))
def test_bad_value_is_refused(results, case):
  _check(results[0][case], _CASES[case][1])


@pytest.mark.parametrize(
  "case",
  [
    "truncated_sentencepiece",
    "empty_sentencepiece",
    "tokenizer_json_not_json",
    "blank_corpus",
    "blank_corpus_training_tokenizer",
    "binary_corpus",
    "binary_corpus_training_tokenizer",
    "missing_corpus",
  ],
)
def test_malformed_file_is_refused(results, bad_files, case):
  _check(results[0][case], bad_files[case][1])


def test_checkpoints_are_byte_identical_after_all_cases(results):
  _, before, after = results
  assert after == before
  assert len(results[0]) == len(_CASES) + 8


def test_warmup_longer_than_the_run_is_accepted_with_a_warning(tiny_config, caplog):
  # Short smoke runs of the example configs (bert_tiny: warmup 20) are common; they only never reach
  # the peak learning rate, which the log says.
  tiny_config.optimizer.warmup_steps = 100
  with caplog.at_level(logging.WARNING, logger="pretrain.train"):
    config_lib.validate(tiny_config, sharding.make_mesh(tiny_config.mesh))
  assert "optimizer.warmup_steps=100 is longer than the run (train.steps=6)" in caplog.text
