"""The jitted, sharded train and eval steps of pretrain/training/step.py, built directly (no train loop)."""

import jax
import numpy as np

from pretrain import sharding
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.families import get_task
from pretrain.training import step as step_lib
from pretrain.training.optimizer import make_optimizer

VOCAB = 512


def _task(make_config, mesh_shape=None):
  c = make_config("unused-corpus.txt")
  c.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  if mesh_shape:
    c.mesh.update(**mesh_shape)
  return c, get_task(c, StandInTokenizer(VOCAB))


def _batch(task, batch_size: int, seed: int = 0) -> dict:
  """Every field of the task's batch with random values in range (all positions real)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, zeros in task.dummy_batch(batch_size).items():
    if name == "input_mask" or name == "masked_lm_weights":
      out[name] = np.ones_like(zeros)
    elif name == "masked_lm_positions":
      out[name] = np.stack(
        [
          np.sort(rng.choice(task.seq_len, zeros.shape[1], replace=False))
          for _ in range(batch_size)
        ]
      ).astype(np.int32)
    elif name in ("segment_ids", "next_sentence_labels"):
      out[name] = rng.integers(0, 2, zeros.shape).astype(zeros.dtype)
    else:
      out[name] = rng.integers(0, VOCAB, zeros.shape).astype(zeros.dtype)
  return out


def _build(c, task, grad_accum: int = 1):
  mesh = sharding.make_mesh(c.mesh)
  tx, schedule = make_optimizer(c.optimizer, int(c.train.steps))
  return step_lib.build(
    task, task.build_model(), tx, schedule, mesh, 16, grad_accum=grad_accum, seed=0
  )


def test_microbatches_add_up_to_the_full_batch(tiny_config_factory):
  c, task = _task(tiny_config_factory)
  batch = _batch(task, 16)
  results = []
  for accum in (1, 4):
    fns = _build(c, task, grad_accum=accum)
    step, _ = fns.compile_train_step()
    state, metrics = step(fns.init_state(0), batch)
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (p1, m1), (p4, m4) = results
  for k in ("loss", "mlm_accuracy", "nsp_accuracy", "grad_norm", "learning_rate"):
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, atol=1e-7, err_msg=k)
  assert m1["grad_norm"] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p4, p1)


def test_state_is_laid_out_by_the_rules_table_and_init_is_seeded(tiny_config_factory):
  c, task = _task(tiny_config_factory, dict(data=2, fsdp=2, tensor=2))
  fns = _build(c, task)
  state = fns.init_state(0)
  flat_abstract = jax.tree_util.tree_leaves_with_path(fns.abstract_state.params)
  flat_state = dict(jax.tree_util.tree_leaves_with_path(state.params))
  assert len(flat_abstract) == len(flat_state) > 10
  split = 0
  for path, a in flat_abstract:
    x = flat_state[path]
    assert x.shape == a.shape and x.dtype == a.dtype
    assert x.sharding.is_equivalent_to(a.sharding, x.ndim), jax.tree_util.keystr(path)
    split += any(s is not None for s in a.sharding.spec)
  assert split > 0  # Some params are sharded over fsdp/tensor, not all replicated.
  assert fns.num_params == sum(int(np.prod(a.shape)) for _, a in flat_abstract)
  again, other = fns.init_state(0), fns.init_state(1)
  flat = lambda s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(s.params))])
  np.testing.assert_array_equal(flat(again), flat(state))
  assert not np.array_equal(flat(other), flat(state))


def test_train_step_advances_and_eval_step_returns_the_tasks_sums(tiny_config_factory):
  c, task = _task(tiny_config_factory)
  fns = _build(c, task)
  step, seconds = fns.compile_train_step()
  assert seconds > 0
  batch = _batch(task, 16)
  state = fns.init_state(0)
  before = fns.eval_step(state.params, batch)
  for _ in range(3):
    state, metrics = step(state, batch)
  assert int(state.step) == 3 and np.isfinite(metrics["loss"])
  after = fns.eval_step(state.params, batch)
  assert set(after) == set(before) >= {"mlm_loss", "mlm_weight"}
  assert float(after["mlm_weight"]) == float(before["mlm_weight"]) == 16 * task.num_predictions
  final = task.finalize(jax.device_get(after))
  assert (
    final["mlm_loss"] < task.finalize(jax.device_get(before))["mlm_loss"]
  )  # Three steps on one batch.


def test_a_step_with_nonfinite_gradients_is_skipped_on_the_device(
  tiny_config_factory, poisoned_task
):
  c, task = _task(tiny_config_factory)
  mark = VOCAB - 1
  fns = _build(c, poisoned_task(task, mark))
  step, _ = fns.compile_train_step()
  batch = _batch(task, 16)
  batch["input_ids"][:, 0] = 0
  bad = dict(batch, input_ids=batch["input_ids"].copy())
  bad["input_ids"][0, 0] = mark
  state, metrics = step(fns.init_state(0), batch)
  assert int(metrics["skipped"]) == 0 and np.isfinite(metrics["grad_norm"])
  before = jax.device_get(state)
  state, metrics = step(state, bad)
  metrics = jax.device_get(metrics)
  # The fault happened: the loss is finite, its gradients are not.
  assert np.isfinite(metrics["loss"]) and not np.isfinite(metrics["grad_norm"])
  assert int(metrics["skipped"]) == 1
  after = jax.device_get(state)
  assert int(after.step) == int(before.step) + 1  # The counter advances (documented in step.py).
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(a, b)
  floats = lambda s: [x for x in jax.tree.leaves(s.opt_state) if np.issubdtype(x.dtype, np.inexact)]
  assert floats(after)
  for a, b in zip(floats(after), floats(before)):
    np.testing.assert_array_equal(a, b)
  # A clean batch after it trains again, from the unchanged state.
  state, metrics = step(state, batch)
  assert int(metrics["skipped"]) == 0
  changed = jax.device_get(state.params)
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(changed), jax.tree.leaves(after.params))
  )
