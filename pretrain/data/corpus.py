"""Text corpora as documents of sentences, with a fixed held-out split.

Sources: an embedded corpus of English prose that ships with CPython (so a first run needs no
download), BERT-style text files (one sentence per line, a blank line between documents) and JSON
lines (one document per line in a text field). Files are local or gs://, plain or .gz/.zst, and are
streamed. For preparation in parallel, plan_units cuts the corpus into input units (byte ranges,
from file sizes alone) that read_unit reads one at a time: no process holds more than a unit's text.
"""

import dataclasses
import hashlib
import math
import os
import sys
import types
from typing import Any, Iterator, Sequence

from pretrain import config as config_lib
from pretrain.data.embedded_corpus import EMBEDDED_VERSION, embedded_documents
from pretrain.data import text_files
from pretrain.errors import PretrainError

SOURCES = ("embedded", "text", "jsonl")


def _whole_files(files: list[str], source: str, field: str, stats: dict) -> list[list[str]]:
  cfg = types.SimpleNamespace(source=source, field=field)
  return [
    doc
    for path in files
    for doc in text_files.read_range(path, 0, math.inf, cfg, stats, None, hash_bytes=False)
  ]


def read_text_files(patterns: str | Sequence[str]) -> tuple[list[list[str]], dict]:
  """Reads BERT-format text: one sentence per line, a blank line between documents.

  `patterns` is a list of globs or one comma-separated string of them. A file
  boundary also ends a document.
  """
  files = text_files.resolve_files(patterns, "text")
  stats = {"num_files": len(files), "undecodable_lines": 0, "bad_lines": 0}
  docs = _whole_files(files, "text", "", stats)
  if not docs:
    raise PretrainError(f"text files {files} contain no text (from data.paths={patterns!r})")
  return docs, stats


def read_jsonl(patterns: str | Sequence[str], text_field: str) -> tuple[list[list[str]], dict]:
  """Reads JSON lines: each object's `text_field` is one document, split into sentences."""
  files = text_files.resolve_files(patterns, "jsonl")
  stats = {"num_files": len(files), "undecodable_lines": 0, "bad_lines": 0}
  docs = _whole_files(files, "jsonl", text_field, stats)
  if not docs:
    raise PretrainError(
      f"jsonl files {files} hold no usable text in field {text_field!r} "
      f"({stats['bad_lines']} bad line(s), {stats['undecodable_lines']} undecodable line(s); "
      "set data.text_field)"
    )
  return docs, stats


@dataclasses.dataclass
class Corpus:
  train: list[list[str]]
  heldout: list[list[str]]
  stats: dict


def _doc_hash(doc: list[str]) -> str:
  return hashlib.sha256("\n".join(doc).encode("utf-8")).hexdigest()


def split_heldout(
  docs: list[list[str]], heldout_fraction: float
) -> tuple[list[list[str]], list[list[str]]]:
  """Splits by a hash of each document's text: stable across runs, machines and order."""
  if len(docs) < 2:
    raise PretrainError(
      f"the corpus has {len(docs)} document(s); at least 2 are needed "
      "(one for training, one held out)"
    )
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


def _split_stats(prefix: str, docs: list[list[str]]) -> dict:
  return {
    f"{prefix}_num_docs": len(docs),
    f"{prefix}_num_sentences": sum(len(d) for d in docs),
    f"{prefix}_num_chars": sum(len(s) for d in docs for s in d),
  }


def _source(data_cfg: Any) -> str:
  source = config_lib.field(data_cfg, "source", "embedded")
  if source not in SOURCES:
    raise PretrainError(f"data.source={source!r} is unknown; allowed: {', '.join(SOURCES)}")
  return source


def heldout_fraction(data_cfg: Any) -> float:
  """data.heldout_fraction, checked: a number in [0, 1) (NaN is not)."""
  fraction = config_lib.field(data_cfg, "heldout_fraction", 0.02)
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
    raise PretrainError(f"data.heldout_fraction={fraction!r} must be a number in [0, 1)")
  return float(fraction)


def load_corpus(data_cfg: Any) -> Corpus:
  """Reads the configured corpus and splits off the fixed held-out documents."""
  source = _source(data_cfg)
  fraction = heldout_fraction(data_cfg)
  if source == "embedded":
    docs = embedded_documents()
    stats = {"num_files": 0, "undecodable_lines": 0, "bad_lines": 0}
  elif source == "text":
    docs, stats = read_text_files(config_lib.field(data_cfg, "paths", ""))
  else:
    field = config_lib.field(data_cfg, "text_field", "text")
    if not field:
      raise PretrainError("data.text_field is empty; set it to the jsonl field holding the text")
    docs, stats = read_jsonl(config_lib.field(data_cfg, "paths", ""), field)
  train, heldout = split_heldout(docs, float(fraction))
  stats = {
    "source": source,
    **stats,
    **_split_stats("train", train),
    **_split_stats("heldout", heldout),
  }
  return Corpus(train=train, heldout=heldout, stats=stats)


def corpus_fingerprint(data_cfg: Any) -> str:
  """A short hash of what identifies the corpus' text, for cache keys.

  Embedded: the extraction version and the Python build. Files: their resolved
  paths (or gs:// URLs), sizes and modification times (plus the jsonl text field).
  """
  source = _source(data_cfg)
  h = hashlib.sha256()
  if source == "embedded":
    h.update(f"{EMBEDDED_VERSION}\0{sys.version}".encode())
  else:
    h.update(source.encode())
    if source == "jsonl":
      h.update(f"\0{config_lib.field(data_cfg, 'text_field', 'text')}".encode())
    for path, size in text_files.resolve_sources(config_lib.field(data_cfg, "paths", ""), source):
      if text_files.is_url(path):
        from etils import epath  # pylint: disable=g-import-not-at-top

        with text_files.read_errors(path):
          h.update(f"\0{path}\0{size}\0{epath.Path(path).stat().mtime}".encode())
      else:
        st = os.stat(path)
        h.update(f"\0{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


# Input units: the corpus as byte ranges of its files, for streaming preparation in parallel.


@dataclasses.dataclass(frozen=True)
class InputUnit:
  """A piece of the corpus that one worker reads: byte ranges of files, in corpus order."""

  index: int
  source: str  # 'embedded' | 'text' | 'jsonl'
  ranges: tuple[
    tuple[str, int, int], ...
  ]  # (path or gs:// URL, start byte, end byte); () for embedded.

  @property
  def num_bytes(self) -> int:
    return sum(end - start for _, start, end in self.ranges)

  def to_json(self) -> dict:
    return {"index": self.index, "source": self.source, "ranges": [list(r) for r in self.ranges]}

  @classmethod
  def from_json(cls, d: dict) -> "InputUnit":
    try:
      ranges = tuple((str(p), int(a), int(b)) for p, a, b in d["ranges"])
      unit = cls(int(d["index"]), str(d["source"]), ranges)
    except (KeyError, TypeError, ValueError) as e:
      raise PretrainError(
        f"input unit {d!r} is malformed ({e!r}); it needs index, source and ranges"
      ) from e
    if unit.source not in SOURCES:
      raise PretrainError(
        f"input unit {unit.index} has source {unit.source!r}; allowed: {', '.join(SOURCES)}"
      )
    return unit


def plan_units(data_cfg: Any, unit_bytes: int = 64 << 20) -> tuple[list[InputUnit], list[dict]]:
  """Units in global corpus order, and the sources [{"path", "size"}] (sorted, unique).

  From file sizes alone: a plain file over unit_bytes is split into even byte ranges of at most
  unit_bytes, a compressed one is one range, and consecutive ranges are grouped while they fit.
  """
  source = _source(data_cfg)
  if isinstance(unit_bytes, bool) or not isinstance(unit_bytes, int) or unit_bytes < 1:
    raise PretrainError(f"unit_bytes={unit_bytes!r} must be a positive number of bytes")
  if source == "embedded":
    return [InputUnit(0, "embedded", ())], []
  files = text_files.resolve_sources(config_lib.field(data_cfg, "paths", ""), source)
  groups: list[list[tuple[str, int, int]]] = []
  total = 0
  for path, size in files:
    n = 1 if text_files.compression(path) else max(1, -(-size // unit_bytes))
    for k in range(n):
      a, b = size * k // n, size * (k + 1) // n
      if not groups or total + b - a > unit_bytes:
        groups.append([])
        total = 0
      groups[-1].append((path, a, b))
      total += b - a
  return (
    [InputUnit(i, source, tuple(g)) for i, g in enumerate(groups)],
    [{"path": p, "size": s} for p, s in files],
  )


def _unit_docs(
  unit: InputUnit, data_cfg: Any, stats: dict, budgets: Sequence[float | None], hash_bytes: bool
) -> Iterator[list[str]]:
  source = _source(data_cfg)
  if unit.source != source:
    raise PretrainError(
      f"input unit {unit.index} was planned for data.source={unit.source!r}, but it is "
      f"{source!r} now: plan the units again"
    )
  field = config_lib.field(data_cfg, "text_field", "text")
  if source == "jsonl" and not field:
    raise PretrainError("data.text_field is empty; set it to the jsonl field holding the text")
  for key, value in (("undecodable_lines", 0), ("bad_lines", 0), ("ranges", [])):
    stats.setdefault(key, value)
  cfg = types.SimpleNamespace(source=source, field=field)
  for (path, start, end), budget in zip(unit.ranges, budgets):
    yield from text_files.read_range(path, start, end, cfg, stats, budget, hash_bytes)


def read_unit(unit: InputUnit, data_cfg: Any, stats: dict) -> Iterator[list[str]]:
  """The documents (lists of sentences) whose first byte lies in the unit's ranges, in order.

  Counts undecodable and bad lines into `stats`, and appends each range's {path, start, end, bytes, sha256}
  to stats["ranges"] once the range has been read to its end.
  """
  yield from _unit_docs(unit, data_cfg, stats, [None] * len(unit.ranges), hash_bytes=True)
  if unit.source == "embedded":
    yield from embedded_documents()


def sample_unit(unit: InputUnit, data_cfg: Any, max_bytes: int) -> Iterator[list[str]]:
  """Documents from the start of each of the unit's ranges, about max_bytes in all (a bounded sample).

  Each nonempty range gives at least one document; with max_bytes >= unit.num_bytes this is read_unit.
  """
  share = max_bytes / max(len(unit.ranges), 1)  # Bytes per range; None: all of it.
  budgets = [
    None if max_bytes >= unit.num_bytes or end - start <= share else share
    for _, start, end in unit.ranges
  ]
  yield from _unit_docs(unit, data_cfg, {}, budgets, hash_bytes=False)
  total = 0
  for doc in embedded_documents() if unit.source == "embedded" else ():
    if total and total >= max_bytes:
      return
    yield doc
    total += sum(len(s.encode("utf-8")) + 1 for s in doc) + 1
