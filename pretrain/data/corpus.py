"""Text corpora as documents of sentences, with a fixed held-out split.

Sources: an embedded corpus of English prose that ships with CPython (so a first run needs no
download), BERT-style text files (one sentence per line, a blank line between documents) and JSON
lines (one document per line in a text field). Files are local or gs://, plain or .gz/.zst, and are
streamed. For preparation in parallel, plan_units cuts the corpus into input units (byte ranges,
from file sizes alone) that read_unit reads one at a time: no process holds more than a unit's text.
"""
import contextlib
import dataclasses
import glob
import gzip
import hashlib
import json
import logging
import math
import os
import re
import sys
import types
import zlib
from typing import Any, Callable, Iterable, Iterator, Sequence

from pretrain.data.embedded_corpus import EMBEDDED_VERSION, embedded_documents, split_sentences
from pretrain.data.embedded_corpus import _clean_docs_text  # pylint: disable=unused-import  (tests use it)
from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)

SOURCES = ("embedded", "text", "jsonl")
_CHUNK = 1 << 20  # Bytes per read when streaming a file.
_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_CREDENTIALS_HINT = "check your credentials (gcloud auth application-default login)"
_AUTH_WORDS = re.compile(r"forbidden|credential|permission|unauthori[sz]ed|access denied|\b40[13]\b", re.I)


def _split_patterns(patterns: str | Sequence[str]) -> list[str]:
  if isinstance(patterns, str):
    patterns = patterns.split(",")
  return [p.strip() for p in patterns if p and p.strip()]


def _glob_local(pattern: str) -> list[str]:
  return [p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)]


def _resolve_sources(patterns: str | Sequence[str], what: str) -> list[tuple[str, int]]:
  """(path, size) of sorted, unique files: local globs (and ~) or gs:// globs; each must match a file."""
  globs = _split_patterns(patterns)
  if not globs:
    raise PretrainError(f"no {what} files given: data.paths is empty")
  files = {}
  for pattern in globs:
    matched = (_glob_gcs(pattern) if _is_url(pattern)
               else [(p, os.stat(p).st_size) for p in _glob_local(pattern)])
    if not matched:
      raise PretrainError(f"{what} glob {pattern!r} matches no files")
    files.update(matched)
  return sorted(files.items())


def _resolve_files(patterns: str | Sequence[str], what: str) -> list[str]:
  """Expands globs (and ~) to sorted, unique files; every glob must match a file."""
  return [path for path, _ in _resolve_sources(patterns, what)]


def _decode(raw: bytes, pos: int) -> str | None:
  """One line (without its '\n') as UTF-8, None if undecodable; a BOM is stripped at byte 0 only."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError:
    return None
  return (line.lstrip("\ufeff") if pos == 0 else line).rstrip("\r")


def _raw_lines(read: Callable[[int], bytes], pos: int) -> Iterator[tuple[int, bytes]]:
  """(start byte, bytes without the '\n') of each line of a stream read in chunks from byte `pos`.

  Like bytes.split(b"\n"): the piece after the last '\n' comes last, empty if the stream ends in one.
  """
  head: list[bytes] = []  # The pieces of a line that spans chunks.
  while chunk := read(_CHUNK):
    parts = chunk.split(b"\n")
    head.append(parts[0])
    if len(parts) == 1:
      continue
    parts[0] = b"".join(head)
    head = [parts.pop()]
    for line in parts:
      yield pos, line
      pos += len(line) + 1
  yield pos, b"".join(head)


def _whole_files(files: list[str], source: str, field: str, stats: dict) -> list[list[str]]:
  cfg = types.SimpleNamespace(source=source, field=field)
  return [doc for path in files for doc in _read_range(path, 0, math.inf, cfg, stats, None, hash_bytes=False)]


def read_text_files(patterns: str | Sequence[str]) -> tuple[list[list[str]], dict]:
  """Reads BERT-format text: one sentence per line, a blank line between documents.

  `patterns` is a list of globs or one comma-separated string of them. A file
  boundary also ends a document.
  """
  files = _resolve_files(patterns, "text")
  stats = {"num_files": len(files), "undecodable_lines": 0, "bad_lines": 0}
  docs = _whole_files(files, "text", "", stats)
  if not docs:
    raise PretrainError(f"text files {files} contain no text (from data.paths={patterns!r})")
  return docs, stats


def read_jsonl(patterns: str | Sequence[str], text_field: str) -> tuple[list[list[str]], dict]:
  """Reads JSON lines: each object's `text_field` is one document, split into sentences."""
  files = _resolve_files(patterns, "jsonl")
  stats = {"num_files": len(files), "undecodable_lines": 0, "bad_lines": 0}
  docs = _whole_files(files, "jsonl", text_field, stats)
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
  paths (or gs:// URLs), sizes and modification times (plus the jsonl text field).
  """
  source = _source(data_cfg)
  h = hashlib.sha256()
  if source == "embedded":
    h.update(f"{EMBEDDED_VERSION}\0{sys.version}".encode())
  else:
    h.update(source.encode())
    if source == "jsonl":
      h.update(f"\0{_get(data_cfg, 'text_field', 'text')}".encode())
    for path, size in _resolve_sources(_get(data_cfg, "paths", ""), source):
      if _is_url(path):
        from etils import epath  # pylint: disable=g-import-not-at-top
        with _read_errors(path):
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
  ranges: tuple[tuple[str, int, int], ...]  # (path or gs:// URL, start byte, end byte); () for embedded.

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
      raise PretrainError(f"input unit {d!r} is malformed ({e!r}); it needs index, source and ranges") from e
    if unit.source not in SOURCES:
      raise PretrainError(f"input unit {unit.index} has source {unit.source!r}; allowed: {', '.join(SOURCES)}")
    return unit


def _is_url(path: str) -> bool:
  return path.startswith("gs://")


def _compression(path: str) -> str | None:
  return next((kind for suffix, kind in _COMPRESSION.items() if path.lower().endswith(suffix)), None)


def _remote_error(action: str, url: str, e: Exception) -> PretrainError:
  """A failed GCS access in one line naming the URL and the cause (and credentials where they may be it)."""
  auth = (isinstance(e, PermissionError) or getattr(e, "code", None) in (401, 403)
          or type(e).__module__.startswith("google.auth") or _AUTH_WORDS.search(str(e)))
  cause = " ".join(f"{type(e).__name__}: {e}".split())
  return PretrainError(f"cannot {action} {url}: {cause}" + (f"; {_CREDENTIALS_HINT}" if auth else ""))


def _glob_gcs(pattern: str) -> list[tuple[str, int]]:
  """(URL, size) of the objects a gs:// glob matches: a listing of the bucket under its fixed prefix."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (loads its GCS backend)
  if "**" in pattern:
    raise PretrainError(f"gs:// glob {pattern!r}: ** is not supported on GCS (a listing per level); use *")
  bucket, _, name = pattern[len("gs://"):].partition("/")
  try:
    stats = [(os.fspath(p), p.stat()) for p in epath.Path(f"gs://{bucket}").glob(name)]
  except FileNotFoundError:
    return []
  except Exception as e:  # pylint: disable=broad-except  (gcsfs and google.auth raise many kinds)
    raise _remote_error("list", pattern, e) from e
  return [(url, int(st.length)) for url, st in stats if not st.is_directory]


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
  files = _resolve_sources(_get(data_cfg, "paths", ""), source)
  groups: list[list[tuple[str, int, int]]] = []
  total = 0
  for path, size in files:
    n = 1 if _compression(path) else max(1, -(-size // unit_bytes))
    for k in range(n):
      a, b = size * k // n, size * (k + 1) // n
      if not groups or total + b - a > unit_bytes:
        groups.append([])
        total = 0
      groups[-1].append((path, a, b))
      total += b - a
  return ([InputUnit(i, source, tuple(g)) for i, g in enumerate(groups)],
          [{"path": p, "size": s} for p, s in files])


@contextlib.contextmanager
def _read_errors(path: str):
  """Turns a failed read (gone, unreadable, no credentials) into a PretrainError naming the file."""
  try:
    yield
  except FileNotFoundError as e:
    raise PretrainError(f"corpus file {path} does not exist (deleted since it was listed?)") from e
  except Exception as e:  # pylint: disable=broad-except  (gcsfs and google.auth raise many kinds)
    if isinstance(e, PretrainError):
      raise
    raise (_remote_error("read", path, e) if _is_url(path)
           else PretrainError(f"cannot read corpus file {path}: {e}")) from e


class _File:
  """A corpus file read forward from byte `pos`, hashing the bytes of `window` [start, end) it passes."""

  def __init__(self, path: str, pos: int, window: tuple[int, int] | None):
    self.path, self.pos, self.window, self.hashed = path, pos, window, 0
    self._hash = hashlib.sha256()
    with _read_errors(path):
      if _is_url(path):
        from etils import epath  # pylint: disable=g-import-not-at-top
        self._f = epath.Path(path).open("rb")
      else:
        self._f = open(path, "rb")  # pylint: disable=consider-using-with
      self._f.seek(pos)

  def read(self, n: int = _CHUNK, at: int | None = None) -> bytes:
    """The next n bytes; or, `at` a position, bytes [at, at + n) without moving the stream."""
    with _read_errors(self.path):
      if at is not None:
        self._f.seek(at)
        data = self._f.read(n)
        self._f.seek(self.pos)
        return data
      data = self._f.read(n)
    if self.window:
      a, b = max(self.window[0], self.pos), min(self.window[1], self.pos + len(data))
      if a < b:
        self._hash.update(data[a - self.pos:b - self.pos])
        self.hashed += b - a
    self.pos += len(data)
    return data

  def digest(self, whole: bool) -> dict:
    """{bytes, sha256} of the window, read on to its end; a file that has changed size is an error."""
    start, end = self.window
    while self.pos < end and self.read(min(_CHUNK, end - self.pos)):
      pass
    if self.hashed != end - start or (whole and (self.pos > end or self.read(1))):
      raise PretrainError(f"corpus file {self.path} changed size since the units were planned; "
                          "plan them again")
    return {"bytes": self.hashed, "sha256": self._hash.hexdigest()}

  def close(self):
    self._f.close()


def _decompressed(f: _File, kind: str) -> Callable[[int], bytes]:
  """read(n) of a compressed file's content; data that is not `kind` is a PretrainError naming the file."""
  if kind == "gzip":
    stream, errors = gzip.GzipFile(fileobj=f, mode="rb"), (OSError, EOFError, zlib.error)
  else:
    import zstandard  # pylint: disable=g-import-not-at-top
    stream = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    errors = (zstandard.ZstdError, OSError)

  def read(n: int) -> bytes:
    try:
      return stream.read(n)
    except errors as e:  # The file's own read errors are PretrainErrors already.
      raise PretrainError(f"corpus file {f.path} is not valid {kind} data ({e}), despite its name") from e

  return read


def _open_before(f: _File, pos: int, tail: bytes) -> bool:
  """Whether a document is open at the line that starts after byte `pos` ('\\n'; `tail` is the rest of
  that byte's line from it on): the last decodable line before is not blank. Reads backwards."""
  buf, lo, step, end = b"", pos, 4096, pos  # buf holds bytes [lo, end), end a line's '\n'.
  while end >= 0:
    while (nl := buf.rfind(b"\n")) < 0 and lo > 0:  # Another chunk before, twice the last.
      n = min(step, lo)
      buf, lo, step = f.read(n, at=lo - n) + buf, lo - n, min(step * 2, _CHUNK)
    line_start = lo + nl + 1
    line = _decode(buf[nl + 1:] + tail, line_start)
    if line is not None:
      return bool(line.strip())
    buf, tail, end = buf[:max(nl, 0)], b"", line_start - 1
  return False


def _text_docs(lines: Iterable[tuple[int, str | None]], hi: float, foreign: Callable[[], bool],
               budget: float | None) -> Iterator[list[str]]:
  """BERT-format documents whose first line starts before `hi`; `foreign()`: the first line continues a
  document that a previous range owns."""
  doc: list[str] = []
  first, yielded, skip = None, False, False
  for pos, line in lines:
    if pos >= hi and not doc:
      return
    if first is None:
      first, skip = pos, pos > 0 and foreign()
    if line is None:
      continue
    line = line.strip()
    if not line:
      skip = False
      if doc:
        yield doc
        doc, yielded = [], True
    elif not skip:
      if not doc and yielded and budget is not None and pos - first >= budget:
        return
      doc.append(line)
  if doc:
    yield doc


def _jsonl_docs(lines: Iterable[tuple[int, str | None]], hi: float, field: str, budget: float | None,
                where: str, stats: dict) -> Iterator[list[str]]:
  """The documents of the JSON lines that start before `hi`; bad lines are counted."""
  bad, first, yielded = 0, None, False
  for pos, line in lines:
    if pos >= hi or (yielded and budget is not None and pos - first >= budget):
      break
    first = pos if first is None else first
    if line is None or not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      record = None
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str):
      bad += 1
    elif sentences := split_sentences(text):
      yield sentences
      yielded = True
  if bad:
    _logger.warning("%s: skipped %d line(s) that are not JSON objects with a string field %r",
                    where, bad, field)
    stats["bad_lines"] += bad


def _read_range(path: str, start: int, end: int, cfg: Any, stats: dict, budget: float | None,
                hash_bytes: bool) -> Iterator[list[str]]:
  """The documents that start in [start, end) of a file (all of a compressed one), streamed."""
  kind = _compression(path)
  lo, hi = (0, math.inf) if kind else (start, end)
  f = _File(path, max(lo - 1, 0), ((0, end) if kind else (start, end)) if hash_bytes else None)
  with contextlib.closing(f):
    raw = _raw_lines(_decompressed(f, kind) if kind else f.read, f.pos)
    tail = next(raw)[1] if lo > 0 else b""  # The end of a line that starts before `start`: not ours.
    undecodable = 0

    def decoded() -> Iterator[tuple[int, str | None]]:
      nonlocal undecodable
      for pos, line in raw:
        text = _decode(line, pos)
        undecodable += text is None and pos < hi
        yield pos, text

    where = path if kind or end == math.inf else f"{path} bytes [{start}, {end})"
    if cfg.source == "text":
      yield from _text_docs(decoded(), hi, lambda: _open_before(f, start - 1, tail), budget)
    else:
      yield from _jsonl_docs(decoded(), hi, cfg.field, budget, where, stats)
    if undecodable:
      _logger.warning("%s: skipped %d line(s) that are not valid UTF-8", where, undecodable)
      stats["undecodable_lines"] += undecodable
    if hash_bytes:
      stats["ranges"].append({"path": path, "start": start, "end": end, **f.digest(whole=bool(kind))})


def _unit_docs(unit: InputUnit, data_cfg: Any, stats: dict, budgets: Sequence[float | None],
               hash_bytes: bool) -> Iterator[list[str]]:
  source = _source(data_cfg)
  if unit.source != source:
    raise PretrainError(f"input unit {unit.index} was planned for data.source={unit.source!r}, but it is "
                        f"{source!r} now: plan the units again")
  field = _get(data_cfg, "text_field", "text")
  if source == "jsonl" and not field:
    raise PretrainError("data.text_field is empty; set it to the jsonl field holding the text")
  for key, value in (("undecodable_lines", 0), ("bad_lines", 0), ("ranges", [])):
    stats.setdefault(key, value)
  cfg = types.SimpleNamespace(source=source, field=field)
  for (path, start, end), budget in zip(unit.ranges, budgets):
    yield from _read_range(path, start, end, cfg, stats, budget, hash_bytes)


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
  budgets = [None if max_bytes >= unit.num_bytes or end - start <= share else share
             for _, start, end in unit.ranges]
  yield from _unit_docs(unit, data_cfg, {}, budgets, hash_bytes=False)
  total = 0
  for doc in embedded_documents() if unit.source == "embedded" else ():
    if total and total >= max_bytes:
      return
    yield doc
    total += sum(len(s.encode("utf-8")) + 1 for s in doc) + 1
