"""Workdirs that are local folders or bucket URLs (gs://...), through etils.epath.

TPU pod workers share no file system, so their run's workdir is a bucket. A
local path keeps plain file semantics (atomic rename, append); a URL goes
through epath, whose gs:// backend is tensorflow's gfile when tensorflow is
installed and fsspec + gcsfs otherwise.
"""
import os

from etils import epath

from pretrain.data.tokenizer import write_atomic


def is_remote(path) -> bool:
  """A URL (gs://, s3://): no appends, no atomic rename, no os calls."""
  return "://" in os.fspath(path)


def write_bytes_atomic(path, data: bytes) -> None:
  """Readers see the old content or the new, never half of it."""
  if is_remote(path):
    epath.Path(path).write_bytes(data)  # One object upload, visible only once complete.
  else:
    write_atomic(os.fspath(path), lambda f: f.write(data))
