"""RoBERTa: FULL-SENTENCES blocks, dynamic masks, the model options, the task, a short training run."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from pretrain.data.tokenized import TokenizedDocs
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert
from pretrain.families.roberta import task as roberta_task
from pretrain.families.roberta import examples as rx

from mlm_examples import unique_ids, unmasked  # pylint: disable=g-import-not-at-top,wrong-import-position
from model_checks import matmul_flops  # pylint: disable=g-import-not-at-top,wrong-import-position

BASE = bert.BertConfig(
  vocab_size=50265,
  hidden_size=768,
  num_layers=12,
  num_heads=12,
  intermediate_size=3072,
  max_position_embeddings=514,
  type_vocab_size=1,
  layer_norm_eps=1e-5,
  position_offset=2,
  pooler=False,
  nsp_head=False,
)
TINY = dataclasses.replace(
  BASE,
  vocab_size=128,
  hidden_size=32,
  num_layers=2,
  num_heads=2,
  intermediate_size=64,
  max_position_embeddings=22,
)
CFG = rx.RobertaExampleConfig(max_seq_length=32, max_predictions_per_seq=6)


def _random_docs(seed=0, n_docs=30, low=5, high=1000, max_len=12):
  rng = np.random.default_rng(seed)
  return TokenizedDocs.from_lists(
    [
      [
        rng.integers(low, high, rng.integers(1, max_len + 1)).tolist()
        for _ in range(rng.integers(1, 8))
      ]
      for _ in range(n_docs)
    ]
  )


@pytest.fixture(scope="module")
def unique():
  """Token id = 5 + its position in the corpus: every id names its source."""
  return unique_ids(_random_docs(1))


def _body(ex):
  """The block between [CLS] and the final [SEP], checking the layout on the way."""
  ids, n = unmasked(ex), int(ex["input_mask"].sum())
  np.testing.assert_array_equal(ex["input_mask"], np.arange(ids.size) < n)
  assert (
    ids[0] == 2 and ids[n - 1] == 3 and (ids[n:] == 0).all() and (ex["input_ids"][n:] == 0).all()
  )
  return ids[1 : n - 1]


def _doc_of_token(docs):
  return np.repeat(np.arange(docs.num_docs), np.diff(docs.sentence_starts[docs.doc_starts]))


def test_blocks_are_whole_sentences_with_a_separator_between_documents(unique):
  ex = rx.RobertaExamples(unique, CFG, vocab_size=5 + unique.num_tokens, seed=3)
  doc_of = _doc_of_token(unique)
  sentence_starts = set(unique.sentence_starts.tolist())
  doc_starts = set(unique.sentence_starts[unique.doc_starts].tolist())
  seen, crossed = [], 0
  for i in range(ex.num_instances):  # One epoch.
    body = _body(ex[i])
    assert 1 <= body.size <= CFG.max_num_tokens and body[0] != 3 and body[-1] != 3
    pieces = [
      p[p != 3] for p in np.split(body, np.flatnonzero(body == 3))
    ]  # Split at the separators.
    crossed += len(pieces) > 1
    for k, p in enumerate(pieces):
      pos = p - 5  # Corpus positions.
      assert p.size and (np.diff(pos) == 1).all() and len(set(doc_of[pos].tolist())) == 1
      assert (
        int(pos[0]) in sentence_starts and int(pos[-1]) + 1 in sentence_starts
      )  # Whole sentences.
      if k > 0:
        assert int(pos[0]) in doc_starts  # After a separator, a document from its start ...
      if k < len(pieces) - 1:
        assert int(pos[-1]) + 1 in doc_starts  # ... and before one, a document to its end.
      seen.append(pos)
  # Every token exactly once per epoch (no sentence here is longer than the budget).
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(unique.num_tokens))
  assert crossed > 0


def test_blocks_are_greedy(unique):
  """A block stops only where the next sentence (after a separator, if it opens a document) would overflow."""
  order = np.random.default_rng(0).permutation(unique.num_docs)
  stream, blocks = rx.plan_blocks(unique, CFG.max_num_tokens, order)
  first_token = (
    stream.token_ids(blocks[:, 0], unique.tokens, 3) - 5
  )  # Corpus position of each block's start.
  sentence_ends = unique.sentence_starts[1:]
  next_len = sentence_ends[np.searchsorted(sentence_ends, first_token, side="right")] - first_token
  gap = (
    blocks[1:, 0] - blocks[:-1, 1]
  )  # 1: the block before ended its document, a separator between.
  np.testing.assert_array_equal(gap, np.isin(blocks[1:, 0] - 1, stream.doc_start[1:]))
  assert blocks[0, 0] == 0 and blocks[-1, 1] == stream.doc_start[-1]
  assert (blocks[:-1, 1] - blocks[:-1, 0] + gap + next_len[1:] > CFG.max_num_tokens).all()


def test_chain_matches_a_loop():
  rng = np.random.default_rng(0)
  for n in (1, 2, 7, 100, 1000):
    nxt = np.arange(1, n + 1) + rng.integers(0, 5, n)
    expected, i = [], 0
    while i < n:
      expected.append(i)
      i = nxt[i]
    np.testing.assert_array_equal(rx._chain(np.minimum(nxt, n)), expected)


def test_over_long_sentences_are_cropped_at_random_offsets():
  docs = TokenizedDocs.from_lists([[list(range(5, 105))], [[7, 8, 9]]])
  ex = rx.RobertaExamples(docs, CFG, vocab_size=200, seed=0)
  crops = set()
  for i in range(40):
    body = _body(ex[i])
    if body.size == CFG.max_num_tokens:
      assert (np.diff(body) == 1).all() and 5 <= body[0] <= 105 - CFG.max_num_tokens
      crops.add(int(body[0]))
    else:
      np.testing.assert_array_equal(body, [7, 8, 9])
  assert len(crops) > 5


def test_deterministic_random_access_and_batches(unique):
  ex = rx.RobertaExamples(unique, CFG, vocab_size=5 + unique.num_tokens, seed=7)
  again = rx.RobertaExamples(unique, CFG, vocab_size=5 + unique.num_tokens, seed=7)
  other = rx.RobertaExamples(unique, CFG, vocab_size=5 + unique.num_tokens, seed=8)
  idx = np.array([3, 0, 10**6 + 5, 3, 2 * ex.num_instances - 1])
  batch = ex.batch(idx)
  for b, i in enumerate(idx):
    for k, v in again[int(i)].items():
      np.testing.assert_array_equal(batch[k][b], v, err_msg=k)
  assert {k: v.shape for k, v in batch.items()} == {
    "input_ids": (5, 32),
    "input_mask": (5, 32),
    "masked_lm_positions": (5, 6),
    "masked_lm_ids": (5, 6),
    "masked_lm_weights": (5, 6),
  }
  assert all(
    v.dtype == (np.float32 if k == "masked_lm_weights" else np.int32) for k, v in batch.items()
  )
  assert not np.array_equal(
    ex.batch(np.arange(8))["input_ids"], other.batch(np.arange(8))["input_ids"]
  )


def test_masks_are_new_on_every_draw_of_a_block():
  """One document: every epoch has the same blocks, in another order, with other masks."""
  docs = TokenizedDocs.from_lists([[list(range(5 + 10 * s, 15 + 10 * s)) for s in range(30)]])
  ex = rx.RobertaExamples(docs, CFG, vocab_size=400, seed=0)
  n = ex.num_instances
  bodies = {}
  for i in range(3 * n):
    e = ex[i]
    bodies.setdefault(_body(e).tobytes(), []).append(
      e["masked_lm_positions"][e["masked_lm_weights"] > 0]
    )
  assert len(bodies) == n
  assert all(len(draws) == 3 for draws in bodies.values())
  differ = sum(
    not (np.array_equal(d[0], d[1]) and np.array_equal(d[1], d[2])) for d in bodies.values()
  )
  assert differ == n


def test_masking_skips_specials_and_hits_fifteen_percent(unique):
  cfg = rx.RobertaExampleConfig(max_seq_length=32, max_predictions_per_seq=32)
  ex = rx.RobertaExamples(unique, cfg, vocab_size=5 + unique.num_tokens, seed=0)
  b = ex.batch(np.arange(400))
  ids = np.stack([unmasked({k: v[r] for k, v in b.items()}) for r in range(400)])
  w = b["masked_lm_weights"] > 0
  pos = b["masked_lm_positions"]
  targets = np.take_along_axis(ids, pos, axis=1)[w]
  assert (targets >= 5).all()  # Never [CLS], [SEP] (the document separators too) or [PAD].
  maskable = ((ids >= 5) & (b["input_mask"] > 0)).sum()
  assert abs(w.sum() / maskable - 0.15) < 0.01
  chosen = np.take_along_axis(b["input_ids"], pos, axis=1)[w]
  assert abs((chosen == 4).mean() - 0.8) < 0.03


def test_bad_inputs():
  docs = _random_docs()
  with pytest.raises(PretrainError, match="vocab_size"):
    rx.RobertaExamples(docs, CFG, vocab_size=100, seed=0)
  with pytest.raises(PretrainError, match="no tokens"):
    rx.RobertaExamples(TokenizedDocs.from_lists([]), CFG, vocab_size=100, seed=0)
  with pytest.raises(PretrainError, match="max_seq_length"):
    rx.RobertaExampleConfig(max_seq_length=2)
  with pytest.raises(PretrainError, match="word_start"):
    rx.RobertaExamples(
      docs, dataclasses.replace(CFG, whole_word_masking=True), vocab_size=1000, seed=0
    )


# The model options.


def test_roberta_base_parameter_count_and_tree():
  assert bert.count_params(BASE) == 124_697_433
  params = nn.unbox(bert.abstract_params(BASE, seq_len=8))
  assert set(params) == {"bert", "mlm_head"} and "pooler" not in params["bert"]
  emb = params["bert"]["embeddings"]
  assert emb["position_embeddings"]["embedding"].shape == (514, 768)
  assert emb["token_type_embeddings"]["embedding"].shape == (1, 768)


def _random_params(cfg, seed=0):
  """Params of cfg's shapes drawn with numpy (no init to compile)."""
  rng = np.random.default_rng(seed)
  shapes = nn.unbox(bert.abstract_params(cfg, seq_len=1, num_predictions=1))
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def _tiny_inputs():
  lengths = np.array([20, 7, 1])
  mask = (np.arange(20)[None] < lengths[:, None]).astype(np.int32)
  ids = (np.random.default_rng(0).integers(5, 128, (3, 20)) * mask).astype(np.int32)
  return dict(input_ids=ids, segment_ids=np.zeros_like(ids), input_mask=mask), mask


def test_positions_start_at_the_offset_over_real_tokens():
  model = bert.BertForPreTraining(TINY)
  inputs, mask = _tiny_inputs()
  params = _random_params(TINY)
  apply = jax.jit(lambda p: model.apply({"params": p}, **inputs))
  mlm, nsp = apply(params)
  assert mlm.shape == (3, 20, 128) and nsp is None
  table = params["bert"]["embeddings"]["position_embeddings"]["embedding"]

  def with_rows(rows, value):
    p = jax.tree.map(lambda x: x, params)
    p["bert"]["embeddings"]["position_embeddings"]["embedding"] = np.where(
      np.isin(np.arange(table.shape[0]), rows)[:, None], value, table
    ).astype(np.float32)
    return apply(p)[0]

  real = mask[:, :, None] > 0
  np.testing.assert_array_equal(
    np.where(real, with_rows(np.array([0, 1]), 5.0), 0), np.where(real, mlm, 0)
  )
  # Row 2 is every sequence's first token; row 2 + 7 is past the second sequence's last.
  changed = np.abs(with_rows(np.array([2]), 5.0) - mlm).max(axis=(1, 2))
  assert (changed > 1e-3).all()
  changed = np.abs(with_rows(np.array([9]), 5.0) - mlm)[:, :, :].max(axis=2) * mask
  assert changed[0].max() > 1e-3 and changed[1:].max() == 0
  with pytest.raises(PretrainError, match="position_offset 2"):
    model.apply({"params": params}, **{k: np.tile(v, (1, 2)) for k, v in inputs.items()})


def test_model_option_checks():
  with pytest.raises(PretrainError, match="nsp_head=True needs pooler=True"):
    dataclasses.replace(TINY, nsp_head=True)
  with pytest.raises(PretrainError, match="position_offset"):
    dataclasses.replace(TINY, position_offset=22)


def test_flops_count_no_pooler_or_nsp_head():
  model = bert.BertForPreTraining(TINY)
  inputs = bert.init_inputs(1, 16, 3)
  params = jax.eval_shape(model.init, jax.random.key(0), **inputs)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, **inputs))(params).jaxpr
  assert matmul_flops(jaxpr) == bert.forward_flops_per_sequence(TINY, 16, 3)


# The task.


def _task_config(**data):
  from pretrain.families.roberta.config import roberta_config  # pylint: disable=import-outside-toplevel

  c = roberta_config()
  c.task.name = "roberta"
  c.model.update(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=34,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
  )
  c.data.update(
    dict(dict(max_seq_length=32, max_predictions_per_seq=6, next_sentence_prediction=False), **data)
  )
  return c


TOKENIZER = StandInTokenizer(1000, path="fake.model")


def test_task_loss_metrics_and_flops():
  from pretrain import families  # pylint: disable=import-outside-toplevel

  task = families.get_task(_task_config(), TOKENIZER)
  assert isinstance(task, roberta_task.RobertaTask) and task.name == "roberta"
  mc = task.model_config
  assert (mc.pooler, mc.nsp_head, mc.position_offset, mc.type_vocab_size) == (False, False, 2, 1)
  examples = task.examples(_random_docs(), seed=0)
  batch = examples.batch(np.arange(4))
  assert set(batch) == set(task.dummy_batch(2))
  assert task.train_flops_per_example() == 3 * bert.forward_flops_per_sequence(mc, 32, 6)
  model = task.build_model()
  params = _random_params(mc)
  assert "nsp_head" not in params and "pooler" not in params["bert"]

  def objective(p):
    return task.loss(model, p, batch, task.denominators(batch))

  (value, sums), grads = jax.device_get(
    jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  )
  metrics = task.finalize(sums)
  assert set(metrics) == {"loss", "mlm_loss", "mlm_accuracy"}
  np.testing.assert_allclose(value, metrics["loss"], rtol=1e-4)
  assert float(sums["mlm_weight"]) == float(batch["masked_lm_weights"].sum()) > 0
  assert 3.0 < float(metrics["loss"]) < 30.0 and np.isfinite(float(metrics["loss"]))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"]).max() > 0
  assert grads["bert"]["embeddings"]["token_type_embeddings"]["embedding"].shape == (1, 32)


def test_task_bad_configs():
  with pytest.raises(PretrainError, match="next_sentence_prediction"):
    roberta_task.RobertaTask(_task_config(next_sentence_prediction=True), TOKENIZER)
  c = _task_config()
  c.model.nsp_head = True
  c.model.pooler = True
  with pytest.raises(PretrainError, match="nsp_head"):
    roberta_task.RobertaTask(c, TOKENIZER)
  with pytest.raises(PretrainError, match="max_position_embeddings=34 - model.position_offset=2"):
    roberta_task.RobertaTask(_task_config(max_seq_length=33), TOKENIZER)
