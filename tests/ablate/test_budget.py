"""FLOP- and token-matched budgets: each variant's steps from its model FLOPs, attention counted as the variant
computes it (checked against a traced jaxpr and the model's own mask), and the budgets that are refused."""

import jax
import ml_collections
import numpy as np
import pytest

from pretrain.ablate import budget
from pretrain.ablate import sweep as sweep_lib
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert
from pretrain.families.bert import task as bert_task
from pretrain.families.gpt2 import model as gpt2
from pretrain.families.gpt2 import task as gpt2_task
from pretrain.models.attention import masks

from model_checks import matmul_flops  # pylint: disable=g-import-not-at-top,wrong-import-position

SEQ, BATCH, VOCAB = 64, 4, 512
TOKENIZER = StandInTokenizer(VOCAB, path="stand-in")
VARIANTS = dict(
  mha={},
  mqa=dict(model=dict(attention=dict(num_kv_heads=1))),
  window=dict(model=dict(attention=dict(sliding_window=8))),
)


def _sweep(base="configs/gpt2_tiny.py", variants=VARIANTS, **budget_keys):
  s = ml_collections.ConfigDict()
  s.base = base
  model = dict(vocab_size=0, hidden_size=64, num_layers=2, num_heads=8, intermediate_size=128)
  if base == "configs/gpt2_tiny.py":
    model.update(max_position_embeddings=SEQ)
  s.base_overrides = dict(
    data=dict(max_seq_length=SEQ),
    model=model,
    train=dict(batch_size=BATCH),
    optimizer=dict(warmup_steps=4),
  )
  if base == "configs/bert_tiny.py":
    s.base_overrides.data.max_predictions_per_seq = 5
  s.variants = variants
  if budget_keys:
    s.budget = budget_keys
  return s


def _plans(sweep):
  configs = sweep_lib.variant_configs(sweep)
  return budget.plans(sweep, configs, next(iter(configs)), tokenizer_for=lambda c: TOKENIZER)


def _traced_flops_per_step(config) -> float:
  """3 x the forward's matmul FLOPs as traced (the xla backend computes the full score matrix), less
  the q k^T and probs v FLOPs on the pairs the model's mask hides, counted from that mask."""
  if config.task.name == "gpt2":
    mc = gpt2_task.Gpt2Task(config, TOKENIZER).model_config
    model, inputs, causal = gpt2.Gpt2LMHeadModel(mc), gpt2.init_inputs(1, SEQ), True
  else:
    mc = bert_task.BertTask(config, TOKENIZER).model_config
    model, inputs, causal = bert.BertForPreTraining(mc), bert.init_inputs(1, SEQ, 5), False
  params = jax.eval_shape(model.init, jax.random.key(0), **inputs)
  traced = matmul_flops(jax.make_jaxpr(lambda p: model.apply(p, **inputs))(params).jaxpr)
  mask = masks.with_sliding_window(masks.AttentionMask(causal=causal), mc.attention.sliding_window)
  visible = masks.dense_mask(mask, SEQ, SEQ)
  hidden = SEQ * SEQ - (SEQ * SEQ if visible is None else int(np.asarray(visible).sum()))
  return 3.0 * BATCH * (traced - mc.num_layers * 2 * 2 * hidden * mc.num_heads * mc.head_dim)


@pytest.mark.parametrize(
  "base,expected_steps",
  [
    ("configs/gpt2_tiny.py", dict(mha=20, mqa=23, window=21)),
    (
      "configs/bert_tiny.py",
      dict(mha=20, mqa=24, window=23),
    ),  # Bidirectional: the window saves more.
  ],
)
def test_flop_budget_gives_cheaper_variants_more_steps(base, expected_steps):
  configs = sweep_lib.variant_configs(_sweep(base))
  per_step = {name: _traced_flops_per_step(c) for name, c in configs.items()}
  flops = 20 * per_step["mha"] + 1.0  # Twenty steps of the baseline.
  plans = _plans(_sweep(base, flops=flops))
  for name, plan in plans.items():
    assert plan.flops_per_step == pytest.approx(per_step[name], rel=1e-12)
    assert plan.steps == int(flops // per_step[name])
    assert plan.tokens_per_step == BATCH * SEQ and plan.flops <= flops
  # Fewer K/V projection FLOPs (MQA) and a band of 8 keys of 64 (the window): more steps, more tokens.
  assert {name: p.steps for name, p in plans.items()} == expected_steps
  assert plans["window"].tokens > plans["mha"].tokens
  # The warmup stays the baseline's fraction of the run: 4 of 20 steps.
  for plan in plans.values():
    assert plan.warmup_steps == int(4 * plan.steps / 20 + 0.5)
  job = budget.job_config(configs["window"], plans["window"])
  assert (
    job.train.steps == plans["window"].steps
    and job.optimizer.warmup_steps == plans["window"].warmup_steps
  )


def test_causal_attention_counts_half_the_scores_and_windows_bound_them():
  """GPT-2's count under a FLOP budget drops the masked future; MFU's count (the default) keeps it."""
  configs = sweep_lib.variant_configs(_sweep())
  full = gpt2_task.Gpt2Task(configs["mha"], TOKENIZER)
  mc = full.model_config
  scores = 3 * mc.num_layers * 2 * 2 * SEQ * SEQ * mc.num_heads * mc.head_dim  # Both matmuls, x3.
  causal_pairs = SEQ * (SEQ + 1) // 2
  skipped = full.train_flops_per_example() - full.train_flops_per_example(
    skip_masked_attention=True
  )
  assert skipped == pytest.approx(scores * (1 - causal_pairs / SEQ**2))
  window = gpt2_task.Gpt2Task(configs["window"], TOKENIZER)
  window_pairs = sum(min(q + 1, 8) for q in range(SEQ))  # The last 8 keys up to the query.
  assert window.train_flops_per_example() == full.train_flops_per_example()
  assert window.train_flops_per_example(skip_masked_attention=True) == pytest.approx(
    full.train_flops_per_example() - scores * (1 - window_pairs / SEQ**2)
  )


def test_token_budgets_match_steps_and_tokens():
  plans = _plans(_sweep())  # No budget: the base's train.steps for every variant.
  steps = sweep_lib.base_config(_sweep()).train.steps
  assert {p.steps for p in plans.values()} == {steps}
  assert all(p.warmup_steps == 4 for p in plans.values())
  plans = _plans(_sweep(tokens=10 * BATCH * SEQ + 5))
  assert {(p.steps, p.tokens) for p in plans.values()} == {(10, 10 * BATCH * SEQ)}
  text = budget.describe("tokens", 10 * BATCH * SEQ + 5, plans)
  assert "the same 10 steps x 256 tokens = 2,560 tokens for every variant" in text


@pytest.mark.parametrize(
  "budget_keys,base_steps,match",
  [
    (dict(flops=1e3), False, "below one step of variant mha"),
    (dict(tokens=BATCH * SEQ - 1), False, "below one step of variant mha"),
    (dict(flops=1e12, tokens=1e6), False, "both set"),
    (dict(flops=1e12), True, "base_overrides sets train.steps"),
    (dict(flops=-1.0), False, "positive"),
    (dict(steps=10), False, "unknown budget key"),
  ],
)
def test_bad_budgets_are_refused(budget_keys, base_steps, match):
  sweep = _sweep(**budget_keys)
  if base_steps:
    sweep.base_overrides.train.steps = 100
  with pytest.raises(PretrainError, match=match):
    _plans(sweep)


def test_t5_counts_the_decoder_causal_mask_and_the_self_attention_windows():
  from pretrain.families.t5 import model as t5  # pylint: disable=g-import-not-at-top
  from pretrain.families.t5 import task as t5_task  # pylint: disable=g-import-not-at-top
  from pretrain.families.t5.config import t5_config  # pylint: disable=g-import-not-at-top

  c = t5_config()
  c.model.update(
    hidden_size=32,
    intermediate_size=48,
    head_dim=8,
    num_heads=4,
    num_layers=2,
    num_decoder_layers=3,
  )
  c.model.attention.sliding_window = 4
  c.data.inputs_length = 32
  task = t5_task.T5Task(c, TOKENIZER)
  mc, li, lt = task.model_config, task.inputs_length, task.targets_length
  model, inputs = t5.T5Model(mc), t5.init_inputs(1, li, lt)
  params = jax.eval_shape(model.init, jax.random.key(0), **inputs)
  traced = matmul_flops(jax.make_jaxpr(lambda p: model.apply(p, **inputs))(params).jaxpr)
  assert 3 * traced == task.train_flops_per_example()  # The default: the full score matrices.

  def hidden(
    length, causal
  ):  # Pairs the model's self-attention mask hides (cross-attention: none).
    mask = masks.with_sliding_window(masks.AttentionMask(causal=causal), 4)
    return length * length - int(np.asarray(masks.dense_mask(mask, length, length)).sum())

  per_pair = 2 * 2 * mc.num_heads * mc.head_dim
  expected = traced - per_pair * (
    mc.num_layers * hidden(li, False) + mc.num_decoder_layers * hidden(lt, True)
  )
  assert task.train_flops_per_example(skip_masked_attention=True) == pytest.approx(3 * expected)
