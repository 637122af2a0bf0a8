"""Workdirs that are local folders or bucket URLs (gs://...), through etils.epath.

TPU pod workers share no file system, so their run's workdir is a bucket. A
local path keeps plain file semantics (atomic rename, append); a URL goes
through epath, whose gs:// backend is tensorflow's gfile when tensorflow is
installed and fsspec + gcsfs otherwise. `cache_dir` is the host's local cache
root (trained tokenizers, stores, copies of gs:// shards).
"""

import os
import tempfile
from typing import Any, Callable

from etils import epath


def cache_dir() -> str:
  """The cache root: $PRETRAIN_CACHE_DIR or ~/.cache/pretrain."""
  return os.path.expanduser(os.environ.get("PRETRAIN_CACHE_DIR") or "~/.cache/pretrain")


def is_remote(path) -> bool:
  """A URL (gs://, s3://): no appends, no atomic rename, no os calls."""
  return "://" in os.fspath(path)


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
  """Writes via a temp file in the same directory and os.replace: readers never see half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(
      tmp, 0o666 & ~umask
    )  # mkstemp makes 0600 files; others on the host read caches and stores.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_bytes_atomic(path, data: bytes) -> None:
  """Readers see the old content or the new, never half of it."""
  if is_remote(path):
    epath.Path(path).write_bytes(data)  # One object upload, visible only once complete.
  else:
    write_atomic(os.fspath(path), lambda f: f.write(data))
