"""T5 task: examples by global index, special ids, vocabulary sizing, loss, and an end-to-end train run."""

import importlib.util
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from pretrain.data.tokenized import TokenizedDocs
from pretrain.data import special_tokens
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.errors import PretrainError
from pretrain.objectives import keyed_random
from pretrain.objectives import span_corruption
from pretrain.families import get_task
from pretrain.families.t5 import task as t5_task
from pretrain.families.t5.config import t5_config
from pretrain.train import train

TOKENIZER = StandInTokenizer(500, path="fake.model")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def small_config(inputs_length=32):
  c = t5_config()
  c.data.inputs_length = inputs_length
  c.model.update(
    hidden_size=32,
    intermediate_size=48,
    head_dim=8,
    num_heads=4,
    num_layers=1,
    num_decoder_layers=1,
    dtype="float32",
  )
  return c


def make_docs(seed=0, n_docs=30):
  rng = np.random.default_rng(seed)
  return TokenizedDocs.from_lists(
    [
      [rng.integers(5, 500, rng.integers(3, 30)).tolist() for _ in range(rng.integers(1, 8))]
      for _ in range(n_docs)
    ]
  )


def test_task_sizes_vocabulary_and_lengths():
  task = get_task(small_config(), TOKENIZER)
  assert isinstance(task, t5_task.T5Task)
  assert task.model_config.vocab_size == 640  # 500 pieces + 100 sentinels -> next multiple of 128
  assert t5_task.model_vocab_size(32000, 100) == 32128
  assert task.first_sentinel == 599  # Sentinel k = 599 - k, right above the tokenizer's pieces.
  assert (task.inputs_length, task.targets_length) == (32, 8)
  assert task.tokens_per_example == 40
  assert task.train_flops_per_example() > 0
  json.dumps(task.describe())


def test_published_lengths():
  c = t5_config()
  task = get_task(c, StandInTokenizer(32000, path="x"))
  assert (task.lengths.tokens_length, task.inputs_length, task.targets_length) == (568, 512, 114)
  assert task.model_config.vocab_size == 32128


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize(
  "name, shape",
  [
    ("t5_small", (512, 1024, 64, 6, 8)),
    ("t5_base", (768, 2048, 64, 12, 12)),
    ("t5_large", (1024, 2816, 64, 16, 24)),
  ],
)
def test_published_configs(name, shape):
  """The shapes whose exact parameter counts tests/models/test_t5.py checks, and T5's recipe."""
  c = load_config(name)
  m = get_task(c, StandInTokenizer(32000, path="x")).model_config
  hidden, intermediate, head_dim, heads, layers = shape
  assert (
    m.vocab_size,
    m.hidden_size,
    m.intermediate_size,
    m.head_dim,
    m.num_heads,
    m.num_layers,
    m.num_decoder_layers,
  ) == (32128, hidden, intermediate, head_dim, heads, layers, layers)
  assert m.dropout_rate == 0.0 and c.task.z_loss == 1e-4
  assert (c.data.inputs_length, c.data.targets_length, c.train.batch_size) == (512, 114, 128)
  assert (
    c.optimizer.name,
    c.optimizer.decay,
    c.optimizer.learning_rate,
    c.optimizer.warmup_steps,
  ) == ("adafactor", "rsqrt", 1e-2, 10_000)
  assert load_config("t5_tiny").task.name == "t5"


@pytest.mark.parametrize(
  "section, key, value, message",
  [
    ("model", "vocab_size", 550, "model.vocab_size=550 is smaller"),
    ("data", "targets_length", 7, "targets_length=7 is shorter than the 8"),
    ("model", "d_model", 64, "unknown T5Config keys: d_model"),
  ],
)
def test_bad_configs_are_refused(section, key, value, message):
  c = small_config()
  setattr(c[section], key, value)
  with pytest.raises(PretrainError, match=message):
    get_task(c, TOKENIZER)


def test_examples_that_do_not_fit_are_refused():
  c = small_config(inputs_length=512)
  c.task.extra_ids = 20
  with pytest.raises(PretrainError, match="28 noise spans but there are only 20 sentinels"):
    get_task(c, TOKENIZER).examples(make_docs(), seed=0)
  with pytest.raises(PretrainError, match="one T5 example needs 568"):
    get_task(small_config(inputs_length=512), TOKENIZER).examples(make_docs(n_docs=2), seed=0)


def test_examples_are_span_corrupted_chunks_of_the_stream():
  c = small_config()
  c.data.targets_length = 12  # Padded past the 8 span corruption makes.
  task = get_task(c, TOKENIZER)
  docs = make_docs()
  ex = task.examples(docs, seed=3)
  idx = np.arange(5, 45)
  batch = ex.batch(idx)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
    k: ((40,) + v.shape[1:], v.dtype) for k, v in task.dummy_batch(40).items()
  }
  assert (batch["encoder_input_mask"] == 1).all()  # 32 is reached exactly.
  np.testing.assert_array_equal(
    batch["decoder_loss_weights"], np.repeat([[1.0] * 8 + [0.0] * 4], 40, 0)
  )
  targets = batch["decoder_target_tokens"]
  assert (targets[:, 7] == special_tokens.SEP_ID).all() and (targets[:, 8:] == 0).all()
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], special_tokens.PAD_ID)
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], targets[:, :-1])
  # Reading the same raw chunk and key through span_corrupt gives the same example.
  n = task.lengths.tokens_length
  raw = docs.tokens[(ex.chunk_starts(idx)[:, None] + np.arange(n)) % docs.num_tokens]
  inputs, tgt, _ = span_corruption.span_corrupt(
    raw,
    keyed_random.row_keys(3, idx),
    task.lengths,
    first_sentinel=599,
    eos_id=special_tokens.SEP_ID,
  )
  np.testing.assert_array_equal(batch["encoder_input_tokens"], inputs)
  np.testing.assert_array_equal(targets[:, :8], tgt)


def test_examples_are_deterministic_and_cover_every_chunk_per_epoch():
  task = get_task(small_config(), TOKENIZER)
  docs = make_docs()
  a, b = task.examples(docs, seed=1), task.examples(docs, seed=1)
  row = a.batch(np.array([7, 1000, 3]))
  for k, v in b[1000].items():
    np.testing.assert_array_equal(row[k][1], v)
  assert not np.array_equal(
    task.examples(docs, seed=2)[7]["encoder_input_tokens"], a[7]["encoder_input_tokens"]
  )
  n, size = a.num_chunks, task.lengths.tokens_length
  assert n == docs.num_tokens // size
  for epoch in (0, 1):
    starts = a.chunk_starts(np.arange(epoch * n, (epoch + 1) * n))
    offset = starts.min() % size
    np.testing.assert_array_equal(np.sort((starts - offset) % docs.num_tokens), np.arange(n) * size)
  with pytest.raises(IndexError):
    a.chunk_starts(np.array([-1]))


def test_loss_is_token_cross_entropy_plus_z_loss():
  task = get_task(small_config(), TOKENIZER)
  model = task.build_model()
  batch = task.examples(make_docs(), seed=0).batch(np.arange(4))
  batch["decoder_loss_weights"][:, -2:] = 0.0
  # Random weights of the right shapes (no compiled init needed), large enough for a real z-loss.
  shapes = jax.eval_shape(lambda k: model.init(k, *task.init_args(batch)), jax.random.key(0))[
    "params"
  ]
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32), nn.unbox(shapes)
  )
  logits, (objective, sums) = jax.jit(
    lambda p: (
      model.apply({"params": p}, *task.init_args(batch)),
      task.loss(model, p, batch, task.denominators(batch)),
    )
  )(params)
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  labels, w = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  nll = log_z - np.take_along_axis(logits, labels[..., None], -1)[..., 0]
  expected = ((nll + 1e-4 * log_z**2) * w).sum() / w.sum()
  np.testing.assert_allclose(objective, expected, rtol=1e-5)
  metrics = task.finalize(sums)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-4)
  np.testing.assert_allclose(metrics["cross_entropy"], (nll * w).sum() / w.sum(), rtol=1e-4)
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0 and float(sums["weight"]) == w.sum()


def test_train_end_to_end_loss_falls(text_corpus, tmp_path):
  """pretrain.train.train on T5 with its own recipe (Adafactor, rsqrt schedule): the loss falls."""
  c = small_config()
  c.data.update(source="text", paths=text_corpus, num_threads=1, heldout_fraction=0.05)
  c.tokenizer.vocab_size = 512
  c.optimizer.warmup_steps = 10
  c.train.update(steps=16, batch_size=16, log_every=4)
  c.eval.update(every_steps=16, batch_size=16, num_batches=1)
  c.checkpoint.update(every_steps=16, keep=1)
  c.metrics.progress_bar = False
  workdir = str(tmp_path / "t5")
  last = train(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses
  assert {"cross_entropy", "z_loss", "accuracy", "eval_loss", "eval_accuracy"} <= set(last)
  assert last["step"] == 16 and np.isfinite(last["eval_loss"])
  train_rows = [r for r in rows if "loss" in r]
  np.testing.assert_allclose(
    train_rows[0]["learning_rate"], 1e-2, rtol=1e-6
  )  # Constant for 10 steps,
  np.testing.assert_allclose(
    train_rows[-1]["learning_rate"], 1e-2 * (10 / 15) ** 0.5, rtol=1e-6
  )  # then rsqrt.
