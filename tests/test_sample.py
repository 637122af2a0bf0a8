"""pretrain.sample on a tiny model that has memorised a sentence."""
import os
import subprocess
import sys

import numpy as np
import pytest

from pretrain import sample
from pretrain.data import special_tokens
from pretrain.errors import PretrainError
from pretrain.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCE = "The garden gate opens at seven every morning."


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory, text_corpus, tiny_config_factory, memorised_corpus):
  """A tiny BERT trained on prose in which every document repeats SENTENCE."""
  root = tmp_path_factory.mktemp("memorised")
  c = tiny_config_factory(memorised_corpus(text_corpus, root / "corpus.txt", SENTENCE))
  c.tokenizer.vocab_size = 400
  c.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  c.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  c.train.update(steps=100, log_every=20)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 100
  workdir = str(root / "run")
  train(c, workdir)
  return workdir


def test_masked_word_of_a_memorised_sentence_comes_back(memorised_run):
  _, tokenizer, task, params, step = sample.load_run(memorised_run)
  assert step == 100
  ids = tokenizer.encode([SENTENCE])[0]
  hits = 0
  for k in range(1, len(ids) - 1):
    masked = np.asarray([special_tokens.CLS_ID] + ids[:k] + [special_tokens.MASK_ID] + ids[k + 1:]
                        + [special_tokens.SEP_ID], np.int32)
    probs = sample.mask_probabilities(task, params, masked)
    assert probs.shape == (1, tokenizer.vocab_size)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-4)
    hits += int(np.argmax(probs[0]) == ids[k])
  assert hits >= (len(ids) - 2) * 0.6, (hits, len(ids))


def test_cli_prints_candidates_and_refuses_bad_prompts(memorised_run):
  run = lambda *a: subprocess.run([sys.executable, "-m", "pretrain.sample", f"--workdir={memorised_run}", *a],
                                  cwd=REPO, capture_output=True, text=True, timeout=300)
  r = run("--prompt=The garden [MASK] opens at seven every morning.", "--top_k=3")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert lines[0].startswith("step 100:") and lines[1].startswith("  [MASK] 1: ")
  assert len(lines[1].split(", ")) == 3
  r = run("--prompt=no mask here")
  assert r.returncode == 2 and "error:" in r.stderr and "[MASK]" in r.stderr
  with pytest.raises(PretrainError, match="no checkpoint"):
    sample.load_run(os.path.join(memorised_run, "absent"))
