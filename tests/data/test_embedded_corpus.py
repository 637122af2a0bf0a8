"""The embedded corpus (CPython's own documentation): extraction, sentence splitting, cleaning."""

import hashlib
import json
import subprocess
import sys

import pytest

from pretrain.data import corpus
from pretrain.data import embedded_corpus


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
  out = subprocess.run(
    [sys.executable, "-c", _EMBEDDED_SUMMARY], capture_output=True, text=True, check=True
  ).stdout.splitlines()
  here = hashlib.sha256(json.dumps(corpus.embedded_documents()).encode()).hexdigest()
  assert out[0] == here
  assert json.loads(out[1]) == []


# Sentence splitting and cleaning.


@pytest.mark.parametrize(
  "text, expected",
  [
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("Use e.g. Foo or i.e. Bar here. Next one.", ["Use e.g. Foo or i.e. Bar here.", "Next one."]),
    ("Ask Mr. Smith, Dr. Who etc. Then stop.", ["Ask Mr. Smith, Dr. Who etc. Then stop."]),
    ("Written by J. Postel. Read it.", ["Written by J. Postel.", "Read it."]),
    ('He said "stop." "Why?" she asked.', ['He said "stop."', '"Why?" she asked.']),
    ("Version 3.11 is out. 42 is the answer.", ["Version 3.11 is out.", "42 is the answer."]),
    ("lower. case does not split", ["lower. case does not split"]),
    (
      "call os.path.join() to join.\nWrapped line.",
      ["call os.path.join() to join.", "Wrapped line."],
    ),
    ("First para\nwrapped.\n\n  \nSecond para", ["First para wrapped.", "Second para"]),
    ("  \n\n ", []),
  ],
)
def test_split_sentences(text, expected):
  assert embedded_corpus.split_sentences(text) == expected


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
  cleaned = embedded_corpus._clean_docs_text(doc)
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
  cleaned = embedded_corpus._clean_docs_text(
    "See :func:`os.open` and :class:`~io.Foo`, or ``bar`` here."
  )
  assert cleaned == "See os.open and io.Foo, or bar here."
