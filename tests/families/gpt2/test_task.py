"""GPT-2 task: causal examples (chunked, packed), loss and metrics, and the train loop end to end."""

import functools
import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from pretrain.data.pipeline import BatchStream
from pretrain.data.tokenized import TokenizedDocs
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.errors import PretrainError
from pretrain.families.gpt2 import examples as ce
from pretrain.families.gpt2 import task as gpt2_task
from pretrain.families.gpt2.config import gpt2_config
from pretrain.train import train

EOT = ce.EOT_ID


def _docs(lengths, first_id=5):
  """Documents of the given token counts (two sentences each where possible); ids count up from first_id."""
  ids, out = iter(range(first_id, first_id + sum(lengths))), []
  for n in lengths:
    toks = [next(ids) for _ in range(n)]
    out.append([toks[: n // 2], toks[n // 2 :]])
  return TokenizedDocs.from_lists(out)


def _random_docs(seed=0, n_docs=40):
  """Documents of 1-89 random ids in [5, 512)."""
  rng = np.random.default_rng(seed)
  return TokenizedDocs.from_lists(
    [[rng.integers(5, 512, n).tolist()] for n in rng.integers(1, 90, n_docs)]
  )


_Tokenizer = functools.partial(StandInTokenizer, 512, path="stand-in")


def _task_config(**data):
  c = gpt2_config()
  c.model.update(
    vocab_size=0,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    dtype="float32",
  )
  c.data.update(dict(dict(max_seq_length=32), **data))
  return c


def test_stream_puts_eot_before_every_document():
  docs = TokenizedDocs.from_lists([[[5, 6], [7]], [[8]], [[9, 10]]])
  stream, starts, lengths = ce.token_stream(docs)
  np.testing.assert_array_equal(stream, [EOT, 5, 6, 7, EOT, 8, EOT, 9, 10, EOT])
  np.testing.assert_array_equal(starts, [0, 4, 6])
  np.testing.assert_array_equal(lengths, [3, 1, 2])


def test_chunked_windows_shift_by_one_and_cover_the_stream():
  docs = _docs([30, 7, 50, 12])  # Stream of 99 + 5 = 104 tokens: 103 // 16 = 6 windows, slack 7.
  ex = ce.CausalExamples(docs, ce.CausalExampleConfig(seq_len=16), vocab_size=512, seed=3)
  assert len(ex) == 6
  stream = ce.token_stream(docs)[0]
  batch = ex.batch(np.arange(6))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
    "input_ids": ((6, 16), np.int32),
    "target_ids": ((6, 16), np.int32),
    "loss_weights": ((6, 16), np.float32),
    "segment_ids": ((6, 16), np.int32),
    "positions": ((6, 16), np.int32),
  }
  np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["target_ids"][:, :-1])
  assert (batch["loss_weights"] == 1).all() and (batch["segment_ids"] == 1).all()
  np.testing.assert_array_equal(batch["positions"], np.tile(np.arange(16), (6, 1)))
  # The epoch's windows are consecutive pieces of the stream from one offset in [0, slack].
  starts = sorted(
    int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(stream, 16) == row).all(1))[0])
    for row in batch["input_ids"]
  )
  assert starts == [starts[0] + 16 * k for k in range(6)] and 0 <= starts[0] <= 7


def test_packed_examples_hold_whole_documents_as_segments():
  lengths = [30, 7, 50, 12, 3, 20]
  docs = _docs(lengths)
  ex = ce.CausalExamples(
    docs, ce.CausalExampleConfig(seq_len=16, packing=True), vocab_size=512, seed=0
  )
  batch = ex.batch(np.arange(len(ex)))
  w, seg, pos = batch["loss_weights"], batch["segment_ids"], batch["positions"]
  # Every document of n tokens appears as `EOT d` -> `d EOT`: n + 1 positions, all weighted.
  assert w.sum() == sum(n + 1 for n in lengths)
  np.testing.assert_array_equal(w, seg > 0)
  assert ((batch["input_ids"] == 0) == (seg == 0)).all() and (
    batch["target_ids"][seg == 0] == 0
  ).all()
  pieces = []
  for b in range(len(ex)):
    n = int((seg[b] > 0).sum())
    assert (seg[b, n:] == 0).all() and seg[b, 0] == 1  # Padding only at the end.
    assert set(np.diff(seg[b, :n])) <= {0, 1}  # Segments 1, 2, ... in order.
    for s in range(1, seg[b, n - 1] + 1):
      cols = np.flatnonzero(seg[b] == s)
      np.testing.assert_array_equal(pos[b, cols], np.arange(cols.size))
      pieces.append((batch["input_ids"][b, cols], batch["target_ids"][b, cols]))
  # Ids count up through the corpus: order the pieces by their smallest id and they spell the stream.
  pieces.sort(key=lambda p: p[0][p[0] != EOT].min())
  stream = ce.token_stream(docs)[0]
  got_inputs = np.concatenate([p[0] for p in pieces])
  got_targets = np.concatenate([p[1] for p in pieces])
  np.testing.assert_array_equal(
    got_inputs, stream[:-1]
  )  # EOT d0 EOT d1 ... (each doc's own EOT first).
  np.testing.assert_array_equal(got_targets, stream[1:])
  # n + 1 positions each; longer than 16 is split into pieces of 16 and the rest.
  assert sorted(p[0].size for p in pieces) == sorted([16, 15, 8, 16, 16, 16, 3, 13, 4, 16, 5])


def test_packing_is_tight():
  docs = _random_docs(1, n_docs=400)
  ex = ce.CausalExamples(
    docs, ce.CausalExampleConfig(seq_len=128, packing=True), vocab_size=512, seed=0
  )
  real = docs.num_tokens + docs.num_docs
  assert len(ex) == -(-real // 128)  # Best-fit decreasing reaches the lower bound here.
  assert ex.padding_fraction() == pytest.approx(1 - real / (len(ex) * 128))


def test_pack_pieces_best_fit_decreasing():
  # In the given order, filling one example at a time would need three (6 | 5 4 | 5).
  bins = ce.pack_pieces(np.array([6, 5, 4, 5]), 10, np.arange(4))
  assert sorted(sorted(np.flatnonzero(bins == b).tolist()) for b in np.unique(bins)) == [
    [0, 2],
    [1, 3],
  ]
  with pytest.raises(ValueError):
    ce.pack_pieces(np.array([11]), 10, np.arange(1))


@pytest.mark.parametrize("packing", [False, True])
def test_examples_are_deterministic_and_epochs_reshuffle(packing):
  docs = _random_docs()
  cfg = ce.CausalExampleConfig(seq_len=16, packing=packing)
  a = ce.CausalExamples(docs, cfg, vocab_size=512, seed=5)
  b = ce.CausalExamples(docs, cfg, vocab_size=512, seed=5)
  n = len(a)
  idx = np.array([0, 3, n - 1, n, n + 3, 5 * n + 2])
  batch = a.batch(idx)
  for k, v in b.batch(idx[::-1]).items():
    np.testing.assert_array_equal(v[::-1], batch[k])  # Same index, same example, in any batch.
  for i, row in zip(idx, batch["input_ids"]):
    np.testing.assert_array_equal(a[int(i)]["input_ids"], row)
  epoch0, epoch1 = a.batch(np.arange(n))["input_ids"], a.batch(np.arange(n, 2 * n))["input_ids"]
  assert not np.array_equal(epoch0, epoch1)
  if packing:  # The same examples, in another order.
    assert sorted(map(tuple, epoch0)) == sorted(map(tuple, epoch1))
  other = ce.CausalExamples(docs, cfg, vocab_size=512, seed=6).batch(np.arange(8))["input_ids"]
  assert not np.array_equal(other, epoch0[:8])


def test_bad_input():
  docs = _docs([10, 10])
  with pytest.raises(PretrainError, match="fewer than one window"):
    ce.CausalExamples(docs, ce.CausalExampleConfig(seq_len=64), vocab_size=512, seed=0)
  with pytest.raises(PretrainError, match="token id"):
    ce.CausalExamples(docs, ce.CausalExampleConfig(seq_len=8), vocab_size=10, seed=0)
  with pytest.raises(PretrainError, match="seed"):
    ce.CausalExamples(docs, ce.CausalExampleConfig(seq_len=8), vocab_size=512, seed=-1)
  with pytest.raises(PretrainError, match="seq_len"):
    ce.CausalExampleConfig(seq_len=0)
  with pytest.raises(PretrainError, match="max_position_embeddings"):
    gpt2_task.Gpt2Task(_task_config(max_seq_length=64), _Tokenizer())
  c = _task_config()
  c.model.vocab_size = 100
  with pytest.raises(PretrainError, match="vocab_size=100"):
    gpt2_task.Gpt2Task(c, _Tokenizer())
  c = _task_config()
  c.model.n_embd = 64
  with pytest.raises(PretrainError, match="n_embd"):
    gpt2_task.Gpt2Task(c, _Tokenizer())
  with pytest.raises(AttributeError):
    _ = gpt2_config().data.masked_lm_prob  # BERT-only keys are gone.


def test_loss_at_init_is_log_vocab_and_ignores_padding():
  task = gpt2_task.Gpt2Task(_task_config(packing=True), _Tokenizer())
  batch = task.examples(_random_docs(), seed=0).batch(np.arange(4))
  model = task.build_model()
  params = nn.unbox(
    jax.jit(model.init)(jax.random.key(0), *task.init_args(task.dummy_batch(1)))["params"]
  )
  loss = jax.jit(lambda p, b: task.loss(model, p, b, task.denominators(b)))
  objective, sums = loss(params, batch)
  metrics = task.finalize(sums)
  assert float(sums["weight_sum"]) == batch["loss_weights"].sum()
  assert abs(float(metrics["loss"]) - np.log(512)) < 0.1
  np.testing.assert_allclose(float(objective), float(metrics["loss"]), rtol=1e-6)
  np.testing.assert_allclose(
    float(metrics["perplexity"]), np.exp(float(metrics["loss"])), rtol=1e-5
  )
  assert 0 <= float(metrics["accuracy"]) < 0.05
  # Whatever sits in the padding changes nothing.
  assert (batch["loss_weights"] == 0).any()
  noisy = dict(
    batch,
    input_ids=np.where(batch["segment_ids"] == 0, 77, batch["input_ids"]).astype(np.int32),
    target_ids=np.where(batch["segment_ids"] == 0, 99, batch["target_ids"]).astype(np.int32),
  )
  _, noisy_sums = loss(params, noisy)
  for k in sums:
    np.testing.assert_allclose(float(noisy_sums[k]), float(sums[k]), rtol=1e-6)


def _loss_and_grad(task, batch):
  """(jitted value_and_grad of the task's objective with its metric sums, init params)."""
  model = task.build_model()
  params = nn.unbox(
    jax.jit(model.init)(jax.random.key(0), *task.init_args(task.dummy_batch(1)))["params"]
  )
  step = jax.jit(
    jax.value_and_grad(lambda p, b: task.loss(model, p, b, task.denominators(b)), has_aux=True)
  )
  return step, params


def test_chunked_loss_matches_the_plain_loss_and_its_gradients():
  batch = None
  results = []
  for chunk in (0, 24):  # 24 does not divide the 4 x 32 tokens: the padding is dropped.
    c = _task_config(packing=True)
    c.model.loss_chunk_size = chunk
    task = gpt2_task.Gpt2Task(c, _Tokenizer())
    if batch is None:
      batch = task.examples(_random_docs(), seed=0).batch(np.arange(4))
    step, params = _loss_and_grad(task, batch)
    if not chunk:  # Every other target the argmax, so the accuracy compared is not trivially 0.
      logits = task.build_model().apply({"params": params}, *task.init_args(batch))
      hit = np.arange(batch["target_ids"].shape[1]) % 2 == 0
      batch["target_ids"] = np.where(hit, np.argmax(logits, -1), batch["target_ids"]).astype(
        np.int32
      )
    results.append(step(params, batch))
  ((plain, plain_sums), plain_grads), ((chunked, chunked_sums), chunked_grads) = results
  np.testing.assert_allclose(float(chunked), float(plain), rtol=1e-6)
  for k in plain_sums:
    np.testing.assert_allclose(float(chunked_sums[k]), float(plain_sums[k]), rtol=1e-6)
  assert float(plain_sums["correct_sum"]) > 0
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), chunked_grads, plain_grads
  )


def test_chunked_loss_lowers_the_compiled_steps_temp_memory():
  def temp_bytes(chunk):
    c = _task_config(max_seq_length=64)
    c.model.update(max_position_embeddings=64, loss_chunk_size=chunk)
    task = gpt2_task.Gpt2Task(c, StandInTokenizer(8192, path="stand-in"))
    batch = task.dummy_batch(4)
    step, params = _loss_and_grad(task, batch)
    return step.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

  plain, chunked = temp_bytes(0), temp_bytes(64)
  # The plain step holds [256, 8192] float32 logits and their gradient (8 MiB each).
  assert chunked < plain / 2, (chunked, plain)


def test_loss_chunk_size_is_checked_and_resumable():
  c = _task_config()
  c.model.loss_chunk_size = -1
  with pytest.raises(PretrainError, match="loss_chunk_size"):
    gpt2_task.Gpt2Task(c, _Tokenizer())
  assert "model.loss_chunk_size" in gpt2_task.Gpt2Task.resumable_fields


def test_flops_and_tokens_per_example():
  task = gpt2_task.Gpt2Task(_task_config(), _Tokenizer())
  assert task.tokens_per_example == 32
  per_token = 2 * 2 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 2 * 2 * 32 * 32 + 2 * 32 * 512
  assert task.train_flops_per_example() == 3 * 32 * per_token
  assert set(task.dummy_batch(2)) == set(ce.FIELDS)


def test_gpt2_config_is_gpt2_small():
  c = gpt2_config()
  assert c.task.name == "gpt2" and c.model.vocab_size == c.tokenizer.vocab_size == 50257
  assert (c.model.hidden_size, c.model.num_layers, c.model.num_heads) == (768, 12, 12)
  assert (c.data.max_seq_length, c.train.batch_size) == (1024, 512)


def test_train_loop_learns(tiny_config, tmp_path):
  c = tiny_config
  c.task.name = "gpt2"
  c.model = ml_collections.ConfigDict(
    dict(
      vocab_size=0,
      hidden_size=64,
      num_layers=2,
      num_heads=4,
      intermediate_size=128,
      max_position_embeddings=64,
      dropout_rate=0.0,
      attention_dropout_rate=0.0,
    )
  )
  c.data.packing = False  # Packed examples go through the model in the loss test above.
  c.optimizer.update(learning_rate=3e-3, warmup_steps=2)
  c.train.update(steps=20, batch_size=16, log_every=4)
  c.eval.update(every_steps=20, batch_size=16, num_batches=1)
  c.checkpoint.update(every_steps=20)
  workdir = str(tmp_path / "run")
  last = train(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 5 and losses[0] < np.log(512) + 0.2
  assert losses[-1] < losses[0] - 0.5, losses  # Measured: 6.17 (steps 1-4) -> 5.43 (13-16).
  assert {"accuracy", "perplexity", "tokens_per_sec", "mfu"} <= set(rows[-1]) | set(last)
  assert last["step"] == 20 and last["eval_loss"] < np.log(512)
  assert 0 < last["mfu"] < 1


def test_packed_stream_resumed_on_fewer_processes_sees_every_example_once():
  """2 processes for 3 steps, then 1 process for 3: the same packed rows, in the same order, as 1 process for 6."""
  ex = ce.CausalExamples(
    _random_docs(), ce.CausalExampleConfig(seq_len=32, packing=True), vocab_size=512, seed=1
  )
  straight = BatchStream(ex, 8, num_threads=1)
  want = [next(straight) for _ in range(6)]
  pair = [BatchStream(ex, 8, process_index=p, process_count=2, num_threads=1) for p in range(2)]
  got = []
  for _ in range(3):
    rows = [next(s) for s in pair]
    got.append({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
  alone = BatchStream(ex, 8, num_threads=1)
  alone.set_state(pair[0].get_state())
  got += [next(alone) for _ in range(3)]
  for g, w in zip(got, want):
    for k in ce.FIELDS:
      np.testing.assert_array_equal(g[k], w[k])
  assert sum(int(np.max(b["segment_ids"])) > 1 for b in want)  # Rows really hold several documents.
