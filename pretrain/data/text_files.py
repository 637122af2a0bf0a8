"""Corpus files, local or gs://, plain or .gz/.zst: globs, streamed lines, and the documents of a byte range.

A range [start, end) of a file owns the documents whose first line starts in it: a reader of a range
that starts mid-file skips the line it starts in and, for BERT-format text, a document an earlier
range owns; it reads past `end` only to finish its last document. So the documents of any split of a
file into ranges, read one after the other, are the file's documents. Compressed files are one range.
"""

import contextlib
import glob
import gzip
import hashlib
import json
import logging
import math
import os
import re
import zlib
from typing import Any, Callable, Iterable, Iterator, Sequence

from pretrain.data.embedded_corpus import split_sentences
from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # Bytes per read when streaming a file.
_BINARY_SNIFF_BYTES = 8000  # A NUL byte in a file's first 8000 bytes makes it binary (git's rule).
_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_CREDENTIALS_HINT = "check your credentials (gcloud auth application-default login)"
_AUTH_WORDS = re.compile(
  r"forbidden|credential|permission|unauthori[sz]ed|access denied|\b40[13]\b", re.I
)


def split_patterns(patterns: str | Sequence[str]) -> list[str]:
  if isinstance(patterns, str):
    patterns = patterns.split(",")
  return [p.strip() for p in patterns if p and p.strip()]


def _glob_local(pattern: str) -> list[str]:
  return [p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)]


def resolve_sources(patterns: str | Sequence[str], what: str) -> list[tuple[str, int]]:
  """(path, size) of sorted, unique files: local globs (and ~) or gs:// globs; each must match a file."""
  globs = split_patterns(patterns)
  if not globs:
    raise PretrainError(f"no {what} files given: data.paths is empty")
  files = {}
  for pattern in globs:
    matched = (
      _glob_gcs(pattern)
      if is_url(pattern)
      else [(p, os.stat(p).st_size) for p in _glob_local(pattern)]
    )
    if not matched:
      raise PretrainError(f"{what} glob {pattern!r} matches no files")
    files.update(matched)
  return sorted(files.items())


def resolve_files(patterns: str | Sequence[str], what: str) -> list[str]:
  """Expands globs (and ~) to sorted, unique files; every glob must match a file."""
  return [path for path, _ in resolve_sources(patterns, what)]


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


def is_url(path: str) -> bool:
  return path.startswith("gs://")


def compression(path: str) -> str | None:
  return next(
    (kind for suffix, kind in _COMPRESSION.items() if path.lower().endswith(suffix)), None
  )


def _remote_error(action: str, url: str, e: Exception) -> PretrainError:
  """A failed GCS access in one line naming the URL and the cause (and credentials where they may be it)."""
  auth = (
    isinstance(e, PermissionError)
    or getattr(e, "code", None) in (401, 403)
    or type(e).__module__.startswith("google.auth")
    or _AUTH_WORDS.search(str(e))
  )
  cause = " ".join(f"{type(e).__name__}: {e}".split())
  return PretrainError(
    f"cannot {action} {url}: {cause}" + (f"; {_CREDENTIALS_HINT}" if auth else "")
  )


def _glob_gcs(pattern: str) -> list[tuple[str, int]]:
  """(URL, size) of the objects a gs:// glob matches: a listing of the bucket under its fixed prefix."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (loads its GCS backend)

  if "**" in pattern:
    raise PretrainError(
      f"gs:// glob {pattern!r}: ** is not supported on GCS (a listing per level); use *"
    )
  bucket, _, name = pattern[len("gs://") :].partition("/")
  try:
    stats = [(os.fspath(p), p.stat()) for p in epath.Path(f"gs://{bucket}").glob(name)]
  except FileNotFoundError:
    return []
  except Exception as e:  # pylint: disable=broad-except  (gcsfs and google.auth raise many kinds)
    raise _remote_error("list", pattern, e) from e
  return [(url, int(st.length)) for url, st in stats if not st.is_directory]


@contextlib.contextmanager
def read_errors(path: str):
  """Turns a failed read (gone, unreadable, no credentials) into a PretrainError naming the file."""
  try:
    yield
  except FileNotFoundError as e:
    raise PretrainError(f"corpus file {path} does not exist (deleted since it was listed?)") from e
  except Exception as e:  # pylint: disable=broad-except  (gcsfs and google.auth raise many kinds)
    if isinstance(e, PretrainError):
      raise
    raise (
      _remote_error("read", path, e)
      if is_url(path)
      else PretrainError(f"cannot read corpus file {path}: {e}")
    ) from e


class CorpusFile:
  """A corpus file read forward from byte `pos`, hashing the bytes of `window` [start, end) it passes."""

  def __init__(self, path: str, pos: int, window: tuple[int, int] | None):
    self.path, self.pos, self.window, self.hashed = path, pos, window, 0
    self._hash = hashlib.sha256()
    with read_errors(path):
      if is_url(path):
        from etils import epath  # pylint: disable=g-import-not-at-top

        self._f = epath.Path(path).open("rb")
      else:
        self._f = open(path, "rb")  # pylint: disable=consider-using-with
      self._f.seek(pos)

  def read(self, n: int = _CHUNK, at: int | None = None) -> bytes:
    """The next n bytes; or, `at` a position, bytes [at, at + n) without moving the stream."""
    with read_errors(self.path):
      if at is not None:
        self._f.seek(at)
        data = self._f.read(n)
        self._f.seek(self.pos)
        return data
      data = self._f.read(n)
    if self.window:
      a, b = max(self.window[0], self.pos), min(self.window[1], self.pos + len(data))
      if a < b:
        self._hash.update(data[a - self.pos : b - self.pos])
        self.hashed += b - a
    self.pos += len(data)
    return data

  def digest(self, whole: bool) -> dict:
    """{bytes, sha256} of the window, read on to its end; a file that has changed size is an error."""
    start, end = self.window
    while self.pos < end and self.read(min(_CHUNK, end - self.pos)):
      pass
    if self.hashed != end - start or (whole and (self.pos > end or self.read(1))):
      raise PretrainError(
        f"corpus file {self.path} changed size since the units were planned; plan them again"
      )
    return {"bytes": self.hashed, "sha256": self._hash.hexdigest()}

  def close(self):
    self._f.close()


def _decompressed(f: CorpusFile, kind: str) -> Callable[[int], bytes]:
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
      raise PretrainError(
        f"corpus file {f.path} is not valid {kind} data ({e}), despite its name"
      ) from e

  return read


def _open_before(f: CorpusFile, pos: int, tail: bytes) -> bool:
  """Whether a document is open at the line that starts after byte `pos` ('\\n'; `tail` is the rest of
  that byte's line from it on): the last decodable line before is not blank. Reads backwards."""
  buf, lo, step, end = b"", pos, 4096, pos  # buf holds bytes [lo, end), end a line's '\n'.
  while end >= 0:
    while (nl := buf.rfind(b"\n")) < 0 and lo > 0:  # Another chunk before, twice the last.
      n = min(step, lo)
      buf, lo, step = f.read(n, at=lo - n) + buf, lo - n, min(step * 2, _CHUNK)
    line_start = lo + nl + 1
    line = _decode(buf[nl + 1 :] + tail, line_start)
    if line is not None:
      return bool(line.strip())
    buf, tail, end = buf[: max(nl, 0)], b"", line_start - 1
  return False


def _text_docs(
  lines: Iterable[tuple[int, str | None]],
  hi: float,
  foreign: Callable[[], bool],
  budget: float | None,
) -> Iterator[list[str]]:
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


def _jsonl_docs(
  lines: Iterable[tuple[int, str | None]],
  hi: float,
  field: str,
  budget: float | None,
  where: str,
  stats: dict,
) -> Iterator[list[str]]:
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
    _logger.warning(
      "%s: skipped %d line(s) that are not JSON objects with a string field %r", where, bad, field
    )
    stats["bad_lines"] += bad


def read_range(
  path: str, start: int, end: int, cfg: Any, stats: dict, budget: float | None, hash_bytes: bool
) -> Iterator[list[str]]:
  """The documents that start in [start, end) of a file (all of a compressed one), streamed."""
  kind = compression(path)
  lo, hi = (0, math.inf) if kind else (start, end)
  f = CorpusFile(path, max(lo - 1, 0), ((0, end) if kind else (start, end)) if hash_bytes else None)
  with contextlib.closing(f):
    raw = _raw_lines(_decompressed(f, kind) if kind else f.read, f.pos)
    tail = (
      next(raw)[1] if lo > 0 else b""
    )  # The end of a line that starts before `start`: not ours.
    undecodable = 0

    def decoded() -> Iterator[tuple[int, str | None]]:
      nonlocal undecodable
      for pos, line in raw:
        if pos < _BINARY_SNIFF_BYTES and b"\0" in line[: _BINARY_SNIFF_BYTES - pos]:
          # As git and grep decide: a NUL byte near the start means a binary file, not text.
          raise PretrainError(f"{path} is a binary file (a NUL byte at its start), not text")
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
      stats["ranges"].append(
        {"path": path, "start": start, "end": end, **f.digest(whole=bool(kind))}
      )
