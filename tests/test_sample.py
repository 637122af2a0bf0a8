"""pretrain.sample: mask filling on a tiny BERT that has memorised a sentence; generation (the key/value
cache, sampling filters, a memorised sentence, bad input) on GPT-2 and T5."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pretrain import sample
from pretrain.data import special_tokens
from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.families.gpt2 import model as gpt2
from pretrain.families.gpt2.config import gpt2_config
from pretrain.families.t5 import model as t5
from pretrain.models import attention
from pretrain.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCE = "The garden gate opens at seven every morning."
EOT = special_tokens.SEP_ID  # The project tokenizer's end-of-text.


def _train_to_one_checkpoint(c, root, steps: int) -> str:
  """Trains config `c` for `steps` without evals, checkpointing the last step only; returns the workdir."""
  c.train.update(steps=steps, log_every=20)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = steps
  workdir = str(root / "run")
  train(c, workdir)
  return workdir


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory, text_corpus, tiny_config_factory, memorised_corpus):
  """A tiny BERT trained on prose in which every document repeats SENTENCE."""
  root = tmp_path_factory.mktemp("memorised")
  c = tiny_config_factory(memorised_corpus(text_corpus, root / "corpus.txt", SENTENCE))
  c.tokenizer.vocab_size = 400
  c.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  c.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  return _train_to_one_checkpoint(c, root, steps=100)


def test_masked_word_of_a_memorised_sentence_comes_back(memorised_run):
  _, tokenizer, task, params, step = sample.load_run(memorised_run)
  assert step == 100
  ids = tokenizer.encode([SENTENCE])[0]
  hits = 0
  for k in range(1, len(ids) - 1):
    masked = np.asarray(
      [special_tokens.CLS_ID]
      + ids[:k]
      + [special_tokens.MASK_ID]
      + ids[k + 1 :]
      + [special_tokens.SEP_ID],
      np.int32,
    )
    probs = sample.mask_probabilities(task, params, masked)
    assert probs.shape == (1, tokenizer.vocab_size)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-4)
    hits += int(np.argmax(probs[0]) == ids[k])
  assert hits >= (len(ids) - 2) * 0.6, (hits, len(ids))


def test_cli_prints_candidates_and_refuses_bad_prompts(memorised_run):
  run = lambda *a: subprocess.run(
    [sys.executable, "-m", "pretrain.sample", f"--workdir={memorised_run}", *a],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  r = run("--prompt=The garden [MASK] opens at seven every morning.", "--top_k=3")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert lines[0].startswith("step 100:") and lines[1].startswith("  [MASK] 1: ")
  assert len(lines[1].split(", ")) == 3
  r = run("--prompt=no mask here")
  assert r.returncode == 2 and "error:" in r.stderr and "[MASK]" in r.stderr
  with pytest.raises(PretrainError, match="no checkpoint"):
    sample.load_run(os.path.join(memorised_run, "absent"))
  _, tokenizer, task, params, _ = sample.load_run(memorised_run)
  with pytest.raises(
    PretrainError, match="generation needs a decoder-only or encoder-decoder checkpoint"
  ):
    sample.generate(task, params, tokenizer, "The garden")


# Generation.


def _tiny_gpt2(**attention_fields):
  cfg = gpt2.Gpt2Config(
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
    attention=attention.AttentionConfig(**dict(dict(position="learned"), **attention_fields)),
  )
  model = gpt2.Gpt2LMHeadModel(cfg)
  return model, jax.jit(model.init)(jax.random.key(0), **gpt2.init_inputs(1, 8))["params"]


@pytest.mark.parametrize("variant", [{}, {"position": "rope"}, {"num_kv_heads": 1}])
def test_gpt2_cached_decoding_equals_the_full_forward(variant):
  model, params = _tiny_gpt2(**variant)
  prompt = np.asarray([EOT, 10, 11, 12], np.int32)
  new, logits = sample.generate_ids(
    model, params, prompt, decoding=base.DECODER_ONLY, max_new_tokens=50, stop_id=None
  )
  assert new.shape == (13,) and logits.shape == (
    13,
    64,
  )  # 16 positions: 4 in the prompt, 12 fed back, 1 more.
  sequence = np.concatenate([prompt, new])
  full = np.asarray(jax.jit(model.apply)({"params": params}, sequence[None, :-1])[0])  # [15, vocab]
  # Row i of the full forward on the grown sequence predicts new token i.
  np.testing.assert_allclose(logits, full[len(prompt) - 1 :], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(new, full[len(prompt) - 1 :].argmax(-1))


def test_t5_cached_decoding_equals_the_full_forward():
  cfg = t5.T5Config(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    head_dim=8,
    num_heads=4,
    num_layers=2,
    num_decoder_layers=2,
  )
  model = t5.T5Model(cfg)
  params = jax.jit(model.init)(jax.random.key(0), **t5.init_inputs(1, 8, 4))["params"]
  prompt = np.asarray([10, 11, 12], np.int32)
  new, logits = sample.generate_ids(
    model,
    params,
    prompt,
    decoding=base.ENCODER_DECODER,
    max_new_tokens=12,
    stop_id=None,
    max_target_length=9,
    eos_id=EOT,
    decoder_start_id=special_tokens.PAD_ID,
  )
  assert new.shape == (9,)  # max_target_length caps the 12.
  inputs = np.append(prompt, EOT)[None]
  decoder_inputs = np.concatenate([[special_tokens.PAD_ID], new[:-1]])[
    None
  ]  # Start id, then the new tokens.
  full = np.asarray(
    jax.jit(model.apply)({"params": params}, inputs, np.ones_like(inputs), decoder_inputs)[0]
  )
  np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(new, full.argmax(-1))


def test_sampling_filters_on_fixed_logits():
  logits = np.log(np.asarray([[0.1, 0.4, 0.2, 0.3]], np.float32))
  kept = lambda **kw: np.isfinite(np.asarray(sample.filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2) == [False, True, False, True]
  assert kept(top_p=0.4) == [False, True, False, False]  # 0.4 alone reaches 0.4.
  assert kept(top_p=0.5) == [
    False,
    True,
    False,
    True,
  ]  # 0.4 + 0.3 is the smallest set with mass >= 0.5.
  assert kept(top_p=0.75) == [False, True, True, True]
  assert kept(top_p=1.0) == [True] * 4
  assert kept(top_k=3, top_p=0.5) == [False, True, False, True]
  np.testing.assert_allclose(
    np.asarray(sample.filter_logits(logits, temperature=2.0)), logits / 2.0, rtol=1e-6
  )
  rng = jax.random.key(0)
  assert int(sample.sample_token(logits, rng)[0]) == 1  # Temperature 0: greedy.
  rows = np.repeat(logits, 64, axis=0)
  top1 = sample.sample_token(rows, rng, temperature=1.5, top_k=1)
  assert (np.asarray(top1) == 1).all()
  draws = np.asarray(sample.sample_token(rows, rng, temperature=1.0, top_p=0.5))
  assert set(draws.tolist()) == {1, 3}
  np.testing.assert_array_equal(
    draws, np.asarray(sample.sample_token(rows, rng, temperature=1.0, top_p=0.5))
  )


def test_same_seed_same_tokens():
  model, params = _tiny_gpt2()
  run = lambda seed: sample.generate_ids(
    model,
    params,
    [EOT, 5],
    decoding=base.DECODER_ONLY,
    max_new_tokens=6,
    temperature=1.0,
    top_k=20,
    top_p=0.9,
    seed=seed,
    stop_id=None,
  )[0]
  first, again = run(1), run(1)
  np.testing.assert_array_equal(first, again)
  assert first.shape == (6,) and (first < 64).all()


def test_bad_input_is_refused():
  model, params = _tiny_gpt2()
  gen = lambda ids, **kw: sample.generate_ids(
    model, params, ids, decoding=base.DECODER_ONLY, stop_id=EOT, **kw
  )
  with pytest.raises(PretrainError, match="17 tokens; the model has 16 positions"):
    gen(np.full(17, 5), max_new_tokens=1)
  with pytest.raises(PretrainError, match="max_new_tokens=0"):
    gen([EOT], max_new_tokens=0)
  for top_p in (0.0, 1.5):
    with pytest.raises(PretrainError, match="top_p"):
      gen([EOT], top_p=top_p, temperature=1.0)


@pytest.fixture(scope="module")
def memorised_gpt2(tmp_path_factory, text_corpus, tiny_config_factory):
  """A tiny GPT-2 trained on prose in which every document starts with SENTENCE."""
  root = tmp_path_factory.mktemp("memorised_gpt2")
  docs = [
    d.split("\n")[:2] for d in open(text_corpus, encoding="utf-8").read().strip().split("\n\n")
  ]
  corpus = root / "corpus.txt"
  corpus.write_text("\n\n".join("\n".join([SENTENCE, d[0]]) for d in docs) + "\n", encoding="utf-8")
  c = gpt2_config()
  tiny = tiny_config_factory(str(corpus))
  for section in ("data", "train", "eval", "checkpoint", "metrics"):
    c[section].update({k: v for k, v in tiny[section].to_dict().items() if k in c[section]})
  c.tokenizer.update(vocab_size=400, model_type="unigram")
  c.model.update(
    vocab_size=0,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype="float32",
  )
  c.data.update(max_seq_length=64, packing=True)
  c.optimizer.update(learning_rate=3e-3, warmup_steps=5, end_learning_rate=3e-4)
  return _train_to_one_checkpoint(c, root, steps=60)


def test_memorised_sentence_comes_back(memorised_gpt2):
  _, tokenizer, task, params, step = sample.load_run(memorised_gpt2)
  assert step == 60 and task.name == "gpt2"
  ids = tokenizer.encode([SENTENCE])[0]
  new, _ = sample.generate_ids(
    task.build_model(),
    params,
    [EOT] + ids[:3],
    decoding=task.sampling,
    stop_id=tokenizer.special.eos,
    max_new_tokens=len(ids) - 3,
  )
  np.testing.assert_array_equal(new, ids[3:])
  text = sample.generate(
    task, params, tokenizer, tokenizer.decode(ids[:3]), max_new_tokens=len(ids) - 3
  )
  assert text == tokenizer.decode(ids[3:]), text
  with pytest.raises(
    PretrainError, match="filling masks needs a masked-LM checkpoint; this one is task 'gpt2'"
  ):
    sample.mask_probabilities(task, params, np.asarray(ids, np.int32))
