"""Tests for pretrain.data.corpus."""
import hashlib
import json
import logging
import os
import subprocess
import sys

import ml_collections
import pytest

from pretrain.data import corpus
from pretrain.errors import PretrainError


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


# The embedded corpus.

_EMBEDDED_SUMMARY = """
import hashlib, json, sys
from pretrain.data import corpus
docs = corpus.embedded_documents()
print(hashlib.sha256(json.dumps(docs).encode()).hexdigest())
print(json.dumps(sorted(m for m in ("turtle", "tkinter", "antigravity", "this", "idlelib", "smtplib")
                        if m in sys.modules)))
"""


def test_embedded_corpus_is_large_prose():
  docs = corpus.embedded_documents()
  sentences = [s for d in docs for s in d]
  chars = sum(len(s) for s in sentences)
  assert len(docs) >= 350  # 79 pydoc topics + ~320 modules on CPython 3.11.
  assert len(sentences) >= 12_000
  assert chars >= 1_200_000
  assert all(s == s.strip() and s for s in sentences)
  assert not any(s.startswith((">>>", "..", "====", "****")) for s in sentences)
  assert not any("\n" in s for s in sentences)
  words = " ".join(sentences).split()
  assert words.count("the") > 0.02 * len(words)  # English prose, not code.
  # A pydoc topic and a module docstring are both in.
  assert any(s.startswith("Assert statements are a convenient way") for s in sentences)
  assert "Heap queue algorithm (a.k.a. priority queue)." in sentences


def test_embedded_corpus_is_cached_and_a_fresh_copy():
  a, b = corpus.embedded_documents(), corpus.embedded_documents()
  assert a == b and a is not b
  a[0].append("mutated")
  assert corpus.embedded_documents()[0] == b[0]


def test_embedded_corpus_is_deterministic_and_imports_no_stdlib_module():
  out = subprocess.run([sys.executable, "-c", _EMBEDDED_SUMMARY], capture_output=True, text=True,
                       check=True).stdout.splitlines()
  here = hashlib.sha256(json.dumps(corpus.embedded_documents()).encode()).hexdigest()
  assert out[0] == here
  assert json.loads(out[1]) == []


# Sentence splitting and cleaning.


@pytest.mark.parametrize("text, expected", [
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("Use e.g. Foo or i.e. Bar here. Next one.", ["Use e.g. Foo or i.e. Bar here.", "Next one."]),
    ("Ask Mr. Smith, Dr. Who etc. Then stop.", ["Ask Mr. Smith, Dr. Who etc. Then stop."]),
    ("Written by J. Postel. Read it.", ["Written by J. Postel.", "Read it."]),
    ('He said "stop." "Why?" she asked.', ['He said "stop."', '"Why?" she asked.']),
    ("Version 3.11 is out. 42 is the answer.", ["Version 3.11 is out.", "42 is the answer."]),
    ("lower. case does not split", ["lower. case does not split"]),
    ("call os.path.join() to join.\nWrapped line.", ["call os.path.join() to join.", "Wrapped line."]),
    ("First para\nwrapped.\n\n  \nSecond para", ["First para wrapped.", "Second para"]),
    ("  \n\n ", []),
])
def test_split_sentences(text, expected):
  assert corpus.split_sentences(text) == expected


def test_clean_docs_text_keeps_prose_and_drops_code():
  doc = """Summary line of the function.

Longer description that is
wrapped over two lines.

Example::

    x = compute(1, 2)
    print(x)

>>> compute(1, 2)
3

.. versionadded:: 3.2

Section
=======

Args:
  value: The value to compute with, which must be positive.
  other: Another value that is used as well.

* A bullet item that
  wraps onto a second line.
* Another bullet item here.

   def f(x):
       return x
"""
  cleaned = corpus._clean_docs_text(doc)
  paragraphs = cleaned.split("\n\n")
  assert "Summary line of the function." in paragraphs
  assert "Longer description that is wrapped over two lines." in paragraphs
  assert "Example:" in paragraphs
  assert "Section" in paragraphs
  assert "A bullet item that wraps onto a second line." in paragraphs
  assert "Another bullet item here." in paragraphs
  assert any("The value to compute with" in p for p in paragraphs)
  for dropped in ("compute(1, 2)", ">>>", "versionadded", "=====", "print(x)", "def f", "3\n"):
    assert dropped not in cleaned


def test_clean_docs_text_strips_rest_roles():
  cleaned = corpus._clean_docs_text("See :func:`os.open` and :class:`~io.Foo`, or ``bar`` here.")
  assert cleaned == "See os.open and io.Foo, or bar here."


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


@pytest.mark.parametrize("kw, message", [
    (dict(source="parquet"), "data.source='parquet' is unknown; allowed: embedded, text, jsonl"),
    (dict(heldout_fraction=1.0), "heldout_fraction"),
    (dict(heldout_fraction=-0.1), "heldout_fraction"),
    (dict(source="text", paths=""), "data.paths is empty"),
    (dict(source="jsonl", paths="x.jsonl", text_field=""), "data.text_field is empty"),
])
def test_load_corpus_rejects_bad_config(kw, message):
  with pytest.raises(PretrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
    corpus.load_corpus(_data_cfg(**kw))


def test_load_corpus_accepts_a_plain_dict(tmp_path):
  path = _write(tmp_path / "a.txt", "A one.\nA two.\n\nB one.\n")
  c = corpus.load_corpus({"source": "text", "paths": [path], "heldout_fraction": 0.5})
  assert sorted(c.train + c.heldout) == [["A one.", "A two."], ["B one."]]


# Text files.


def test_read_text_files_bert_format(tmp_path):
  a = _write(tmp_path / "a.txt", "Doc one, line one.\nDoc one, line two.\n\n\n  \nDoc two.\r\n\nDoc three.")
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
  path = _write(tmp_path / "mixed.txt",
                b"Good line one.\nBad \xff\xfe line.\nGood line two, caf\xc3\xa9.\n\nAlso \xc3 bad.\nLast doc.\n")
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
  path = _write(tmp_path / "d.jsonl", "\n".join(lines).encode() + b"\n\xff{\"text\": \"x\"}\n")
  docs, stats = corpus.read_jsonl(path, "text")
  assert docs == [["First document.", "It has two sentences."],
                  ["Second document.", "A new paragraph!", "Yes."]]
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
    _write(tmp_path / f"{i}.jsonl", "\n".join(json.dumps({"t": f"Doc {i}{j}. More {j}."}) for j in range(10)))
  c = corpus.load_corpus(_data_cfg(source="jsonl", paths=f"{tmp_path}/*.jsonl", text_field="t",
                                   heldout_fraction=0.2))
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
