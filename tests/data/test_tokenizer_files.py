"""Tests for pretrain.data.tokenizer_files: the tokenizer a run opens, or trains once and caches."""

import os

import ml_collections
import pytest

from pretrain.data import corpus
from pretrain.data import sentencepiece_tokenizer
from pretrain.data import tokenizer_files
from pretrain.errors import PretrainError


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
  """Every test caches under its own tmp dir, never ~/.cache."""
  cache = tmp_path / "cache"
  monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(cache))
  return cache


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> sentencepiece_tokenizer.SentencePieceTokenizer:
  sentences = [s for d in corpus.embedded_documents()[:120] for s in d][:3000]
  return sentencepiece_tokenizer.train_tokenizer(
    sentences, 400, "unigram", str(tmp_path_factory.mktemp("tok") / "t.model")
  )


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> str:
  """A small BERT-format corpus (200 documents) as a glob."""
  root = tmp_path_factory.mktemp("corpus")
  docs = corpus.embedded_documents()[:200]
  for i in range(0, len(docs), 50):
    with open(root / f"part{i // 50}.txt", "w", encoding="utf-8") as f:
      f.write("\n\n".join("\n".join(d) for d in docs[i : i + 50]) + "\n")
  return str(root / "part*.txt")


def _cfgs(paths: str, vocab_size: int = 300, path: str = ""):
  data = ml_collections.ConfigDict(
    dict(source="text", paths=paths, text_field="text", heldout_fraction=0.05)
  )
  tok = ml_collections.ConfigDict(dict(path=path, vocab_size=vocab_size, model_type="unigram"))
  return data, tok


def test_load_tokenizer_from_path(tokenizer):
  _, tok_cfg = _cfgs("", path=tokenizer.path)
  loaded = tokenizer_files.load_tokenizer(tok_cfg)
  assert loaded.fingerprint == tokenizer.fingerprint and loaded.path == tokenizer.path
  tok_cfg.path = "/nonexistent/t.model"
  with pytest.raises(PretrainError, match="tokenizer.path '/nonexistent/t.model' does not exist"):
    tokenizer_files.load_tokenizer(tok_cfg)
  tok_cfg.path = ""
  with pytest.raises(PretrainError, match="no corpus"):
    tokenizer_files.load_tokenizer(tok_cfg)


def test_load_tokenizer_trains_once_and_caches(text_corpus, _cache_dir, monkeypatch):
  data_cfg, tok_cfg = _cfgs(text_corpus)
  trained = tokenizer_files.load_tokenizer(tok_cfg, data_cfg)
  assert os.path.dirname(trained.path) == str(_cache_dir / "tokenizers")
  assert trained.path.endswith(".model") and trained.vocab_size == 300
  # It trained on the train split only.
  c = corpus.load_corpus(data_cfg)
  direct = sentencepiece_tokenizer.train_tokenizer(
    (s for d in c.train for s in d), 300, "unigram", str(_cache_dir / "d.model")
  )
  assert direct.fingerprint == trained.fingerprint

  def no_training(*args, **kwargs):
    raise AssertionError("trained again")

  # prepare.train_on_sample looks train_tokenizer up in its module.
  monkeypatch.setattr(sentencepiece_tokenizer, "train_tokenizer", no_training)
  again = tokenizer_files.load_tokenizer(tok_cfg, data_cfg)
  assert again.path == trained.path and again.fingerprint == trained.fingerprint
  # Another vocab size or model type is another cache entry.
  assert tokenizer_files.cached_tokenizer_path(_cfgs(text_corpus, 301)[1], data_cfg) != trained.path
  tok_cfg.model_type = "bpe"
  assert tokenizer_files.cached_tokenizer_path(tok_cfg, data_cfg) != trained.path
