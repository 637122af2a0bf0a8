"""The embedded corpus: English prose that ships with CPython, as documents of sentences.

The pydoc topics and the standard library's docstrings, lightly cleaned of
reST markup and code, so that a first run needs no download.
"""

import ast
import functools
import os
import re
import sysconfig
import warnings
from typing import Iterable

# Bump when the embedded corpus' extraction or cleaning changes: it keys caches.
EMBEDDED_VERSION = "embedded-v1"

_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"})
_MIN_DOCSTRING_CHARS = 200
_DEF_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Statements whose bodies may hold definitions (e.g. `if sys.platform == ...: def f(): ...`).
_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")

# A sentence ends at . ! or ? (plus closing quotes/brackets) followed by
# whitespace and something that can start a sentence.
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s+(?=[\"'(\[\u201c\u2018]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
  {
    "e.g",
    "i.e",
    "etc",
    "cf",
    "vs",
    "viz",
    "al",
    "approx",
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "jr",
    "sr",
    "no",
    "fig",
    "eq",
    "vol",
    "ch",
    "sec",
    "resp",
    "a.k.a",
    "ca",
    "inc",
    "ltd",
    "co",
  }
)
_ROLE = re.compile(r":[\w.:+-]+:`~?([^`]*)`")  # reST roles such as :func:`os.open`.
_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w:.-]+::")
_PUNCT_LINE = re.compile(r"^\s*[\W_]+\s*$")
_BULLET = re.compile(r"^(?:[*+\-\u2022]|\d+[.)]|\(\d+\))\s+")
_CODE_LINE = re.compile(
  r"^\s*(?:def |class \w+[(:]|import |from \S+ import|return(?:$|\s+\S+$|\s+\S*[(\[.*+])|@\w|#|print\(|try:|else:|"
  r"(?:if|elif|for|while|with|except)\b.*:$)|::=|\w+ = \S|[{};]$"
)


def split_sentences(text: str) -> list[str]:
  """Splits prose into sentences: paragraphs at blank lines, then at sentence ends."""
  sentences = []
  for paragraph in re.split(r"\n\s*\n", text):
    paragraph = " ".join(paragraph.split())
    start = 0
    for m in _SENTENCE_END.finditer(paragraph):
      word = paragraph[start : m.start()].rsplit(" ", 1)[-1].lstrip("\"'([").lower()
      # Abbreviations and initials ("J. Smith") do not end a sentence.
      if word in _ABBREVIATIONS or (
        len(word) == 1 and word.isalpha() and paragraph[m.start()] == "."
      ):
        continue
      sentences.append(paragraph[start : m.end()].strip())
      start = m.end()
    sentences.append(paragraph[start:].strip())
  return [s for s in sentences if s]


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _looks_like_prose(lines: list[str]) -> bool:
  if any(_CODE_LINE.search(line.strip()) for line in lines):
    return False
  text = " ".join(line.strip() for line in lines)
  words = text.split()
  if len(words) < 4:
    return False
  alpha = sum(w.strip(".,;:!?\"'()[]*`\u201c\u201d\u2019").isalpha() for w in words)
  letters = sum(ch.isalpha() or ch == " " for ch in text)
  return alpha >= 0.6 * len(words) and letters >= 0.75 * len(text)


def _clean_docs_text(text: str) -> str:
  """Light cleaning of reST/plain documentation: keeps prose paragraphs, unwrapped.

  Drops doctest lines, reST directives, underlines and indented code blocks;
  indented paragraphs that read as prose (definition lists, argument docs) stay.
  """
  text = text.expandtabs(8)
  paragraphs: list[list[str]] = []
  current: list[str] = []
  in_doctest = False  # A doctest's output runs until the next blank line.
  for line in text.splitlines():
    stripped = line.strip()
    if not stripped:
      in_doctest = False
      if current:
        paragraphs.append(current)
        current = []
      continue
    if stripped.startswith(">>>"):
      in_doctest = True
    if (
      in_doctest or stripped.startswith("...") or _DIRECTIVE.match(line) or _PUNCT_LINE.match(line)
    ):
      continue
    # A bullet starts its own paragraph, without its marker.
    if _BULLET.match(stripped) and current:
      paragraphs.append(current)
      current = []
    current.append(line)
  if current:
    paragraphs.append(current)

  base = min((_indent(p[0]) for p in paragraphs), default=0)
  kept = []
  after_literal = False  # The paragraph before ended with "::": a reST literal block follows.
  for para in paragraphs:
    indented = min(_indent(line) for line in para) > base
    if indented and (after_literal or not _looks_like_prose(para)):
      continue  # Keeps after_literal: a literal block may span several paragraphs.
    after_literal = para[-1].rstrip().endswith("::")
    joined = " ".join(_BULLET.sub("", line.strip(), count=1) for line in para)
    joined = _ROLE.sub(r"\1", joined).replace("``", "")
    if joined.endswith("::"):
      joined = joined[:-1]
    kept.append(joined)
  return "\n\n".join(kept)


def _module_docstrings(tree: ast.Module) -> Iterable[str]:
  """Yields the module's, classes' and functions' docstrings in source order."""
  doc = ast.get_docstring(tree)
  if doc:
    yield doc
  yield from _nested_docstrings(tree)


def _nested_docstrings(node: ast.AST) -> Iterable[str]:
  for field in _BLOCK_FIELDS:
    for child in getattr(node, field, None) or ():
      if isinstance(child, _DEF_NODES):
        doc = ast.get_docstring(child)
        if doc:
          yield doc
      yield from _nested_docstrings(child)


def _stdlib_files() -> list[str]:
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Only packages. pydoc_data holds the topics (read on their own); encodings
    # is codec tables, slow to parse and nearly without prose.
    dirnames[:] = sorted(
      d
      for d in dirnames
      if d not in _SKIP_DIRS
      and d not in ("pydoc_data", "encodings")
      and os.path.exists(os.path.join(dirpath, d, "__init__.py"))
    )
    files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
  return sorted(files)


@functools.lru_cache(maxsize=1)
def _embedded_documents() -> tuple[tuple[str, ...], ...]:
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top  (pure data, no side effects)

  docs = []
  for name in sorted(topics.topics):
    sentences = split_sentences(_clean_docs_text(topics.topics[name]))
    if sentences:
      docs.append(tuple(sentences))
  for path in _stdlib_files():
    with open(path, "rb") as f:
      source = f.read()
    if b'"""' not in source and b"'''" not in source:
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Invalid escapes etc. in old modules.
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError):
      continue
    sentences = []
    for doc in _module_docstrings(tree):
      if len(doc) > _MIN_DOCSTRING_CHARS:
        sentences.extend(split_sentences(_clean_docs_text(doc)))
    if sentences:
      docs.append(tuple(sentences))
  return tuple(docs)


def embedded_documents() -> list[list[str]]:
  """English prose that ships with CPython: pydoc topics and stdlib docstrings.

  One document per pydoc topic and per stdlib module file. Source files are
  parsed with `ast`, never imported. Deterministic for a given Python build.
  """
  return [list(doc) for doc in _embedded_documents()]
