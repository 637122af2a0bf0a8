"""Preparing a token store: the in-memory tokens exactly, restartable, the same on every runner."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pretrain.data import corpus as corpus_lib
from pretrain.data import prepare as prepare_lib
from pretrain.data import store as store_lib
from pretrain.data.sentencepiece_tokenizer import train_tokenizer
from pretrain.data.tokenized import tokenize_documents
from pretrain.data.tokenized import TokenizedDocs
from pretrain.data.tokenizer_files import cached_tokenizer_path
from pretrain.errors import PretrainError

sys.path.insert(
  0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # For tests/fake_gcs.py.
from fake_gcs import BUCKET, root_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

fake_gcs = root_fixture()

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_VOCAB = 400
_TOK_CFG = {"path": "", "vocab_size": _VOCAB, "model_type": "unigram"}
_SMALL_UNIT = 60_000  # The ~780 KB text corpus in ~13 units.


def _text_cfg(path, **kw):
  return {"source": "text", "paths": str(path), "heldout_fraction": 0.05, **kw}


def _jsonl_cfg(path):
  return _text_cfg(path, source="jsonl", text_field="text")


@pytest.fixture(scope="module")
def tokenizer(text_corpus):
  return prepare_lib.resolve_tokenizer(_text_cfg(text_corpus), _TOK_CFG)


@pytest.fixture(scope="module")
def jsonl_corpus(text_corpus, tmp_path_factory):
  """The text corpus as JSON lines (a document's sentences joined), plus a line that is not JSON."""
  docs = open(text_corpus, encoding="utf-8").read().strip().split("\n\n")
  path = tmp_path_factory.mktemp("jsonl") / "corpus.jsonl"
  lines = [json.dumps({"text": " ".join(d.split("\n"))}) for d in docs]
  path.write_text("\n".join(lines[:50] + ["not json"] + lines[50:]) + "\n", encoding="utf-8")
  return str(path)


def _tree(folder) -> dict[str, bytes]:
  return {
    os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
    for d, _, files in os.walk(folder)
    for f in files
  }


def _mtimes(folder) -> dict[str, int]:
  return {
    os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
    for d, _, files in os.walk(folder)
    for f in files
  }


def _train_the_old_way(cfg, path):
  """As the tokenizer was trained before there was a sample: on every train sentence of the loaded corpus."""
  sentences = (s for d in corpus_lib.load_corpus(cfg).train for s in d)
  return train_tokenizer(sentences, _VOCAB, "unigram", str(path))


def _check_docs(docs, expected: TokenizedDocs) -> None:
  np.testing.assert_array_equal(docs.sentence_starts, expected.sentence_starts)
  np.testing.assert_array_equal(docs.doc_starts, expected.doc_starts)
  np.testing.assert_array_equal(docs.take(np.arange(docs.num_tokens)), expected.tokens)
  assert docs.max_token_id == expected.max_token_id


def _check_in_memory(store, data_cfg, tokenizer) -> None:
  """A one-unit store holds exactly today's tokens of the corpus' train and held-out splits."""
  c = corpus_lib.load_corpus(data_cfg)
  for split, docs in (("train", c.train), ("heldout", c.heldout)):
    assert len(store.shards(split)) == 1
    _check_docs(store.documents(split, 0), tokenize_documents(docs, tokenizer))


@pytest.mark.parametrize("source", ["text", "jsonl"])
def test_one_unit_is_the_in_memory_corpus(source, text_corpus, jsonl_corpus, tokenizer, tmp_path):
  cfg = _text_cfg(text_corpus) if source == "text" else _jsonl_cfg(jsonl_corpus)
  store = prepare_lib.prepare(cfg, tokenizer, str(tmp_path / "s"), num_workers=1)
  _check_in_memory(store, cfg, tokenizer)
  assert store.manifest["stats"] == {"undecodable_lines": 0, "bad_lines": int(source == "jsonl")}
  (src,) = store.manifest["sources"]
  assert src["ranges"] == [
    {
      "start": 0,
      "end": src["size"],
      "bytes": src["size"],
      "sha256": store_lib.file_sha256(src["path"]),
    }
  ]
  assert (
    store.open_tokenizer().fingerprint == tokenizer.fingerprint
  )  # The store carries its tokenizer.


def test_embedded_corpus_is_bit_identical(tmp_path):
  cfg = {"source": "embedded", "heldout_fraction": 0.02}
  tokenizer = prepare_lib.resolve_tokenizer(cfg, _TOK_CFG)
  old = _train_the_old_way(cfg, tmp_path / "old.model")
  assert (
    open(old.path, "rb").read() == open(tokenizer.path, "rb").read()
  )  # The sample is the whole corpus.
  start = time.monotonic()
  store = prepare_lib.prepare(cfg, tokenizer, str(tmp_path / "s"), num_workers=1)
  print(f"embedded corpus prepared in {time.monotonic() - start:.2f} s")
  _check_in_memory(store, cfg, tokenizer)
  assert store.manifest["sources"] == [] and "embedded-v1" in store.manifest["corpus"]["embedded"]


def test_tokenizer_sample(text_corpus, tokenizer, tmp_path):
  """A corpus within the sample trains the tokenizer of old, byte for byte; a larger one a bounded sample."""
  cfg = _text_cfg(text_corpus)
  old = _train_the_old_way(cfg, tmp_path / "old.model")
  assert open(old.path, "rb").read() == open(tokenizer.path, "rb").read()
  full = list(prepare_lib.sample_sentences(cfg))
  assert full == [s for d in corpus_lib.load_corpus(cfg).train for s in d]
  part = list(prepare_lib.sample_sentences(cfg, max_bytes=100_000))
  assert 0 < sum(len(s) + 1 for s in part) < 200_000 and len(part) < len(full) // 3
  small = dict(_TOK_CFG, sample_bytes=100_000, input_sentence_size=500)
  assert cached_tokenizer_path(small, cfg) != tokenizer.path
  a = prepare_lib.resolve_tokenizer(cfg, small)
  # A bound sentencepiece samples with a fixed seed: the same model again.
  b = train_tokenizer(
    prepare_lib.sample_sentences(cfg, 100_000),
    _VOCAB,
    "unigram",
    str(tmp_path / "b.model"),
    input_sentence_size=500,
  )
  c = train_tokenizer(
    prepare_lib.sample_sentences(cfg, 100_000),
    _VOCAB,
    "unigram",
    str(tmp_path / "c.model"),
    input_sentence_size=500,
  )
  assert open(b.path, "rb").read() == open(c.path, "rb").read()
  assert a.fingerprint != tokenizer.fingerprint


def _expected_units(cfg, tokenizer, unit_bytes):
  """Per unit, the tokens of its train and held-out documents, computed in memory."""
  units, _ = corpus_lib.plan_units(cfg, unit_bytes)
  out = []
  for u in units:
    train, heldout = prepare_lib.split_unit(
      list(corpus_lib.read_unit(u, cfg, {})), cfg["heldout_fraction"]
    )
    out.append((tokenize_documents(train, tokenizer), tokenize_documents(heldout, tokenizer)))
  return out


@pytest.mark.parametrize("source", ["text", "jsonl"])
def test_several_units_round_trip(source, text_corpus, jsonl_corpus, tokenizer, tmp_path):
  cfg = _text_cfg(text_corpus) if source == "text" else _jsonl_cfg(jsonl_corpus)
  store = prepare_lib.prepare(
    cfg, tokenizer, str(tmp_path / "s"), num_workers=1, unit_bytes=_SMALL_UNIT
  )
  expected = _expected_units(cfg, tokenizer, _SMALL_UNIT)
  assert len(expected) > 5
  for k, split in enumerate(store_lib.SPLITS):
    want = [e[k] for e in expected if e[k].num_docs]
    assert len(store.shards(split)) == len(want)
    for i, docs in enumerate(want):
      _check_docs(store.documents(split, i), docs)
  total = sum(store.totals(s)["num_docs"] for s in store_lib.SPLITS)
  c = corpus_lib.load_corpus(cfg)
  assert total == len(c.train) + len(c.heldout)  # Every document, once.
  assert len(store.manifest["sources"][0]["ranges"]) == len(expected)


def test_workers_and_beam_write_the_same_store(text_corpus, tokenizer, tmp_path):
  cfg = _text_cfg(text_corpus)
  trees = {}
  for name, kw in (
    ("one", {"num_workers": 1}),
    ("two", {"num_workers": 2}),
    ("beam", {"runner": "beam", "pipeline_args": ["--runner=DirectRunner"]}),
  ):
    prepare_lib.prepare(cfg, tokenizer, str(tmp_path / name), unit_bytes=_SMALL_UNIT, **kw)
    trees[name] = _tree(tmp_path / name)
  assert len(trees["one"]) > 20
  assert trees["two"] == trees["one"] and trees["beam"] == trees["one"]


def test_rerun_redoes_only_unfinished_units(text_corpus, tokenizer, tmp_path):
  cfg, out = _text_cfg(text_corpus), tmp_path / "s"
  prepare_lib.prepare(cfg, tokenizer, str(out), num_workers=1, unit_bytes=_SMALL_UNIT)
  reference, before = _tree(out), _mtimes(out)
  again = prepare_lib.prepare(cfg, tokenizer, str(out), num_workers=1, unit_bytes=_SMALL_UNIT)
  assert _mtimes(out) == before and again.manifest == json.loads(
    reference["manifest.json"]
  )  # Untouched.
  # A unit killed after its first shard, and a stray temp file: only that unit is written again.
  n = len(os.listdir(out / "work"))
  stems = [store_lib.shard_stem(s, 3, n) for s in store_lib.SPLITS]
  os.remove(out / "manifest.json")
  os.remove(out / "work" / "unit-00003.json")
  os.remove(out / f"{stems[1]}.array_record")
  os.makedirs(out / "work" / "tmp")
  (
    out / "work" / "tmp" / f"{store_lib.shard_stem('train', 4, n)}.array_record.0123.tmp"
  ).write_bytes(b"half")
  prepare_lib.prepare(cfg, tokenizer, str(out), num_workers=1, unit_bytes=_SMALL_UNIT)
  assert _tree(out) == reference
  now = _mtimes(out)
  assert {name for name in before if now[name] != before[name]} == {
    "manifest.json",
    "work/unit-00003.json",
    *(f"{s}{ext}" for s in stems for ext in (".array_record", ".index.npz")),
  }


_CONFIG = """
import ml_collections


def get_config():
  return ml_collections.ConfigDict(dict(
      data=dict(source="text", paths="", text_field="text", heldout_fraction=0.05),
      tokenizer=dict(path="", vocab_size={vocab}, model_type="unigram"),
  ))
"""


def _cli_args(tmp_path, corpus_path, out, *args):
  config = tmp_path / "config.py"
  config.write_text(_CONFIG.format(vocab=_VOCAB))
  return [
    sys.executable,
    "-m",
    "pretrain.prepare",
    f"--config={config}",
    f"--config.data.paths={corpus_path}",
    f"--out={out}",
    *args,
  ]


def test_killed_at_random_moments_then_rerun_is_byte_identical(text_corpus, tokenizer, tmp_path):
  reference = tmp_path / "reference"
  prepare_lib.prepare(
    _text_cfg(text_corpus), tokenizer, str(reference), num_workers=1, unit_bytes=_SMALL_UNIT
  )
  n = len(os.listdir(reference / "work"))
  out = tmp_path / "killed"
  args = _cli_args(tmp_path, text_corpus, out, f"--unit_mb={_SMALL_UNIT / 2**20!r}")
  env = dict(os.environ, PRETRAIN_PREPARE_TEST_SLEEP="0.25")
  rng = random.Random(0)

  def markers():
    return (
      {f for f in os.listdir(out / "work") if f.startswith("unit-")}
      if (out / "work").exists()
      else set()
    )

  def mid_unit_now():  # A unit's shard is written and its done marker is not.
    shard_units = (
      {f.split("-")[1] for f in os.listdir(out) if f.endswith((".array_record", ".index.npz"))}
      if out.exists()
      else set()
    )
    done = markers()
    return any(f"unit-{u}.json" not in done for u in shard_units) or bool(
      (out / "work" / "tmp").is_dir() and os.listdir(out / "work" / "tmp")
    )

  mid_unit = 0
  for run, workers in enumerate((1, 2, 1)):
    before = markers()
    proc = subprocess.Popen(
      args + [f"--num_workers={workers}"],
      env=env,
      cwd=_REPO,
      start_new_session=True,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    # Wait for this run's own progress (a loaded machine takes seconds to import): the first run is
    # killed the moment it is inside a unit, the others at a random moment after their first unit.
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
      if mid_unit_now() if run == 0 else len(markers() - before) > 0:
        break
      time.sleep(0.005)
    if run:
      time.sleep(rng.uniform(0.0, 0.6))
    os.killpg(proc.pid, signal.SIGKILL)  # The CLI and its worker processes.
    assert proc.wait() == -signal.SIGKILL
    # The kill happened before the end: no manifest, units left to do.
    assert not (out / "manifest.json").exists()
    done = markers()
    assert len(done) < n, "the run finished before it was killed; kill it sooner"
    print("killed:", workers, len(done), "of", n, sorted(os.listdir(out / "work")))
    mid_unit += mid_unit_now()
  assert mid_unit, "no kill landed inside a unit"
  result = subprocess.run(args, capture_output=True, text=True, cwd=_REPO)
  assert result.returncode == 0, result.stderr
  assert re.search(r"train [\d,]+ docs .* MB/s", result.stdout), result.stdout
  assert _tree(out) == _tree(reference)


def test_finished_store_of_another_corpus_is_refused_untouched(
  text_corpus, jsonl_corpus, tokenizer, tmp_path
):
  out = tmp_path / "s"
  prepare_lib.prepare(_text_cfg(text_corpus), tokenizer, str(out), num_workers=1)
  before, times = _tree(out), _mtimes(out)
  other = _jsonl_cfg(jsonl_corpus)
  with pytest.raises(
    PretrainError,
    match=r"holds a finished store of another corpus \(source 'text', here "
    r"'jsonl'.*\); choose another --out",
  ):
    prepare_lib.prepare(other, tokenizer, str(out), num_workers=1)
  with pytest.raises(
    PretrainError, match="holds a finished store of another corpus.*unit_bytes 67108864"
  ):
    prepare_lib.prepare(
      _text_cfg(text_corpus), tokenizer, str(out), num_workers=1, unit_bytes=1 << 20
    )
  # A partial store of another tokenizer: its plan names both.
  os.remove(out / "manifest.json")
  before.pop("manifest.json"), times.pop("manifest.json")
  other_tok = prepare_lib.resolve_tokenizer(_text_cfg(text_corpus), dict(_TOK_CFG, vocab_size=300))
  with pytest.raises(
    PretrainError,
    match=rf"holds a partial store of another plan \(tokenizer "
    rf"{tokenizer.fingerprint[:12]} \(vocab 400\), here {other_tok.fingerprint[:12]} "
    r"\(vocab 300\)",
  ):
    prepare_lib.prepare(_text_cfg(text_corpus), other_tok, str(out), num_workers=1)
  assert _tree(out) == before and _mtimes(out) == times
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(PretrainError, match="is a folder that is not a token store"):
    prepare_lib.prepare(_text_cfg(text_corpus), tokenizer, str(tmp_path / "mine"), num_workers=1)
  assert os.listdir(tmp_path / "mine") == ["notes.txt"]


@pytest.mark.parametrize(
  "content, message",
  [
    (b"", r"holds no documents \(skipped 0 undecodable line\(s\) and 0 bad line\(s\)\)"),
    (
      b"\xff\xfe bad\n\xc3\x28 also bad\n\n\xa0\n",
      r"holds no documents \(skipped 3 undecodable line\(s\)",
    ),
  ],
)
def test_empty_or_undecodable_input(content, message, tokenizer, tmp_path):
  path = tmp_path / "c.txt"
  path.write_bytes(content)
  out = tmp_path / "s"
  with pytest.raises(PretrainError, match=message):
    prepare_lib.prepare(_text_cfg(path), tokenizer, str(out), num_workers=1)
  assert not out.exists()  # What it made for nothing is gone,
  mine = tmp_path / "mine"
  mine.mkdir()
  with pytest.raises(PretrainError, match=message):
    prepare_lib.prepare(_text_cfg(path), tokenizer, str(mine), num_workers=1)
  assert mine.is_dir() and not os.listdir(mine)  # but not the user's own (empty) folder.


def test_jsonl_without_usable_lines(tokenizer, tmp_path):
  path = tmp_path / "c.jsonl"
  path.write_text('{"text": 3}\nnot json\n{"other": "x"}\n')
  with pytest.raises(
    PretrainError, match=r"holds no documents \(skipped 0 undecodable line\(s\) and 3 bad"
  ):
    prepare_lib.prepare(_jsonl_cfg(path), tokenizer, str(tmp_path / "s"), num_workers=1)


def test_no_heldout_document(tokenizer, tmp_path):
  path = tmp_path / "c.txt"
  path.write_text("A single document. With two lines.\nSecond line here.\n")
  with pytest.raises(PretrainError, match="has no held-out document: 1 document"):
    prepare_lib.prepare(_text_cfg(path), tokenizer, str(tmp_path / "s"), num_workers=1)


def test_cli_error_is_one_line_and_exit_2(text_corpus, tokenizer, tmp_path):
  out = tmp_path / "s"
  prepare_lib.prepare(
    _text_cfg(text_corpus, heldout_fraction=0.1), tokenizer, str(out), num_workers=1
  )
  result = subprocess.run(
    _cli_args(tmp_path, text_corpus, out), capture_output=True, text=True, cwd=_REPO
  )
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr
  assert "holds a finished store of another corpus (heldout_fraction 0.1, here 0.05)" in errors[0]
  assert result.stdout == ""


def test_gs_store_equals_the_local_one(fake_gcs, text_corpus, tokenizer, tmp_path):
  cfg, url = _text_cfg(text_corpus), f"gs://{BUCKET}/stores/wiki"
  local = prepare_lib.prepare(
    cfg, tokenizer, str(tmp_path / "local"), num_workers=1, unit_bytes=200_000
  )
  remote = prepare_lib.prepare(cfg, tokenizer, url, num_workers=1, unit_bytes=200_000)
  assert _tree(fake_gcs / BUCKET / "stores" / "wiki") == _tree(tmp_path / "local")
  remote = store_lib.open_store(url)
  assert remote.manifest == local.manifest and remote.name == "wiki"
  for split in store_lib.SPLITS:
    for i in range(len(local.shards(split))):
      a, b = local.documents(split, i), remote.documents(split, i)
      np.testing.assert_array_equal(
        a.take(np.arange(a.num_tokens)), b.take(np.arange(b.num_tokens))
      )
      np.testing.assert_array_equal(a.sentence_starts, b.sentence_starts)
  assert remote.open_tokenizer().fingerprint == tokenizer.fingerprint
  again = prepare_lib.prepare(
    cfg, tokenizer, url, num_workers=1, unit_bytes=200_000
  )  # Already complete.
  assert again.manifest == local.manifest
  # Beam workers read the tokenizer from the store in the bucket.
  prepare_lib.prepare(
    cfg,
    tokenizer,
    f"gs://{BUCKET}/stores/beam",
    unit_bytes=200_000,
    runner="beam",
    pipeline_args=["--runner=DirectRunner"],
  )
  assert _tree(fake_gcs / BUCKET / "stores" / "beam") == _tree(tmp_path / "local")
