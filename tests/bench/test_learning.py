"""Learning parity with HF torch: one step's loss and gradients from identical weights and batch, the
optimizer recipe on both sides, the comparison's statistics and report, and a tiny run end to end."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pretrain import families  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.bench import batches  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.bench import learning  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.bench import learning_torch  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.data import pipeline  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.data import special_tokens  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.data.tokenized import TokenizedDocs  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.families.bert import hf_reference as bert_reference  # noqa: E402  pylint: disable=wrong-import-position
from pretrain.training import optimizer  # noqa: E402  pylint: disable=wrong-import-position


def _bert_task_and_batch(config):
  """A tiny BERT task and a batch of its own examples with padding and unused prediction slots."""
  task = families.get_task(config, special_tokens.StandInTokenizer(512))
  # 8 documents of four 5-token sentences: rows shorter than 32 tokens, ~3 masks in 5 slots.
  ids = np.random.default_rng(0).choice(task.special.random_ids, 8 * 4 * 5).astype(np.int32)
  docs = TokenizedDocs(ids, np.arange(0, ids.size + 1, 5), np.arange(0, 8 * 4 + 1, 4))
  source = task.examples(docs, 0)
  (batch,) = pipeline.fixed_batches(source, 8, 1)
  assert batch["input_mask"].min() == 0 and batch["masked_lm_weights"].min() == 0
  return task, batch


def _init(task):
  model = task.build_model()
  init = jax.jit(lambda key: nn.unbox(model.init(key, *task.init_args(task.dummy_batch(1)))))
  return model, jax.device_get(init(jax.random.key(0))["params"])


def _check_one_step(task, batch):
  model, params = _init(task)

  def objective(p):
    return task.loss(model, p, batch, task.denominators(batch), deterministic=True)[0]

  loss, grads = jax.jit(jax.value_and_grad(objective))(params)
  _, expected = learning_torch.hf_state(task, jax.device_get(grads))
  hf_loss, hf_grads = learning_torch.gradients(
    task, learning_torch.build_model(task, params), batch
  )
  assert hf_loss == pytest.approx(float(loss), rel=1e-5)
  assert set(expected) <= set(hf_grads)
  for name, g in expected.items():
    diff = np.linalg.norm(hf_grads[name] - g)
    assert diff <= 1e-4 * np.linalg.norm(g) + 1e-9, name
  return params


def test_bert_one_step_loss_and_gradients_match_hf(tiny_config):
  task, batch = _bert_task_and_batch(tiny_config)
  params = _check_one_step(task, batch)
  # The masked-position head the comparison trains with is BertForPreTraining.forward's loss.
  hf = learning_torch.build_model(task, params).eval()
  gathered, sums = learning_torch.objective_and_sums(task, hf, batch)
  full, full_sums = learning_torch.objective_and_sums(task, hf, batch, hf_head=True)
  assert float(gathered.detach()) == pytest.approx(float(full.detach()), rel=1e-6)
  assert sums == pytest.approx(full_sums, rel=1e-6)
  labels = bert_reference.mlm_labels(batch)  # Unused slots (position 0) stay unlabelled.
  assert (labels != -100).sum() == batch["masked_lm_weights"].sum()


def test_gpt2_one_step_loss_and_gradients_match_hf(family_config):
  task = batches.bench_task(family_config("gpt2"))
  _check_one_step(task, batches.task_batch(task, 8))


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_decay_mask_is_hf_and_berts_rule(name, tiny_config, family_config):
  # BERT's optimization.py and the torch side decay every tensor but LayerNorms and biases, i.e. the
  # 1-D ones; BERT's MLM output_bias included.
  config = tiny_config if name == "bert" else family_config(name)
  task = families.get_task(config, special_tokens.StandInTokenizer(512 if name == "bert" else 256))
  model = task.build_model()
  params = jax.eval_shape(
    lambda: model.init(jax.random.key(0), *task.init_args(task.dummy_batch(1)))
  )
  params = nn.unbox(params["params"])
  mask = optimizer.decay_mask(params)
  for (path, leaf), decays in zip(
    jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(mask)
  ):
    assert decays == (leaf.ndim >= 2), jax.tree_util.keystr(path)


def test_torch_recipe_follows_the_projects_learning_rates(tiny_config):
  # torch AdamW at the project's lr per step equals optax's adamw (decay mask, clipping) step by step.
  # No dropout: torch's step trains in train mode, the jax update below is deterministic.
  tiny_config.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  task, batch = _bert_task_and_batch(tiny_config)
  model, params = _init(task)
  opt = tiny_config.optimizer
  opt.update(learning_rate=1e-2, warmup_steps=1, weight_decay=0.1, grad_clip_norm=0.5)
  tx, schedule = optimizer.make_optimizer(opt, 3)
  trainer = learning_torch.TorchTrainer(learning_torch.build_model(task, params), opt)
  objective = lambda p: task.loss(model, p, batch, task.denominators(batch), deterministic=True)[0]

  @jax.jit
  def update(params, state):
    updates, state = tx.update(jax.grad(objective)(params), state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), state

  state = tx.init(params)
  for t in range(3):
    params, state = update(params, state)
    trainer.step(task, batch, float(schedule(t)))
  _, expected = learning_torch.hf_state(task, jax.device_get(params))
  got = dict(trainer.model.named_parameters())
  for name, value in expected.items():
    np.testing.assert_allclose(got[name].detach().numpy(), value, atol=2e-5, err_msg=name)


def test_first_divergence():
  assert learning.first_divergence([1.0, 2.0, 3.0], [1.0, 2.0000001, 3.1], 1e-4) == 3
  assert learning.first_divergence([1.0, 2.0], [1.0, 2.0], 1e-4) is None


def _results(per_seed):
  return {
    "date": "2026-01-01",
    "device": "cpu x1",
    "versions": {"jax": "0"},
    "xla_flags": "",
    "family": "bert",
    "model": "BertForPreTraining",
    "shape": "L1 H32",
    "dtype": "float32",
    "dropout": [0.1, 0.1],
    "batch": [8, 32],
    "steps": 10,
    "init": "hf",
    "heldout_examples": 16,
    "per_seed": per_seed,
    "traces": {s: {"first_divergence": None} for s in per_seed},
    "summary": learning.compare_sides("bert", per_seed),
  }


def test_statistics_and_report_on_fixed_numbers():
  project = [6.70, 6.65, 6.69]
  hf = [6.55, 6.54, 6.60]
  per_seed = {
    s: {
      "project": {"mlm_loss": p, "mlm_accuracy": 0.07, "nsp_loss": 0.69},
      "hf": {"mlm_loss": h, "mlm_accuracy": 0.07 + 0.01 * s, "nsp_loss": 0.69},
    }
    for s, (p, h) in enumerate(zip(project, hf))
  }
  summary = learning.compare_sides("bert", per_seed)
  mlm = summary["mlm_loss"]
  assert mlm["project"]["mean"] == pytest.approx(np.mean(project))
  assert mlm["hf"]["sd"] == pytest.approx(np.std(hf, ddof=1))
  assert mlm["comparison"]["diff"] == pytest.approx(np.mean(project) - np.mean(hf))
  assert mlm["comparison"]["p_value"] == pytest.approx(scipy_stats.ttest_rel(project, hf).pvalue)
  assert mlm["comparison"]["verdict"] == "worse"  # Higher loss, p < 0.05.
  assert summary["nsp_loss"]["comparison"]["verdict"] == "no significant difference"
  table = learning.format_table(_results(per_seed))
  assert "| mlm_loss | 6.6800 ± 0.0265 | 6.5633 ± 0.0321 | +0.1167 [" in table
  assert "| 2 | hf | 6.6000 | 0.0900 | 0.6900 | None |" in table


def test_a_tiny_comparison_end_to_end(tiny_config_factory, text_corpus):
  config = tiny_config_factory(text_corpus)
  config.train.batch_size = 8
  config.eval.update(batch_size=8, num_batches=1)
  config.model.update(num_layers=1, dropout_rate=0.0, attention_dropout_rate=0.0)
  results = learning.run_comparison(config, steps=3, seeds=[1], log=lambda _: None)
  assert results["traces"][1]["first_divergence"] is None  # Same init, no dropout, f32.
  p, h = results["per_seed"][1]["project"], results["per_seed"][1]["hf"]
  assert p["mlm_loss"] == pytest.approx(h["mlm_loss"], rel=1e-4)
  assert results["summary"]["mlm_loss"]["comparison"]["verdict"] == "no test possible"
  assert "vs HF BertForPreTraining" in learning.format_table(results)
