"""The token store format: shards written and read back exactly, lazily, and every damage named."""

import concurrent.futures
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import pytest

from pretrain import paths
from pretrain.data import store as store_lib
from pretrain.data.tokenized import TokenizedDocs
from pretrain.errors import PretrainError

sys.path.insert(
  0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # For tests/fake_gcs.py.
from fake_gcs import BUCKET, root_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

fake_gcs = root_fixture()

_FINGERPRINT = "ab" * 32


def _random_docs(seed: int, num_docs: int, vocab: int) -> TokenizedDocs:
  rng = np.random.default_rng(seed)
  return TokenizedDocs.from_lists(
    [
      [rng.integers(0, vocab, size=rng.integers(1, 40)).tolist() for _ in range(rng.integers(1, 9))]
      for _ in range(num_docs)
    ]
  )


class _Tok:
  def __init__(self, fingerprint=_FINGERPRINT, vocab_size=500):
    self.fingerprint, self.vocab_size, self.path = fingerprint, vocab_size, "/x/tok.model"


def _make_store(
  out: str, train: list[TokenizedDocs], heldout: list[TokenizedDocs], vocab: int = 500
) -> str:
  """A store of the given shards (unit i holds train[i] and heldout[i]), written as prepare writes one."""
  n = max(len(train), len(heldout))
  tmp = os.path.join(str(out), "work", "tmp") if not paths.is_remote(out) else tempfile.mkdtemp()
  units = []
  for i in range(n):
    dtype = store_lib.token_dtype(vocab)
    shards = {s: None for s in store_lib.SPLITS}
    for s, d in (("train", train), ("heldout", heldout)):
      if i < len(d):
        shards[s] = store_lib.write_shard(out, store_lib.shard_stem(s, i, n), d[i], dtype, tmp)
    units.append({"shards": shards, "stats": {"undecodable_lines": 0, "bad_lines": i}})
  tok = {"fingerprint": _FINGERPRINT, "vocab_size": vocab, "kind": "sentencepiece", "files": []}
  manifest = store_lib.build_manifest(tok, {"source": "text"}, [], units)
  paths.write_bytes_atomic(store_lib.join(out, store_lib.MANIFEST), store_lib.dumps(manifest))
  return out


def _check_equal(docs, expected: TokenizedDocs) -> None:
  np.testing.assert_array_equal(docs.sentence_starts, expected.sentence_starts)
  np.testing.assert_array_equal(docs.doc_starts, expected.doc_starts)
  assert (docs.num_docs, docs.num_sentences, docs.num_tokens, docs.max_token_id) == (
    expected.num_docs,
    expected.num_sentences,
    expected.num_tokens,
    expected.max_token_id,
  )
  got = docs.take(np.arange(docs.num_tokens))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, expected.tokens)


@pytest.mark.parametrize("vocab", [500, 70_000])
def test_round_trip(tmp_path, vocab):
  train, heldout = (
    [_random_docs(0, 50, vocab), _random_docs(1, 30, vocab)],
    [_random_docs(2, 5, vocab)],
  )
  store = store_lib.open_store(_make_store(str(tmp_path), train, heldout, vocab))
  assert store.manifest["token_dtype"] == ("uint16" if vocab <= 65536 else "uint32")
  assert [s.file for s in store.shards("train")] == [
    "train-00000-of-00002.array_record",
    "train-00001-of-00002.array_record",
  ]
  assert len(store.shards("heldout")) == 1  # Unit 1 had no held-out document: no shard.
  for split, shards in (("train", train), ("heldout", heldout)):
    for i, expected in enumerate(shards):
      _check_equal(store.documents(split, i), expected)
  assert store.totals("train")["num_docs"] == 80
  assert store.num_tokens("train") == sum(d.num_tokens for d in train)
  assert store.manifest["stats"] == {"undecodable_lines": 0, "bad_lines": 1}
  assert store.name == tmp_path.name
  # Any shape of positions, repeats and order: as numpy indexing of the flat tokens.
  docs = store.documents("train", 1)
  pos = np.random.default_rng(3).integers(0, docs.num_tokens, size=(4, 3, 5))
  np.testing.assert_array_equal(docs.take(pos), train[1].tokens[pos])
  assert docs.take(np.zeros([0], np.int64)).shape == (0,)
  with pytest.raises(IndexError):
    docs.take(np.array([docs.num_tokens]))


def _tree(folder) -> dict[str, bytes]:
  return {
    os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
    for d, _, files in os.walk(folder)
    for f in files
  }


def test_files_are_deterministic(tmp_path):
  docs = [_random_docs(5, 40, 500)]
  a, b = tmp_path / "a", tmp_path / "b"
  for d in (a, b):
    d.mkdir()
    _make_store(str(d), docs, docs)
  assert _tree(a) == _tree(b)
  assert sorted(_tree(a)) == [
    "heldout-00000-of-00001.array_record",
    "heldout-00000-of-00001.index.npz",
    "manifest.json",
    "train-00000-of-00001.array_record",
    "train-00000-of-00001.index.npz",
  ]  # No temp file is left.


def test_reads_only_what_take_touches(tmp_path):
  """The layout needs no record, a shard no other shard, and opening the store reads no shard."""
  train = [_random_docs(6, 20, 500), _random_docs(7, 20, 500)]
  store = store_lib.open_store(_make_store(str(tmp_path), train, train))
  os.remove(tmp_path / "train-00001-of-00002.array_record")
  os.remove(tmp_path / "heldout-00000-of-00002.index.npz")
  _check_equal(store.documents("train", 0), train[0])
  np.testing.assert_array_equal(store.documents("train", 1).doc_starts, train[1].doc_starts)
  held = store.documents("heldout", 0)
  with pytest.raises(PretrainError, match="heldout-00000-of-00002.index.npz is missing"):
    held.sentence_starts  # pylint: disable=pointless-statement


def test_threads_share_one_shard(tmp_path):
  train = [_random_docs(8, 200, 500)]
  docs = store_lib.open_store(_make_store(str(tmp_path), train, train)).documents("train", 0)
  rng = np.random.default_rng(0)
  queries = [rng.integers(0, docs.num_tokens, size=64) for _ in range(200)]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(docs.take, queries))
  for q, r in zip(queries, results):
    np.testing.assert_array_equal(r, train[0].tokens[q])


def test_unfinished_and_other_format(tmp_path):
  with pytest.raises(
    PretrainError,
    match=r"is not a finished token store \(no manifest.json\); run python -m "
    r"pretrain.prepare",
  ):
    store_lib.open_store(str(tmp_path))
  out = _make_store(str(tmp_path), [_random_docs(0, 3, 500)], [_random_docs(1, 3, 500)])
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  manifest["format_version"] = "pretrain-store-v0"
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(
    PretrainError, match="format 'pretrain-store-v0', this code reads 'pretrain-store-v1'"
  ):
    store_lib.open_store(out)
  (tmp_path / "manifest.json").write_text("{")
  with pytest.raises(PretrainError, match="not valid JSON"):
    store_lib.open_store(out)


def test_missing_and_truncated_shards_are_named(tmp_path):
  train = [_random_docs(i, 10, 500) for i in range(3)]
  out = _make_store(str(tmp_path), train, train)
  shard = tmp_path / "train-00001-of-00003.array_record"
  size = shard.stat().st_size
  shard.write_bytes(shard.read_bytes()[:1000])
  with pytest.raises(
    PretrainError,
    match=f"shard train-00001-of-00003.array_record is truncated: 1000 bytes, "
    f"the manifest says {size}",
  ):
    store_lib.open_store(out)
  shard.unlink()
  with pytest.raises(PretrainError, match="shard train-00001-of-00003.array_record is missing"):
    store_lib.open_store(out)
  (tmp_path / "heldout-00002-of-00003.index.npz").unlink()
  shard.write_bytes(b"")
  with pytest.raises(
    PretrainError, match="train-00001-of-00003.array_record is truncated: 0 bytes"
  ):
    store_lib.open_store(out)


def test_check_tokenizer_names_both(tmp_path):
  store = store_lib.open_store(
    _make_store(str(tmp_path), [_random_docs(0, 3, 500)], [_random_docs(1, 3, 500)])
  )
  store.check_tokenizer(_Tok())
  with pytest.raises(
    PretrainError,
    match=r"tokenizer ababababab.. \(vocab 500\), but this run's tokenizer "
    r"/x/tok.model is cdcdcdcdcdcd \(vocab 512\)",
  ):
    store.check_tokenizer(_Tok("cd" * 32, 512))
  with pytest.raises(PretrainError, match=r"\(vocab 500\).*\(vocab 501\)"):
    store.check_tokenizer(_Tok(vocab_size=501))


def test_gs_store_reads_through_a_verified_local_copy(fake_gcs, tmp_path, monkeypatch):
  monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
  train, heldout = [_random_docs(0, 30, 500), _random_docs(1, 30, 500)], [_random_docs(2, 4, 500)]
  url = f"gs://{BUCKET}/stores/wiki"
  _make_store(url, train, heldout)
  local = _make_store(str(tmp_path / "local"), train, heldout)
  assert sorted(os.listdir(fake_gcs / BUCKET / "stores" / "wiki")) == sorted(
    n for n in os.listdir(local) if n != "work"
  )
  for name in os.listdir(local):
    if os.path.isfile(os.path.join(local, name)):
      assert (fake_gcs / BUCKET / "stores" / "wiki" / name).read_bytes() == open(
        os.path.join(local, name), "rb"
      ).read()
  store = store_lib.open_store(url)
  assert store.name == "wiki"
  for i, expected in enumerate(train):
    _check_equal(store.documents("train", i), expected)
  digest = hashlib.sha256(
    (fake_gcs / BUCKET / "stores" / "wiki" / "manifest.json").read_bytes()
  ).hexdigest()
  cached = tmp_path / "cache" / "store-cache" / digest[:16]
  assert sorted(os.listdir(cached)) == [f"train-0000{i}-of-00002.array_record" for i in range(2)]
  # Another process of the host reads the cached copy: the bucket's shard is not downloaded again.
  (fake_gcs / BUCKET / "stores" / "wiki" / "train-00000-of-00002.array_record").write_bytes(
    b"x" * 10
  )
  _check_equal(store_lib.Store(store.path, store.manifest, digest).documents("train", 0), train[0])
  # A damaged object is refused, named, and leaves no file in the cache.
  store3 = store_lib.Store(store.path, store.manifest, "0" * 64)
  with pytest.raises(
    PretrainError, match="downloaded train-00000-of-00002.array_record has 10 bytes"
  ):
    store3.documents("train", 0).take(np.array([0]))
  assert not os.listdir(tmp_path / "cache" / "store-cache" / ("0" * 16))
  with pytest.raises(
    PretrainError, match="shard train-00000-of-00002.array_record is truncated: 10 bytes"
  ):
    store_lib.open_store(url)
  with pytest.raises(PretrainError, match="is not a finished token store"):
    store_lib.open_store(f"gs://{BUCKET}/stores/none")
