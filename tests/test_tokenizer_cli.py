"""Tests for the `python -m pretrain.tokenizer` entry point (pretrain/tokenizer.py)."""

import os
import subprocess
import sys

from pretrain.data import sentencepiece_tokenizer
from pretrain.data import tokenizer_files

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The corpus, config and per-test cache fixtures of the library's own tests.
sys.path.insert(0, os.path.join(_REPO, "tests", "data"))
import test_tokenizer_files as shared  # pylint: disable=g-import-not-at-top,wrong-import-position

_cache_dir, text_corpus, _cfgs = (
  shared._cache_dir,
  shared.text_corpus,
  shared._cfgs,
)  # The fixtures, shared.


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
  return subprocess.run(
    [sys.executable, "-m", "pretrain.tokenizer", f"--config={config}", *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=_REPO,
  )


def test_cli_trains_into_the_cache(text_corpus, tmp_path, _cache_dir):
  result = _cli(tmp_path, _cache_dir, "text", text_corpus)
  assert result.returncode == 0, result.stderr
  data_cfg, tok_cfg = _cfgs(text_corpus)
  data_cfg.heldout_fraction = 0.02
  path = tokenizer_files.cached_tokenizer_path(tok_cfg, data_cfg)
  assert f"path: {path}" in result.stdout
  assert "vocab_size: 300" in result.stdout
  assert "corpus: source=text, files=" in result.stdout and "pieces: \u2581" in result.stdout
  assert tokenizer_files.load_tokenizer(tok_cfg, data_cfg).path == path  # Found without training.
  out = tmp_path / "out" / "my.model"
  result = _cli(
    tmp_path, _cache_dir, "text", text_corpus, f"--out={out}", "--config.tokenizer.vocab_size=350"
  )
  assert result.returncode == 0, result.stderr
  assert sentencepiece_tokenizer.SentencePieceTokenizer(str(out)).vocab_size == 350


def test_cli_reports_a_missing_glob(tmp_path, _cache_dir):
  result = _cli(tmp_path, _cache_dir, "text", f"{tmp_path}/missing/*.txt")
  assert result.returncode == 2
  # One error line (libraries may log before it, e.g. jax's CUDA plugin where the aot extra is installed).
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "missing/*.txt" in errors[0], result.stderr
  assert "Traceback" not in result.stderr
  assert not _cache_dir.exists()
