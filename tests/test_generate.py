"""pretrain.sample generation: the key/value cache, sampling filters, a memorised sentence, bad input."""
import jax
import numpy as np
import pytest

from pretrain import sample
from pretrain.data import special_tokens
from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.families.gpt2 import model as gpt2
from pretrain.families.t5 import model as t5
from pretrain.families.gpt2.config import gpt2_config
from pretrain.train import train

SENTENCE = "The garden gate opens at seven every morning."
EOT = special_tokens.SEP_ID


def _tiny_gpt2(**attention_fields):
  cfg = gpt2.Gpt2Config(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                        max_position_embeddings=16,
                        attention=attention.AttentionConfig(**dict(dict(position="learned"), **attention_fields)))
  model = gpt2.Gpt2LMHeadModel(cfg)
  return model, jax.jit(model.init)(jax.random.key(0), **gpt2.init_inputs(1, 8))["params"]


@pytest.mark.parametrize("variant", [{}, {"position": "rope"}, {"num_kv_heads": 1}])
def test_gpt2_cached_decoding_equals_the_full_forward(variant):
  model, params = _tiny_gpt2(**variant)
  prompt = np.asarray([EOT, 10, 11, 12], np.int32)
  new, logits = sample.generate_ids(model, params, prompt, max_new_tokens=50, stop_id=None)
  assert new.shape == (13,) and logits.shape == (13, 64)  # 16 positions: 4 in the prompt, 12 fed back, 1 more.
  sequence = np.concatenate([prompt, new])
  full = np.asarray(jax.jit(model.apply)({"params": params}, sequence[None, :-1])[0])  # [15, vocab]
  # Row i of the full forward on the grown sequence predicts new token i.
  np.testing.assert_allclose(logits, full[len(prompt) - 1:], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(new, full[len(prompt) - 1:].argmax(-1))


def test_t5_cached_decoding_equals_the_full_forward():
  cfg = t5.T5Config(vocab_size=64, hidden_size=32, intermediate_size=64, head_dim=8, num_heads=4, num_layers=2,
                    num_decoder_layers=2)
  model = t5.T5Model(cfg)
  params = jax.jit(model.init)(jax.random.key(0), **t5.init_inputs(1, 8, 4))["params"]
  prompt = np.asarray([10, 11, 12], np.int32)
  new, logits = sample.generate_ids(model, params, prompt, max_new_tokens=12, stop_id=None, max_target_length=9)
  assert new.shape == (9,)  # max_target_length caps the 12.
  inputs = np.append(prompt, sample.END_ID)[None]
  decoder_inputs = np.concatenate([[special_tokens.PAD_ID], new[:-1]])[None]  # Start id, then the new tokens.
  full = np.asarray(jax.jit(model.apply)({"params": params}, inputs, np.ones_like(inputs), decoder_inputs)[0])
  np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(new, full.argmax(-1))


def test_sampling_filters_on_fixed_logits():
  logits = np.log(np.asarray([[0.1, 0.4, 0.2, 0.3]], np.float32))
  kept = lambda **kw: np.isfinite(np.asarray(sample.filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2) == [False, True, False, True]
  assert kept(top_p=0.4) == [False, True, False, False]  # 0.4 alone reaches 0.4.
  assert kept(top_p=0.5) == [False, True, False, True]  # 0.4 + 0.3 is the smallest set with mass >= 0.5.
  assert kept(top_p=0.75) == [False, True, True, True]
  assert kept(top_p=1.0) == [True] * 4
  assert kept(top_k=3, top_p=0.5) == [False, True, False, True]
  np.testing.assert_allclose(np.asarray(sample.filter_logits(logits, temperature=2.0)), logits / 2.0, rtol=1e-6)
  rng = jax.random.key(0)
  assert int(sample.sample_token(logits, rng)[0]) == 1  # Temperature 0: greedy.
  rows = np.repeat(logits, 64, axis=0)
  top1 = sample.sample_token(rows, rng, temperature=1.5, top_k=1)
  assert (np.asarray(top1) == 1).all()
  draws = np.asarray(sample.sample_token(rows, rng, temperature=1.0, top_p=0.5))
  assert set(draws.tolist()) == {1, 3}
  np.testing.assert_array_equal(draws, np.asarray(sample.sample_token(rows, rng, temperature=1.0, top_p=0.5)))


def test_same_seed_same_tokens():
  model, params = _tiny_gpt2()
  run = lambda seed: sample.generate_ids(model, params, [EOT, 5], max_new_tokens=6, temperature=1.0, top_k=20,
                                         top_p=0.9, seed=seed, stop_id=None)[0]
  first, again = run(1), run(1)
  np.testing.assert_array_equal(first, again)
  assert first.shape == (6,) and (first < 64).all()


def test_bad_input_is_refused():
  model, params = _tiny_gpt2()
  with pytest.raises(PretrainError, match="17 tokens; the model has 16 positions"):
    sample.generate_ids(model, params, np.full(17, 5), max_new_tokens=1)
  with pytest.raises(PretrainError, match="max_new_tokens=0"):
    sample.generate_ids(model, params, [EOT], max_new_tokens=0)
  for top_p in (0.0, 1.5):
    with pytest.raises(PretrainError, match="top_p"):
      sample.generate_ids(model, params, [EOT], top_p=top_p, temperature=1.0)


@pytest.fixture(scope="module")
def memorised_gpt2(tmp_path_factory, text_corpus, tiny_config_factory):
  """A tiny GPT-2 trained on prose in which every document starts with SENTENCE."""
  root = tmp_path_factory.mktemp("memorised_gpt2")
  docs = [d.split("\n")[:2] for d in open(text_corpus, encoding="utf-8").read().strip().split("\n\n")]
  corpus = root / "corpus.txt"
  corpus.write_text("\n\n".join("\n".join([SENTENCE, d[0]]) for d in docs) + "\n", encoding="utf-8")
  c = gpt2_config()
  tiny = tiny_config_factory(str(corpus))
  for section in ("data", "train", "eval", "checkpoint", "metrics"):
    c[section].update({k: v for k, v in tiny[section].to_dict().items() if k in c[section]})
  c.tokenizer.update(vocab_size=400, model_type="unigram")
  c.model.update(vocab_size=0, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                 max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0, dtype="float32")
  c.data.update(max_seq_length=64, packing=True)
  c.optimizer.update(learning_rate=3e-3, warmup_steps=5, end_learning_rate=3e-4)
  c.train.update(steps=60, log_every=20)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 60
  workdir = str(root / "run")
  train(c, workdir)
  return workdir


def test_memorised_sentence_comes_back(memorised_gpt2):
  _, tokenizer, task, params, step = sample.load_run(memorised_gpt2)
  assert step == 60 and task.name == "gpt2"
  ids = tokenizer.encode([SENTENCE])[0]
  new, _ = sample.generate_ids(task.build_model(), params, [EOT] + ids[:3], max_new_tokens=len(ids) - 3)
  np.testing.assert_array_equal(new, ids[3:])
  text = sample.generate(task, params, tokenizer, tokenizer.decode(ids[:3]), max_new_tokens=len(ids) - 3)
  assert text == tokenizer.decode(ids[3:]), text
