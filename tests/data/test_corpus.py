"""Tests for pretrain.data.corpus."""

import gzip
import hashlib
import json
import logging
import os
import random
import shutil
import sys

import ml_collections
import pytest
import zstandard

from pretrain.data import corpus
from pretrain.data import embedded_corpus
from pretrain.data import text_files
from pretrain.errors import PretrainError

sys.path.insert(
  0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # tests/, for fake_gcs.
from fake_gcs import BUCKET, FakeGcsFileSystem, root_fixture  # pylint: disable=wrong-import-position

fake_gcs = root_fixture()


def _data_cfg(**kw) -> ml_collections.ConfigDict:
  cfg = dict(source="embedded", paths="", text_field="text", heldout_fraction=0.02)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def _write(path, content) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(content, str):
    content = content.encode("utf-8")
  path.write_bytes(content)
  return str(path)


def _docs(n: int) -> list[list[str]]:
  return [[f"Document {i} opens here.", f"It has a second sentence, number {i}."] for i in range(n)]


# The held-out split.


def _hash_rule(doc, fraction):
  h = hashlib.sha256("\n".join(doc).encode()).hexdigest()
  return int(h[:8], 16) % 10_000 < fraction * 10_000


def test_heldout_split_follows_the_hash_rule_and_is_disjoint():
  docs = _docs(500)
  train, heldout = corpus.split_heldout(docs, 0.1)
  assert [d for d in docs if _hash_rule(d, 0.1)] == heldout
  assert [d for d in docs if not _hash_rule(d, 0.1)] == train
  assert 25 <= len(heldout) <= 75
  assert not {tuple(d) for d in train} & {tuple(d) for d in heldout}


def test_heldout_split_is_stable_under_reordering():
  docs = _docs(300)
  _, heldout = corpus.split_heldout(docs, 0.05)
  _, heldout_reversed = corpus.split_heldout(docs[::-1], 0.05)
  assert sorted(heldout) == sorted(heldout_reversed)
  # Adding documents does not move existing ones.
  _, heldout_more = corpus.split_heldout(docs + _docs(400)[300:], 0.05)
  assert all(d in heldout_more for d in heldout)


def test_heldout_split_keeps_one_document_on_each_side():
  docs = _docs(5)
  hashes = [hashlib.sha256("\n".join(d).encode()).hexdigest() for d in docs]
  train, heldout = corpus.split_heldout(docs, 0.0)
  assert heldout == [docs[hashes.index(min(hashes))]] and len(train) == 4
  train, heldout = corpus.split_heldout(docs, 0.99999)
  assert train == [docs[hashes.index(max(hashes))]] and len(heldout) == 4
  train, heldout = corpus.split_heldout(docs[:2], 0.0)
  assert len(train) == len(heldout) == 1


def test_too_few_documents_is_an_error(tmp_path):
  with pytest.raises(PretrainError, match="1 document"):
    corpus.split_heldout(_docs(1), 0.02)
  path = _write(tmp_path / "one.txt", "Only one document.\nWith two lines.\n")
  with pytest.raises(PretrainError, match="at least 2"):
    corpus.load_corpus(_data_cfg(source="text", paths=path))


def test_load_corpus_embedded():
  c = corpus.load_corpus(_data_cfg(heldout_fraction=0.05))
  docs = corpus.embedded_documents()
  assert len(c.train) + len(c.heldout) == len(docs)
  assert 0.02 * len(docs) <= len(c.heldout) <= 0.1 * len(docs)
  assert c.stats["source"] == "embedded"
  assert c.stats["train_num_docs"] == len(c.train)
  assert c.stats["heldout_num_docs"] == len(c.heldout)
  assert c.stats["train_num_sentences"] == sum(len(d) for d in c.train)
  assert c.stats["heldout_num_chars"] == sum(len(s) for d in c.heldout for s in d)
  assert c.stats["undecodable_lines"] == c.stats["bad_lines"] == 0
  assert corpus.load_corpus(_data_cfg(heldout_fraction=0.05)).heldout == c.heldout


@pytest.mark.parametrize(
  "kw, message",
  [
    (dict(source="parquet"), "data.source='parquet' is unknown; allowed: embedded, text, jsonl"),
    (dict(heldout_fraction=1.0), "heldout_fraction"),
    (dict(heldout_fraction=-0.1), "heldout_fraction"),
    (dict(source="text", paths=""), "data.paths is empty"),
    (dict(source="jsonl", paths="x.jsonl", text_field=""), "data.text_field is empty"),
  ],
)
def test_load_corpus_rejects_bad_config(kw, message):
  with pytest.raises(PretrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
    corpus.load_corpus(_data_cfg(**kw))


def test_load_corpus_accepts_a_plain_dict(tmp_path):
  path = _write(tmp_path / "a.txt", "A one.\nA two.\n\nB one.\n")
  c = corpus.load_corpus({"source": "text", "paths": [path], "heldout_fraction": 0.5})
  assert sorted(c.train + c.heldout) == [["A one.", "A two."], ["B one."]]


# Text files.


def test_read_text_files_bert_format(tmp_path):
  a = _write(
    tmp_path / "a.txt", "Doc one, line one.\nDoc one, line two.\n\n\n  \nDoc two.\r\n\nDoc three."
  )
  b = _write(tmp_path / "b.txt", "\ufeffDoc four, after a BOM.\n  Doc four, stripped.  \n")
  docs, stats = corpus.read_text_files([b, a])  # Files are read sorted.
  assert docs == [
    ["Doc one, line one.", "Doc one, line two."],
    ["Doc two."],
    ["Doc three."],
    ["Doc four, after a BOM.", "Doc four, stripped."],
  ]
  assert stats == {"num_files": 2, "undecodable_lines": 0, "bad_lines": 0}


def test_read_text_files_globs_and_comma_lists(tmp_path):
  for name in ("x/1.txt", "x/2.txt", "y/3.txt", "y/skip.md"):
    _write(tmp_path / name, f"From {name}.\n")
  docs, stats = corpus.read_text_files(f"{tmp_path}/x/*.txt, {tmp_path}/y/*.txt")
  assert docs == [["From x/1.txt."], ["From x/2.txt."], ["From y/3.txt."]]
  assert stats["num_files"] == 3
  # Overlapping globs read each file once; recursive globs work.
  docs, _ = corpus.read_text_files([f"{tmp_path}/**/*.txt", f"{tmp_path}/x/1.txt"])
  assert len(docs) == 3


def test_read_text_files_expands_home(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  _write(tmp_path / "corpus" / "a.txt", "Home text.\n")
  assert corpus.read_text_files("~/corpus/*.txt")[0] == [["Home text."]]


def test_read_text_files_missing_glob_names_it(tmp_path):
  _write(tmp_path / "a.txt", "Some text.\n")
  missing = f"{tmp_path}/nothing/*.txt"
  with pytest.raises(PretrainError, match="glob '.*nothing/\\*.txt' matches no files"):
    corpus.read_text_files(f"{tmp_path}/a.txt,{missing}")
  (tmp_path / "dir.txt").mkdir()
  with pytest.raises(PretrainError, match="dir.txt"):
    corpus.read_text_files(str(tmp_path / "dir.txt"))


def test_read_text_files_empty_corpus_is_an_error(tmp_path):
  _write(tmp_path / "a.txt", "\n  \n\n")
  _write(tmp_path / "b.txt", "")
  with pytest.raises(PretrainError, match="contain no text"):
    corpus.read_text_files(f"{tmp_path}/*.txt")


def test_read_text_files_skips_and_counts_undecodable_lines(tmp_path, caplog):
  path = _write(
    tmp_path / "mixed.txt",
    b"Good line one.\nBad \xff\xfe line.\nGood line two, caf\xc3\xa9.\n\nAlso \xc3 bad.\nLast doc.\n",
  )
  with caplog.at_level(logging.WARNING):
    docs, stats = corpus.read_text_files(path)
  assert docs == [["Good line one.", "Good line two, caf\u00e9."], ["Last doc."]]
  assert stats["undecodable_lines"] == 2
  assert any("mixed.txt" in r.getMessage() and "2 line" in r.getMessage() for r in caplog.records)
  c = corpus.load_corpus(_data_cfg(source="text", paths=path))
  assert c.stats["undecodable_lines"] == 2


# JSON lines.


def test_read_jsonl(tmp_path):
  lines = [
    json.dumps({"text": "First document. It has two sentences.", "id": 1}),
    "",
    json.dumps({"body": "Wrong field."}),
    "{not json",
    json.dumps(["a", "list"]),
    json.dumps({"text": 42}),
    json.dumps({"text": "   "}),
    json.dumps({"text": "Second document.\n\nA new paragraph! Yes."}),
  ]
  path = _write(tmp_path / "d.jsonl", "\n".join(lines).encode() + b'\n\xff{"text": "x"}\n')
  docs, stats = corpus.read_jsonl(path, "text")
  assert docs == [
    ["First document.", "It has two sentences."],
    ["Second document.", "A new paragraph!", "Yes."],
  ]
  assert stats == {"num_files": 1, "undecodable_lines": 1, "bad_lines": 4}
  docs, _ = corpus.read_jsonl(path, "body")
  assert docs == [["Wrong field."]]


def test_read_jsonl_all_bad_names_field_and_file(tmp_path):
  path = _write(tmp_path / "bad.jsonl", '{"content": "no text field"}\nnot json\n')
  with pytest.raises(PretrainError) as e:
    corpus.read_jsonl(path, "text")
  assert "'text'" in str(e.value) and "bad.jsonl" in str(e.value) and "2 bad line" in str(e.value)


def test_load_corpus_jsonl(tmp_path):
  for i in range(3):
    _write(
      tmp_path / f"{i}.jsonl",
      "\n".join(json.dumps({"t": f"Doc {i}{j}. More {j}."}) for j in range(10)),
    )
  c = corpus.load_corpus(
    _data_cfg(source="jsonl", paths=f"{tmp_path}/*.jsonl", text_field="t", heldout_fraction=0.2)
  )
  assert c.stats["train_num_docs"] + c.stats["heldout_num_docs"] == 30
  assert c.stats["num_files"] == 3 and c.stats["bad_lines"] == 0
  assert all(len(d) == 2 for d in c.train + c.heldout)


# Fingerprints.


def test_corpus_fingerprint(tmp_path):
  embedded = corpus.corpus_fingerprint(_data_cfg())
  assert embedded == corpus.corpus_fingerprint(_data_cfg(heldout_fraction=0.5))
  assert len(embedded) == 16
  path = _write(tmp_path / "a.txt", "Text.\n")
  cfg = _data_cfg(source="text", paths=path)
  fp = corpus.corpus_fingerprint(cfg)
  assert fp != embedded
  assert fp == corpus.corpus_fingerprint(_data_cfg(source="text", paths=f"{tmp_path}/*.txt"))
  assert fp != corpus.corpus_fingerprint(_data_cfg(source="jsonl", paths=path))
  _write(tmp_path / "a.txt", "Changed text.\n")
  assert corpus.corpus_fingerprint(cfg) != fp
  os.utime(path, ns=(0, 0))
  changed_mtime = corpus.corpus_fingerprint(cfg)
  os.utime(path, ns=(10**9, 10**9))
  assert corpus.corpus_fingerprint(cfg) != changed_mtime
  _write(tmp_path / "b.txt", "More.\n")
  assert corpus.corpus_fingerprint(_data_cfg(source="text", paths=f"{tmp_path}/*.txt")) != fp
  with pytest.raises(PretrainError, match="matches no files"):
    corpus.corpus_fingerprint(_data_cfg(source="text", paths=f"{tmp_path}/*.none"))


# Input units: byte ranges read by streaming.


def _reference_docs(paths, source, field="text"):
  """What reading each whole file at once gives (the readers before units), from the bytes alone."""
  docs, undecodable, bad = [], 0, 0
  for path in sorted(paths):
    data = open(path, "rb").read()
    if path.endswith(".gz"):
      data = gzip.decompress(data)
    elif path.endswith((".zst", ".zstd")):
      data = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    doc = []
    for i, raw in enumerate(data.split(b"\n")):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError:
        undecodable += 1
        continue
      line = (line.lstrip("\ufeff") if i == 0 else line).rstrip("\r")
      if source == "text":
        if line.strip():
          doc.append(line.strip())
        elif doc:
          docs, doc = docs + [doc], []
      elif line.strip():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          record = None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
          bad += 1
        elif embedded_corpus.split_sentences(text):
          docs.append(embedded_corpus.split_sentences(text))
    if doc:
      docs.append(doc)
  return docs, undecodable, bad


_TEXT_FILES = {
  "a.txt": (
    b"\xef\xbb\xbfFirst doc, after a BOM.\r\nStill the first.\n\n\n   \n\n"
    + "Second doc: caf\u00e9, \u20ac and \U0001f600 straddle boundaries.\n".encode()
    + b"Bad \xff\xfe inside a doc.\nThe second doc goes on.\n\n\xc3 bad right after a blank.\n"
    b"Third doc.\r\n  \t \n\xff\n\nFourth doc, no trailing newline"
  ),
  "b.txt": "\n\n\nAfter leading blanks.\n\ufeffA BOM that is not at byte 0 stays.\r\n".encode(),
  "c.txt": b"",
  "d.txt": b"\n \n\n",
  "e.txt": b"".join(
    f"Doc {i}, line one \u00e9\u00e8.\nDoc {i}, line two.\n{chr(10) * (i % 3 + 1)}".encode()
    for i in range(40)
  ),
  "f.txt": b"One line only",
}
_JSONL_FILES = {
  "a.jsonl": (
    b"\xef\xbb\xbf"
    + json.dumps({"text": "After a BOM. Two sentences."}).encode()
    + b"\r\n\n"
    + b"{not json\n"
    + '{"text": "Caf\u00e9 \U0001f600 here."}'.encode()
    + b'\n\xff{"text": "undecodable"}\n'
    + json.dumps(["a", "list"]).encode()
    + b"\n"
    + json.dumps({"text": 42}).encode()
    + b"\n   \n"
    + json.dumps({"text": "   "}).encode()
    + b"\n"
    + json.dumps({"text": "No trailing newline."}).encode()
  ),
  "b.jsonl": b"".join(
    json.dumps({"text": f"Line {i}. Sentence two of {i}!", "id": i}).encode() + b"\n"
    for i in range(30)
  ),
  "c.jsonl": b"",
}


def _write_all(folder, files) -> list[str]:
  return sorted(_write(folder / name, data) for name, data in files.items())


def _read_units(cfg, unit_bytes):
  units, sources = corpus.plan_units(cfg, unit_bytes)
  stats, docs = {}, []
  for unit in units:
    got = list(corpus.read_unit(unit, cfg, stats))
    assert (
      list(corpus.sample_unit(unit, cfg, unit.num_bytes)) == got
    )  # An unbounded sample is the unit.
    docs += got
  return units, sources, docs, stats


def _check_ranges(ranges, sources):
  """The ranges tile each file, each with the sha256 of exactly its bytes."""
  for src in sources:
    mine = [r for r in ranges if r["path"] == src["path"]]
    assert [r["start"] for r in mine] == [0] + [r["end"] for r in mine[:-1]] and mine[-1][
      "end"
    ] == src["size"]
  for r in ranges:
    data = open(r["path"], "rb").read()[r["start"] : r["end"]]
    assert r["bytes"] == len(data) and r["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("unit_bytes", [1, 2, 7, 100, 4096, 64 << 20])
@pytest.mark.parametrize("source, files", [("text", _TEXT_FILES), ("jsonl", _JSONL_FILES)])
def test_units_read_the_documents_of_whole_files(tmp_path, source, files, unit_bytes):
  paths = _write_all(tmp_path, files)
  cfg = _data_cfg(source=source, paths=f"{tmp_path}/*")
  units, sources, docs, stats = _read_units(cfg, unit_bytes)
  want, undecodable, bad = _reference_docs(paths, source)
  whole = corpus.read_text_files(paths) if source == "text" else corpus.read_jsonl(paths, "text")
  assert docs == want == whole[0]
  assert stats["undecodable_lines"] == undecodable == whole[1]["undecodable_lines"] > 0
  assert stats["bad_lines"] == bad == whole[1]["bad_lines"]
  assert sources == [{"path": p, "size": os.path.getsize(p)} for p in paths]
  assert [u.index for u in units] == list(range(len(units)))
  assert all(u.num_bytes <= unit_bytes or len(u.ranges) == 1 for u in units)
  _check_ranges(stats["ranges"], sources)
  if unit_bytes == 1:
    assert len(units) == sum(
      os.path.getsize(p) for p in paths
    )  # A unit per byte; empty files join one.


def test_units_of_random_files_read_the_documents_of_whole_files(tmp_path, monkeypatch):
  monkeypatch.setattr(text_files, "_CHUNK", 3)  # Lines and characters across reads, too.
  pieces = [
    b"Hello there.",
    b"caf\xc3\xa9 \xe2\x82\xac",
    b"\xff bad",
    b"",
    b"  ",
    b"\r",
    b"\xef\xbb\xbf",
    b"\xc3",
    b'{"text": "A doc. Two."}',
    b'{"text": 3}',
    b"[1]",
    b'{"text": "caf\xc3\xa9 ok."}',
  ]
  rng = random.Random(0)
  for trial in range(12):
    folder = tmp_path / str(trial)
    paths = [
      _write(
        folder / f"{i}.txt",
        b"".join(
          rng.choice(pieces) + rng.choice([b"\n", b"\r\n", b""]) for _ in range(rng.randint(0, 25))
        ),
      )
      for i in range(rng.randint(1, 3))
    ]
    for source in ("text", "jsonl"):
      want, undecodable, bad = _reference_docs(paths, source)
      for unit_bytes in (1, 5, 33):
        cfg = _data_cfg(source=source, paths=f"{folder}/*.txt")
        _, sources, docs, stats = _read_units(cfg, unit_bytes)
        got = (docs, stats["undecodable_lines"], stats["bad_lines"])
        assert got == (want, undecodable, bad), (trial, source, unit_bytes)
        _check_ranges(stats["ranges"], sources)


def test_plan_units_splits_big_files_and_groups_small_ones(tmp_path):
  for name, size in (
    ("a.txt", 10),
    ("b.txt", 25),
    ("c.txt", 3),
    ("d.txt", 4),
    ("e.txt", 9),
    ("f.gz", 30),
  ):
    _write(tmp_path / name, b"x" * size)
  units, sources = corpus.plan_units(
    _data_cfg(source="text", paths=f"{tmp_path}/*.txt,{tmp_path}/*.gz"), 10
  )
  p = lambda name: str(tmp_path / name)  # pylint: disable=unnecessary-lambda-assignment
  assert [u.ranges for u in units] == [
    ((p("a.txt"), 0, 10),),
    ((p("b.txt"), 0, 8),),
    ((p("b.txt"), 8, 16),),
    ((p("b.txt"), 16, 25),),  # Even pieces of <= 10 bytes.
    ((p("c.txt"), 0, 3), (p("d.txt"), 0, 4)),  # Small files grouped while they fit.
    ((p("e.txt"), 0, 9),),
    ((p("f.gz"), 0, 30),),  # Compressed: one range, however big.
  ]
  assert [u.index for u in units] == list(range(7)) and {u.source for u in units} == {"text"}
  assert [s["path"] for s in sources] == [
    p(n) for n in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.gz")
  ]
  assert (
    corpus.plan_units(_data_cfg(source="text", paths=f"{tmp_path}/*.txt"))[0][0].num_bytes == 51
  )


def test_input_unit_json_round_trip():
  unit = corpus.InputUnit(3, "jsonl", (("gs://b/x.jsonl", 0, 10), ("/data/y.jsonl", 5, 9)))
  assert corpus.InputUnit.from_json(json.loads(json.dumps(unit.to_json()))) == unit
  assert unit.to_json() == {
    "index": 3,
    "source": "jsonl",
    "ranges": [["gs://b/x.jsonl", 0, 10], ["/data/y.jsonl", 5, 9]],
  }
  with pytest.raises(PretrainError, match="malformed"):
    corpus.InputUnit.from_json({"index": 0, "source": "text"})
  with pytest.raises(PretrainError, match="source 'csv'"):
    corpus.InputUnit.from_json({"index": 0, "source": "csv", "ranges": []})


def test_embedded_unit():
  units, sources = corpus.plan_units(_data_cfg())
  assert units == [corpus.InputUnit(0, "embedded", ())] and sources == []
  stats = {}
  assert list(corpus.read_unit(units[0], _data_cfg(), stats)) == corpus.embedded_documents()
  assert stats == {"undecodable_lines": 0, "bad_lines": 0, "ranges": []}
  sample = list(corpus.sample_unit(units[0], _data_cfg(), 20_000))
  assert sample == corpus.embedded_documents()[: len(sample)]
  size = sum(len(s.encode()) + 1 for d in sample for s in d) + len(sample)
  assert 20_000 <= size <= 20_000 + sum(len(s.encode()) + 1 for s in sample[-1]) + 1
  assert len(list(corpus.sample_unit(units[0], _data_cfg(), 1))) == 1


def test_plan_and_read_unit_errors(tmp_path):
  path = _write(tmp_path / "a.txt", "Some text.\n")
  with pytest.raises(PretrainError, match="data.paths is empty"):
    corpus.plan_units(_data_cfg(source="text", paths=""))
  with pytest.raises(PretrainError, match="text glob '.*nothing/\\*.txt' matches no files"):
    corpus.plan_units(_data_cfg(source="text", paths=f"{path},{tmp_path}/nothing/*.txt"))
  with pytest.raises(PretrainError, match="data.source='csv' is unknown"):
    corpus.plan_units(_data_cfg(source="csv", paths=path))
  with pytest.raises(PretrainError, match="unit_bytes=0"):
    corpus.plan_units(_data_cfg(source="text", paths=path), 0)
  unit = corpus.plan_units(_data_cfg(source="text", paths=path))[0][0]
  with pytest.raises(PretrainError, match="planned for data.source='text', but it is 'jsonl'"):
    list(corpus.read_unit(unit, _data_cfg(source="jsonl", paths=path), {}))
  with pytest.raises(PretrainError, match="data.text_field is empty"):
    list(
      corpus.read_unit(
        corpus.InputUnit(0, "jsonl", unit.ranges), _data_cfg(source="jsonl", text_field=""), {}
      )
    )
  # A file that changed since planning: its manifest entry would be wrong.
  _write(tmp_path / "a.txt", "Some")
  with pytest.raises(PretrainError, match="a.txt changed size since the units were planned"):
    list(corpus.read_unit(unit, _data_cfg(source="text", paths=path), {}))
  os.remove(path)
  with pytest.raises(PretrainError, match="a.txt does not exist"):
    list(corpus.read_unit(unit, _data_cfg(source="text", paths=path), {}))


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".zstd"])
def test_compressed_files_are_one_range_each(tmp_path, suffix):
  plain = _write_all(tmp_path / "plain", _TEXT_FILES)
  for p in plain:
    data = open(p, "rb").read()
    half = len(data) // 2  # Two gzip members / zstd frames: both are read.
    if suffix == ".gz":
      packed = gzip.compress(data[:half]) + gzip.compress(data[half:])
    else:
      packed = b"".join(zstandard.ZstdCompressor().compress(d) for d in (data[:half], data[half:]))
    _write(tmp_path / "packed" / (os.path.basename(p) + suffix), packed)
  cfg = _data_cfg(source="text", paths=f"{tmp_path}/packed/*")
  units, sources, docs, stats = _read_units(cfg, 1)
  assert docs == corpus.read_text_files(plain)[0]
  assert stats["undecodable_lines"] == _reference_docs(plain, "text")[1]
  assert [u.ranges for u in units] == [((s["path"], 0, s["size"]),) for s in sources]
  _check_ranges(stats["ranges"], sources)  # The sha256 of the compressed bytes.
  with open(sources[-1]["path"], "ab") as f:
    f.write(
      gzip.compress(b"More.\n")
      if suffix == ".gz"
      else zstandard.ZstdCompressor().compress(b"More.\n")
    )
  with pytest.raises(PretrainError, match="changed size since the units were planned"):
    list(corpus.read_unit(units[-1], cfg, {}))


@pytest.mark.parametrize(
  "name, kind", [("bad.gz", "gzip"), ("bad.zst", "zstd"), ("cut.gz", "gzip")]
)
def test_a_compressed_file_that_is_not_is_an_error_naming_it(tmp_path, name, kind):
  data = (
    gzip.compress(b"Some text.\n" * 100)[:-30]
    if name == "cut.gz"
    else b"Plain text, not compressed.\n"
  )
  path = _write(tmp_path / name, data)
  units, _ = corpus.plan_units(_data_cfg(source="text", paths=path))
  with pytest.raises(PretrainError, match=f"corpus file .*{name} is not valid {kind} data"):
    list(corpus.read_unit(units[0], _data_cfg(source="text", paths=path), {}))


def test_read_unit_streams_its_range_only(tmp_path, monkeypatch):
  monkeypatch.setattr(text_files, "_CHUNK", 256)
  docs = [[f"Document {i} with some words in it."] * 3 for i in range(2000)]
  path = _write(tmp_path / "big.txt", "\n\n".join("\n".join(d) for d in docs) + "\n")
  cfg = _data_cfg(source="text", paths=path)
  units, _ = corpus.plan_units(cfg, 4096)
  assert len(units) > 30
  read = {None: 0, "back": 0}
  original = text_files.CorpusFile.read

  def spy(self, n=256, at=None):
    data = original(self, n, at)
    read["back" if at is not None else None] += len(data)
    return data

  monkeypatch.setattr(text_files.CorpusFile, "read", spy)
  middle = list(corpus.read_unit(units[15], cfg, {}))
  assert middle and all(d in docs for d in middle)
  assert (
    read[None] < 4096 + 3 * 256 and 0 < read["back"] <= 4096
  )  # Its range, its last document, a look back.


def test_sample_unit_is_a_bounded_prefix_of_each_range(tmp_path):
  docs = [[f"Document {i}, sentence {j}." for j in range(3)] for i in range(300)]
  text = "\n\n".join("\n".join(d) for d in docs) + "\n"
  for name in ("a.txt", "b.txt"):
    _write(tmp_path / name, text)
  cfg = _data_cfg(source="text", paths=f"{tmp_path}/*.txt")
  [unit], _ = corpus.plan_units(cfg, 1 << 20)
  assert len(unit.ranges) == 2
  sample = list(corpus.sample_unit(unit, cfg, 2000))
  doc_bytes = len("\n".join(docs[0]).encode()) + 2
  per_range = len(sample) // 2
  assert sample == docs[:per_range] + docs[:per_range]  # The start of each range, document-aligned.
  assert 1000 <= per_range * doc_bytes <= 1000 + doc_bytes
  assert list(corpus.sample_unit(unit, cfg, 1)) == [
    docs[0],
    docs[0],
  ]  # At least a document a range.
  assert list(corpus.sample_unit(unit, cfg, unit.num_bytes)) == docs + docs
  jsonl = _data_cfg(
    source="jsonl",
    paths=_write(
      tmp_path / "d.jsonl", "".join(json.dumps({"text": " ".join(d)}) + "\n" for d in docs)
    ),
  )
  [unit], _ = corpus.plan_units(jsonl)
  assert list(corpus.sample_unit(unit, jsonl, 1)) == [docs[0]]
  assert 10 < len(list(corpus.sample_unit(unit, jsonl, 2000))) < 40


def test_a_range_warns_of_its_undecodable_lines(tmp_path, caplog):
  path = _write(
    tmp_path / "mixed.txt", b"Good line.\n" * 50 + b"Bad \xff line.\n" + b"Good line.\n" * 50
  )
  cfg = _data_cfg(source="text", paths=path)
  units, _ = corpus.plan_units(cfg, 300)
  stats = {}
  with caplog.at_level(logging.WARNING):
    for unit in units:
      list(corpus.read_unit(unit, cfg, stats))
  assert stats["undecodable_lines"] == 1
  [record] = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
  assert "mixed.txt bytes [" in record and "1 line" in record


# Corpus files in GCS (the fake of tests/fake_gcs.py).


def test_units_read_gcs_files_as_the_local_ones(fake_gcs, tmp_path):
  local = tmp_path / "local"
  files = {
    **_TEXT_FILES,
    **{k.replace(".txt", ".jsonl"): v for k, v in _JSONL_FILES.items()},
    "z.txt.gz": gzip.compress(_TEXT_FILES["e.txt"]),
  }
  _write_all(local, files)
  shutil.copytree(local, fake_gcs / BUCKET / "corpus")
  for source, glob in (("text", "*.txt,{}/*.gz"), ("jsonl", "*.jsonl")):
    remote_cfg = _data_cfg(
      source=source, paths=f"gs://{BUCKET}/corpus/" + glob.format(f"gs://{BUCKET}/corpus")
    )
    local_cfg = _data_cfg(source=source, paths=f"{local}/" + glob.format(local))
    for unit_bytes in (7, 4096):
      _, remote_sources, remote_docs, remote_stats = _read_units(remote_cfg, unit_bytes)
      _, local_sources, local_docs, local_stats = _read_units(local_cfg, unit_bytes)
      assert remote_docs == local_docs and len(remote_docs) > 3
      assert [s["path"] for s in remote_sources] == [
        s["path"].replace(str(local), f"gs://{BUCKET}/corpus") for s in local_sources
      ]
      assert [s["size"] for s in remote_sources] == [s["size"] for s in local_sources]
      for got, want in zip(remote_stats["ranges"], local_stats["ranges"], strict=True):
        assert {**got, "path": want["path"]} == want
      assert remote_stats["undecodable_lines"] == local_stats["undecodable_lines"]
  assert corpus.corpus_fingerprint(remote_cfg) != corpus.corpus_fingerprint(local_cfg)
  with pytest.raises(
    PretrainError, match=f"jsonl glob 'gs://{BUCKET}/nothing/\\*.jsonl' matches no files"
  ):
    corpus.plan_units(_data_cfg(source="jsonl", paths=f"gs://{BUCKET}/nothing/*.jsonl"))
  with pytest.raises(PretrainError, match=r"\*\* is not supported on GCS"):
    corpus.plan_units(_data_cfg(source="jsonl", paths=f"gs://{BUCKET}/**/*.jsonl"))


@pytest.mark.parametrize(
  "error, credentials",
  [
    (
      OSError(
        "Forbidden: fake-bucket/corpus\nsa@p.iam.gserviceaccount.com has no storage.objects.list"
      ),
      True,
    ),
    (PermissionError("denied"), True),
    (
      ValueError("Invalid gcloud credentials"),
      True,
    ),  # What gcsfs raises when the default login fails.
    (RuntimeError("connection reset"), False),
  ],
)
def test_gcs_listing_that_fails_names_the_url_and_cause(fake_gcs, monkeypatch, error, credentials):
  def refuse(self, path, **kwargs):
    raise error

  monkeypatch.setattr(FakeGcsFileSystem, "glob", refuse)
  with pytest.raises(PretrainError) as e:
    corpus.plan_units(_data_cfg(source="text", paths=f"gs://{BUCKET}/corpus/*.txt"))
  message = f"cannot list gs://{BUCKET}/corpus/*.txt: {type(error).__name__}: {' '.join(str(error).split())}"
  hint = "; check your credentials (gcloud auth application-default login)"
  assert str(e.value) == message + (hint if credentials else "")


def test_gcs_read_without_access_names_the_url(fake_gcs, monkeypatch):
  _write(fake_gcs / BUCKET / "a.txt", "Some text.\n")
  cfg = _data_cfg(source="text", paths=f"gs://{BUCKET}/a.txt")
  [unit], _ = corpus.plan_units(cfg)

  def refuse(self, path, *args, **kwargs):
    raise PermissionError("403 storage.objects.get denied")

  monkeypatch.setattr(FakeGcsFileSystem, "open", refuse)
  with pytest.raises(
    PretrainError, match=r"cannot read gs://fake-bucket/a.txt: PermissionError: 403 .*credentials"
  ):
    list(corpus.read_unit(unit, cfg, {}))
