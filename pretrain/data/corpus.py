"""Text corpora as documents of sentences, with a fixed held-out split.

Sources: an embedded corpus of English prose that ships with CPython (the
pydoc topics and the standard library's docstrings, so a first run needs no
download), BERT-style text files (one sentence per line, a blank line between
documents) and JSON lines (one document per line in a text field).
"""
import ast
import dataclasses
import functools
import glob
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
import warnings
from typing import Any, Iterable, Sequence

from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)

# Bump when the embedded corpus' extraction or cleaning changes: it keys caches.
EMBEDDED_VERSION = "embedded-v1"
SOURCES = ("embedded", "text", "jsonl")

_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"})
_MIN_DOCSTRING_CHARS = 200
_DEF_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Statements whose bodies may hold definitions (e.g. `if sys.platform == ...: def f(): ...`).
_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")

# A sentence ends at . ! or ? (plus closing quotes/brackets) followed by
# whitespace and something that can start a sentence.
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s+(?=[\"'(\[\u201c\u2018]?[A-Z0-9])")
_ABBREVIATIONS = frozenset({
    "e.g", "i.e", "etc", "cf", "vs", "viz", "al", "approx", "mr", "mrs", "ms", "dr", "prof", "st",
    "jr", "sr", "no", "fig", "eq", "vol", "ch", "sec", "resp", "a.k.a", "ca", "inc", "ltd", "co",
})
_ROLE = re.compile(r":[\w.:+-]+:`~?([^`]*)`")  # reST roles such as :func:`os.open`.
_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w:.-]+::")
_PUNCT_LINE = re.compile(r"^\s*[\W_]+\s*$")
_BULLET = re.compile(r"^(?:[*+\-\u2022]|\d+[.)]|\(\d+\))\s+")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class \w+[(:]|import |from \S+ import|return(?:$|\s+\S+$|\s+\S*[(\[.*+])|@\w|#|print\(|try:|else:|"
    r"(?:if|elif|for|while|with|except)\b.*:$)|::=|\w+ = \S|[{};]$")


def split_sentences(text: str) -> list[str]:
  """Splits prose into sentences: paragraphs at blank lines, then at sentence ends."""
  sentences = []
  for paragraph in re.split(r"\n\s*\n", text):
    paragraph = " ".join(paragraph.split())
    start = 0
    for m in _SENTENCE_END.finditer(paragraph):
      word = paragraph[start:m.start()].rsplit(" ", 1)[-1].lstrip("\"'([").lower()
      # Abbreviations and initials ("J. Smith") do not end a sentence.
      if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and paragraph[m.start()] == "."):
        continue
      sentences.append(paragraph[start:m.end()].strip())
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
    if in_doctest or stripped.startswith("...") or _DIRECTIVE.match(line) or _PUNCT_LINE.match(line):
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
        d for d in dirnames
        if d not in _SKIP_DIRS and d not in ("pydoc_data", "encodings")
        and os.path.exists(os.path.join(dirpath, d, "__init__.py")))
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


def _split_patterns(patterns: str | Sequence[str]) -> list[str]:
  if isinstance(patterns, str):
    patterns = patterns.split(",")
  return [p.strip() for p in patterns if p and p.strip()]


def _resolve_files(patterns: str | Sequence[str], what: str) -> list[str]:
  """Expands globs (and ~) to sorted, unique files; every glob must match a file."""
  globs = _split_patterns(patterns)
  if not globs:
    raise PretrainError(f"no {what} files given: data.paths is empty")
  files = set()
  for pattern in globs:
    matched = [p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)]
    if not matched:
      raise PretrainError(f"{what} glob {pattern!r} matches no files")
    files.update(matched)
  return sorted(files)


def _decoded_lines(path: str, stats: dict) -> Iterable[str]:
  """Yields a file's lines decoded as UTF-8; undecodable lines are skipped and counted."""
  with open(path, "rb") as f:
    data = f.read()
  bad = 0
  for i, raw in enumerate(data.split(b"\n")):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError:
      bad += 1
      continue
    if i == 0:
      line = line.lstrip("\ufeff")
    yield line.rstrip("\r")
  if bad:
    _logger.warning("%s: skipped %d line(s) that are not valid UTF-8", path, bad)
    stats["undecodable_lines"] += bad


def read_text_files(patterns: str | Sequence[str]) -> tuple[list[list[str]], dict]:
  """Reads BERT-format text: one sentence per line, a blank line between documents.

  `patterns` is a list of globs or one comma-separated string of them. A file
  boundary also ends a document.
  """
  files = _resolve_files(patterns, "text")
  stats = {"num_files": len(files), "undecodable_lines": 0, "bad_lines": 0}
  docs: list[list[str]] = []
  for path in files:
    doc: list[str] = []
    for line in _decoded_lines(path, stats):
      line = line.strip()
      if line:
        doc.append(line)
      elif doc:
        docs.append(doc)
        doc = []
    if doc:
      docs.append(doc)
  if not docs:
    raise PretrainError(f"text files {files} contain no text (from data.paths={patterns!r})")
  return docs, stats


def read_jsonl(patterns: str | Sequence[str], text_field: str) -> tuple[list[list[str]], dict]:
  """Reads JSON lines: each object's `text_field` is one document, split into sentences."""
  files = _resolve_files(patterns, "jsonl")
  stats = {"num_files": len(files), "undecodable_lines": 0, "bad_lines": 0}
  docs: list[list[str]] = []
  for path in files:
    bad = 0
    for line in _decoded_lines(path, stats):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        bad += 1
        continue
      text = record.get(text_field) if isinstance(record, dict) else None
      if not isinstance(text, str):
        bad += 1
        continue
      sentences = split_sentences(text)
      if sentences:
        docs.append(sentences)
    if bad:
      _logger.warning("%s: skipped %d line(s) that are not JSON objects with a string field %r",
                      path, bad, text_field)
      stats["bad_lines"] += bad
  if not docs:
    raise PretrainError(
        f"jsonl files {files} hold no usable text in field {text_field!r} "
        f"({stats['bad_lines']} bad line(s), {stats['undecodable_lines']} undecodable line(s); "
        "set data.text_field)")
  return docs, stats


@dataclasses.dataclass
class Corpus:
  train: list[list[str]]
  heldout: list[list[str]]
  stats: dict


def _doc_hash(doc: list[str]) -> str:
  return hashlib.sha256("\n".join(doc).encode("utf-8")).hexdigest()


def split_heldout(docs: list[list[str]], heldout_fraction: float) -> tuple[list[list[str]], list[list[str]]]:
  """Splits by a hash of each document's text: stable across runs, machines and order."""
  if len(docs) < 2:
    raise PretrainError(f"the corpus has {len(docs)} document(s); at least 2 are needed "
                        "(one for training, one held out)")
  hashes = [_doc_hash(doc) for doc in docs]
  threshold = heldout_fraction * 10_000
  held = [int(h[:8], 16) % 10_000 < threshold for h in hashes]
  if not any(held):
    smallest = min(hashes)
    held = [h == smallest for h in hashes]
  if all(held):
    largest = max(hashes)
    held = [h != largest for h in hashes]
  train = [d for d, h in zip(docs, held) if not h]
  heldout = [d for d, h in zip(docs, held) if h]
  return train, heldout


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  return getattr(cfg, name, default) if not isinstance(cfg, dict) else cfg.get(name, default)


def _split_stats(prefix: str, docs: list[list[str]]) -> dict:
  return {
      f"{prefix}_num_docs": len(docs),
      f"{prefix}_num_sentences": sum(len(d) for d in docs),
      f"{prefix}_num_chars": sum(len(s) for d in docs for s in d),
  }


def _source(data_cfg: Any) -> str:
  source = _get(data_cfg, "source", "embedded")
  if source not in SOURCES:
    raise PretrainError(f"data.source={source!r} is unknown; allowed: {', '.join(SOURCES)}")
  return source


def load_corpus(data_cfg: Any) -> Corpus:
  """Reads the configured corpus and splits off the fixed held-out documents."""
  source = _source(data_cfg)
  fraction = _get(data_cfg, "heldout_fraction", 0.02)
  if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
    raise PretrainError(f"data.heldout_fraction={fraction!r} must be a number in [0, 1)")
  if source == "embedded":
    docs = embedded_documents()
    stats = {"num_files": 0, "undecodable_lines": 0, "bad_lines": 0}
  elif source == "text":
    docs, stats = read_text_files(_get(data_cfg, "paths", ""))
  else:
    field = _get(data_cfg, "text_field", "text")
    if not field:
      raise PretrainError("data.text_field is empty; set it to the jsonl field holding the text")
    docs, stats = read_jsonl(_get(data_cfg, "paths", ""), field)
  train, heldout = split_heldout(docs, float(fraction))
  stats = {"source": source, **stats, **_split_stats("train", train), **_split_stats("heldout", heldout)}
  return Corpus(train=train, heldout=heldout, stats=stats)


def corpus_fingerprint(data_cfg: Any) -> str:
  """A short hash of what identifies the corpus' text, for cache keys.

  Embedded: the extraction version and the Python build. Files: their resolved
  paths, sizes and modification times (plus the jsonl text field).
  """
  source = _source(data_cfg)
  h = hashlib.sha256()
  if source == "embedded":
    h.update(f"{EMBEDDED_VERSION}\0{sys.version}".encode())
  else:
    h.update(source.encode())
    if source == "jsonl":
      h.update(f"\0{_get(data_cfg, 'text_field', 'text')}".encode())
    for path in _resolve_files(_get(data_cfg, "paths", ""), source):
      st = os.stat(path)
      h.update(f"\0{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]
