"""Tests for pretrain.data.tokenizer and the `python -m pretrain.tokenizer` entry point."""
import hashlib
import io
import os
import subprocess
import sys
import unicodedata

import ml_collections
import numpy as np
import pytest
import sentencepiece as spm

from pretrain.data import corpus
from pretrain.data import tokenizer as tok_lib
from pretrain.data.tokenized import TokenizedDocs
from pretrain.errors import PretrainError

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
  """Every test caches under its own tmp dir, never ~/.cache."""
  cache = tmp_path / "cache"
  monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(cache))
  return cache


@pytest.fixture(scope="module")
def sentences() -> list[str]:
  return [s for d in corpus.embedded_documents()[:120] for s in d][:3000]


@pytest.fixture(scope="module")
def tokenizer(sentences, tmp_path_factory) -> tok_lib.Tokenizer:
  return tok_lib.train_tokenizer(sentences, 400, "unigram", str(tmp_path_factory.mktemp("tok") / "t.model"))


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> str:
  """A small BERT-format corpus (200 documents) as a glob."""
  root = tmp_path_factory.mktemp("corpus")
  docs = corpus.embedded_documents()[:200]
  for i in range(0, len(docs), 50):
    with open(root / f"part{i // 50}.txt", "w", encoding="utf-8") as f:
      f.write("\n\n".join("\n".join(d) for d in docs[i:i + 50]) + "\n")
  return str(root / "part*.txt")


def _cfgs(paths: str, vocab_size: int = 300, path: str = ""):
  data = ml_collections.ConfigDict(dict(source="text", paths=paths, text_field="text", heldout_fraction=0.05))
  tok = ml_collections.ConfigDict(dict(path=path, vocab_size=vocab_size, model_type="unigram"))
  return data, tok


def _normalized(text: str) -> str:
  return " ".join(unicodedata.normalize("NFKC", text).split())


def test_special_ids_are_fixed(tokenizer):
  assert (tok_lib.PAD_ID, tok_lib.UNK_ID, tok_lib.CLS_ID, tok_lib.SEP_ID, tok_lib.MASK_ID) == (0, 1, 2, 3, 4)
  assert tok_lib.NUM_SPECIAL == len(tok_lib.SPECIAL_TOKENS) == 5
  assert [tokenizer.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert tokenizer.vocab_size == 400
  # Special tokens are not matched inside text, and no id below 5 but [UNK] comes from encoding.
  ids = tokenizer.encode(["[CLS] a [MASK] b [SEP] \u2603"])[0]
  assert not set(ids) & {0, 2, 3, 4}
  assert tok_lib.UNK_ID in ids  # The snowman is not in the training text.


def test_model_with_wrong_specials_is_rejected(sentences, tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences[:500]), model_writer=model,
                                 vocab_size=100, minloglevel=2)  # Defaults: <unk>=0, <s>=1, </s>=2.
  path = tmp_path / "wrong.model"
  path.write_bytes(model.getvalue())
  with pytest.raises(PretrainError, match=r"wrong\.model.*id 0 is '<unk>', expected '\[PAD\]'"):
    tok_lib.Tokenizer(str(path))
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(PretrainError, match=r"junk\.model.*not a SentencePiece model"):
    tok_lib.Tokenizer(str(tmp_path / "junk.model"))


def test_training_is_deterministic(sentences, tokenizer, tmp_path):
  again = tok_lib.train_tokenizer(sentences, 400, "unigram", str(tmp_path / "again.model"))
  first_bytes = open(tokenizer.path, "rb").read()
  assert open(again.path, "rb").read() == first_bytes
  assert again.fingerprint == tokenizer.fingerprint == hashlib.sha256(first_bytes).hexdigest()
  assert os.listdir(tmp_path) == ["again.model"]  # No temp files left behind.
  bpe = tok_lib.train_tokenizer(sentences, 400, "bpe", str(tmp_path / "bpe.model"))
  assert bpe.fingerprint != tokenizer.fingerprint
  assert [bpe.id_to_piece(i) for i in range(5)] == list(tok_lib.SPECIAL_TOKENS)


def test_training_rejects_bad_options(sentences, tmp_path):
  out = str(tmp_path / "t.model")
  with pytest.raises(PretrainError, match="model_type='wordpiece' is unknown; allowed: unigram, bpe"):
    tok_lib.train_tokenizer(sentences, 400, "wordpiece", out)
  with pytest.raises(PretrainError, match="vocab_size=3 must be an integer"):
    tok_lib.train_tokenizer(sentences, 3, "unigram", out)
  with pytest.raises(PretrainError, match=r"vocab_size=5000 is too large .* suggests at most \d+"):
    tok_lib.train_tokenizer(["a small text", "with few pieces"] * 20, 5000, "unigram", out)
  with pytest.raises(PretrainError, match="no text"):
    tok_lib.train_tokenizer(["", "  "], 400, "unigram", out)
  assert not os.listdir(tmp_path)


def test_word_start(tokenizer):
  ws = tokenizer.word_start
  assert ws.dtype == bool and ws.shape == (tokenizer.vocab_size,)
  expected = [i < 5 or tokenizer.id_to_piece(i).startswith("\u2581") for i in range(tokenizer.vocab_size)]
  np.testing.assert_array_equal(ws, expected)
  assert 0.2 < ws.mean() < 0.9
  # Grouping pieces at word starts gives back the words.
  text = "the interpreter evaluates expressions"
  ids = tokenizer.encode([text])[0]
  words, current = [], []
  for i in ids:
    if ws[i] and current:
      words.append(current)
      current = []
    current.append(i)
  words.append(current)
  assert [tokenizer.decode(w) for w in words] == text.split()


def test_encode_decode_round_trip(tokenizer, sentences):
  texts = [s for s in sentences[::10] if s.isascii()]
  ids = tokenizer.encode(texts)
  assert len(ids) == len(texts) and all(isinstance(i, int) for i in ids[0])
  same = sum(_normalized(tokenizer.decode(i)) == _normalized(t) for i, t in zip(ids, texts))
  assert same >= 0.95 * len(texts)
  assert tokenizer.decode(np.asarray(ids[0], np.int32)) == tokenizer.decode(ids[0])


def test_tokenize_documents(tokenizer):
  docs = [["The first sentence.", "", "The second one."], ["", "  "], [], ["A lone sentence here."]]
  tokenized = tok_lib.tokenize_documents(docs, tokenizer)
  expected = TokenizedDocs.from_lists([tokenizer.encode(d) if d else [] for d in docs])
  for field in ("tokens", "sentence_starts", "doc_starts"):
    got, want = getattr(tokenized, field), getattr(expected, field)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
  assert tokenized.num_docs == 2 and tokenized.num_sentences == 3
  assert _normalized(tokenizer.decode(tokenized.sentence(1))) == "The second one."
  empty = tok_lib.tokenize_documents([], tokenizer)
  assert (empty.num_docs, empty.num_sentences, empty.num_tokens) == (0, 0, 0)


def test_tokenize_documents_matches_per_sentence_encoding(tokenizer):
  docs = corpus.embedded_documents()[100:140]
  tokenized = tok_lib.tokenize_documents(docs, tokenizer)
  expected = TokenizedDocs.from_lists([tokenizer.encode(d) for d in docs])
  np.testing.assert_array_equal(tokenized.tokens, expected.tokens)
  np.testing.assert_array_equal(tokenized.sentence_starts, expected.sentence_starts)
  np.testing.assert_array_equal(tokenized.doc_starts, expected.doc_starts)


def test_load_tokenizer_from_path(tokenizer):
  _, tok_cfg = _cfgs("", path=tokenizer.path)
  loaded = tok_lib.load_tokenizer(tok_cfg)
  assert loaded.fingerprint == tokenizer.fingerprint and loaded.path == tokenizer.path
  tok_cfg.path = "/nonexistent/t.model"
  with pytest.raises(PretrainError, match="tokenizer.path '/nonexistent/t.model' does not exist"):
    tok_lib.load_tokenizer(tok_cfg)
  tok_cfg.path = ""
  with pytest.raises(PretrainError, match="no corpus"):
    tok_lib.load_tokenizer(tok_cfg)


def test_load_tokenizer_trains_once_and_caches(text_corpus, _cache_dir, monkeypatch):
  data_cfg, tok_cfg = _cfgs(text_corpus)
  trained = tok_lib.load_tokenizer(tok_cfg, data_cfg)
  assert os.path.dirname(trained.path) == str(_cache_dir / "tokenizers")
  assert trained.path.endswith(".model") and trained.vocab_size == 300
  # It trained on the train split only.
  c = corpus.load_corpus(data_cfg)
  direct = tok_lib.train_tokenizer((s for d in c.train for s in d), 300, "unigram", str(_cache_dir / "d.model"))
  assert direct.fingerprint == trained.fingerprint

  def no_training(*args, **kwargs):
    raise AssertionError("trained again")

  monkeypatch.setattr(tok_lib, "train_tokenizer", no_training)
  again = tok_lib.load_tokenizer(tok_cfg, data_cfg)
  assert again.path == trained.path and again.fingerprint == trained.fingerprint
  # Another vocab size or model type is another cache entry.
  assert tok_lib.cached_tokenizer_path(_cfgs(text_corpus, 301)[1], data_cfg) != trained.path
  tok_cfg.model_type = "bpe"
  assert tok_lib.cached_tokenizer_path(tok_cfg, data_cfg) != trained.path


_CONFIG = """
import ml_collections


def get_config():
  return ml_collections.ConfigDict(dict(
      data=dict(source="{source}", paths="{paths}", text_field="text", heldout_fraction=0.02),
      tokenizer=dict(path="", vocab_size=300, model_type="unigram"),
  ))
"""


def _cli(tmp_path, cache, source, paths, *args):
  config = tmp_path / "config.py"
  config.write_text(_CONFIG.format(source=source, paths=paths))
  env = dict(os.environ, PRETRAIN_CACHE_DIR=str(cache))
  return subprocess.run([sys.executable, "-m", "pretrain.tokenizer", f"--config={config}", *args],
                        capture_output=True, text=True, env=env, cwd=_REPO)


def test_cli_trains_into_the_cache(text_corpus, tmp_path, _cache_dir):
  result = _cli(tmp_path, _cache_dir, "text", text_corpus)
  assert result.returncode == 0, result.stderr
  data_cfg, tok_cfg = _cfgs(text_corpus)
  data_cfg.heldout_fraction = 0.02
  path = tok_lib.cached_tokenizer_path(tok_cfg, data_cfg)
  assert f"path: {path}" in result.stdout
  assert "vocab_size: 300" in result.stdout
  assert "corpus: source=text, files=" in result.stdout and "pieces: \u2581" in result.stdout
  assert tok_lib.load_tokenizer(tok_cfg, data_cfg).path == path  # Found without training.
  out = tmp_path / "out" / "my.model"
  result = _cli(tmp_path, _cache_dir, "text", text_corpus, f"--out={out}", "--config.tokenizer.vocab_size=350")
  assert result.returncode == 0, result.stderr
  assert tok_lib.Tokenizer(str(out)).vocab_size == 350


def test_cli_reports_a_missing_glob(tmp_path, _cache_dir):
  result = _cli(tmp_path, _cache_dir, "text", f"{tmp_path}/missing/*.txt")
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and "missing/*.txt" in result.stderr
  assert "Traceback" not in result.stderr
  assert not _cache_dir.exists()
