"""Token stores: a corpus tokenized once, in shards of ArrayRecord files, read by random access.

A store is a folder, local or `gs://bucket/prefix` (a gcsfuse mount of a bucket is a local path too):
  manifest.json            written last and atomically: its presence means the store is complete
  plan.json, work/         what `pretrain/data/prepare.py` planned, and its per-unit done markers
  tokenizer/               a copy of the tokenizer the tokens are ids of (`Store.open_tokenizer`)
  {split}-{i:05d}-of-{n:05d}.array_record   input unit i's documents of the split, one record each
  {split}-{i:05d}-of-{n:05d}.index.npz      their layout (`sentence_lengths`, `doc_sentences`)
A record is little-endian uint32 n_sentences, uint32 sentence lengths[n], then the tokens in the
manifest's token_dtype. A unit with no document of a split writes no shard of it, and the manifest
lists only the shards written. Every file is a function of the input alone (no timestamps), so a
rebuilt store is byte-identical.

`ShardDocuments` is one shard as `pretrain.data.tokenized.Documents`: the index on first use, then
only the records `take` touches. A gs:// shard is downloaded once per host into the cache
(`paths.cache_dir()/store-cache/`), since the ArrayRecord reader needs a local file.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import weakref
import uuid
import zipfile
from typing import Any

from array_record.python import array_record_module
from etils import epath
import numpy as np

from pretrain import paths
from pretrain.data.tokenized import TokenizedDocs
from pretrain.errors import PretrainError

FORMAT_VERSION = "pretrain-store-v1"
SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"
_WRITER_OPTIONS = "group_size:1"  # One record per chunk: a record reads without its neighbours.
_READER_OPTIONS = "readahead_buffer_size:0"  # Random access: no read-ahead past the record.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # np.savez stamps the time; the index must not differ by it.
_COPY_CHUNK = 16 << 20


def join(base: str, name: str) -> str:
  return f"{base.rstrip('/')}/{name}" if paths.is_remote(base) else os.path.join(base, name)


def read_bytes(path: str) -> bytes:
  """A local file or an object; FileNotFoundError when absent."""
  if paths.is_remote(path):
    p = epath.Path(path)
    if not p.exists():
      raise FileNotFoundError(path)
    return p.read_bytes()
  with open(path, "rb") as f:
    return f.read()


def exists(path: str) -> bool:
  return epath.Path(path).exists() if paths.is_remote(path) else os.path.exists(path)


def token_dtype(vocab_size: int) -> str:
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokenizer_info(tokenizer) -> dict:
  """What the manifest records of the tokenizer: enough to refuse a run with another one."""
  kind = {"Tokenizer": "sentencepiece", "HfTokenizer": "huggingface"}.get(
    type(tokenizer).__name__, type(tokenizer).__name__
  )
  return {
    "fingerprint": tokenizer.fingerprint,
    "vocab_size": int(tokenizer.vocab_size),
    "kind": kind,
  }


def shard_stem(split: str, unit: int, num_units: int) -> str:
  return f"{split}-{unit:05d}-of-{num_units:05d}"


def dumps(obj: Any) -> bytes:
  """The one JSON layout of every file here: sorted keys, so equal content is equal bytes."""
  return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_COPY_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _write_npz(f, arrays: dict[str, np.ndarray]) -> None:
  """np.savez's layout (np.load reads it) with a fixed date, so equal arrays give equal bytes."""
  with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
    for name, a in arrays.items():
      with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), "w", force_zip64=True) as g:
        np.lib.format.write_array(g, np.ascontiguousarray(a), allow_pickle=False)


def _write_records(path: str, docs: TokenizedDocs, dtype: np.dtype) -> None:
  lengths = np.diff(docs.sentence_starts).astype("<u4")
  tokens = docs.tokens.astype(dtype)
  token_starts = docs.sentence_starts[docs.doc_starts]
  writer = array_record_module.ArrayRecordWriter(path, _WRITER_OPTIONS)
  try:
    for d in range(docs.num_docs):
      s0, s1 = docs.doc_starts[d], docs.doc_starts[d + 1]
      header = np.concatenate([[s1 - s0], lengths[s0:s1]]).astype("<u4")
      writer.write(header.tobytes() + tokens[token_starts[d] : token_starts[d + 1]].tobytes())
  finally:
    writer.close()


def _upload(local: str, remote: str) -> None:
  """One object upload, visible only once complete."""
  with open(local, "rb") as src, epath.Path(remote).open("wb") as dst:
    shutil.copyfileobj(src, dst, _COPY_CHUNK)


def write_shard(out: str, stem: str, docs: TokenizedDocs, dtype: str, tmp_dir: str) -> dict | None:
  """Writes one shard's records and index under `out`; its manifest entry, or None for no documents.

  Both files are written to unique temp names in `tmp_dir` (local) first, then renamed into
  `out` (or uploaded, for a gs:// store), so a killed writer leaves only temp files.
  """
  if not docs.num_docs:
    return None
  dt = np.dtype(dtype).newbyteorder("<")
  if docs.num_tokens and int(docs.tokens.max()) > np.iinfo(dt).max:
    raise PretrainError(
      f"token id {int(docs.tokens.max())} does not fit the store's {dtype} tokens"
    )
  os.makedirs(tmp_dir, exist_ok=True)
  tag = uuid.uuid4().hex  # Unique: a retried unit may run twice at once (Beam).
  entry = {
    "file": f"{stem}.array_record",
    "index_file": f"{stem}.index.npz",
    "num_docs": docs.num_docs,
    "num_sentences": docs.num_sentences,
    "num_tokens": docs.num_tokens,
    "max_token_id": docs.max_token_id,
  }
  tmps = {}
  try:
    for key in ("file", "index_file"):
      tmps[key] = os.path.join(tmp_dir, f"{entry[key]}.{tag}.tmp")
    _write_records(tmps["file"], docs, dt)
    index = {
      "sentence_lengths": np.diff(docs.sentence_starts).astype(np.uint32),
      "doc_sentences": np.diff(docs.doc_starts).astype(np.uint32),
    }
    with open(tmps["index_file"], "wb") as f:
      _write_npz(f, index)
    for key, prefix in (("file", ""), ("index_file", "index_")):
      entry[f"{prefix}bytes"] = os.path.getsize(tmps[key])
      entry[f"{prefix}sha256"] = file_sha256(tmps[key])
    for key in ("index_file", "file"):
      if paths.is_remote(out):
        _upload(tmps[key], join(out, entry[key]))
        os.remove(tmps[key])
      else:
        os.replace(tmps[key], join(out, entry[key]))
  finally:
    for tmp in tmps.values():
      if os.path.exists(tmp):
        os.remove(tmp)
  return entry


def build_manifest(tokenizer: dict, corpus: dict, sources: list[dict], units: list[dict]) -> dict:
  """The manifest from the plan's parts and the units' done markers (in unit order)."""
  ranges: dict[str, list] = {s["path"]: [] for s in sources}
  splits = {s: [] for s in SPLITS}
  stats = {"undecodable_lines": 0, "bad_lines": 0}
  for u in units:
    for split in SPLITS:
      if u["shards"].get(split):
        splits[split].append(u["shards"][split])
    for key in stats:
      stats[key] += int(u["stats"].get(key, 0))
    for r in u["stats"].get("ranges", []):
      ranges.setdefault(r["path"], []).append({k: v for k, v in r.items() if k != "path"})
  totals = {}
  for split, shards in splits.items():
    totals[split] = {
      f: sum(s[f] for s in shards) for f in ("num_docs", "num_sentences", "num_tokens", "bytes")
    }
    totals[split]["max_token_id"] = max((s["max_token_id"] for s in shards), default=-1)
    totals[split]["num_shards"] = len(shards)
  return {
    "format_version": FORMAT_VERSION,
    "tokenizer": tokenizer,
    "token_dtype": token_dtype(tokenizer["vocab_size"]),
    "corpus": corpus,
    "sources": [
      dict(s, ranges=sorted(ranges.get(s["path"], []), key=lambda r: r["start"])) for s in sources
    ],
    "splits": splits,
    "totals": totals,
    "stats": stats,
  }


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  file: str
  index_file: str
  num_docs: int
  num_sentences: int
  num_tokens: int
  max_token_id: int
  bytes: int
  sha256: str
  index_bytes: int
  index_sha256: str

  @classmethod
  def from_json(cls, d: dict) -> "ShardInfo":
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


class ShardDocuments:
  """One shard as `Documents`: the index read on first use, records only when `take` needs them.

  Thread-safe: grain's reader threads share one instance (and one ArrayRecord reader).
  """

  def __init__(self, store: "Store", info: ShardInfo):
    self._store = store
    self.info = info
    self._dtype = np.dtype(store.manifest["token_dtype"]).newbyteorder("<")
    self._lock = threading.Lock()
    self._layout = None  # (sentence_starts, doc_starts, doc_token_starts)
    self._reader = None

  def __repr__(self) -> str:
    return f"ShardDocuments({self._store.name}/{self.info.file}, docs={self.info.num_docs})"

  @property
  def num_docs(self) -> int:
    return self.info.num_docs

  @property
  def num_sentences(self) -> int:
    return self.info.num_sentences

  @property
  def num_tokens(self) -> int:
    return self.info.num_tokens

  @property
  def max_token_id(self) -> int:
    return self.info.max_token_id

  @property
  def sentence_starts(self) -> np.ndarray:
    return self._index()[0]

  @property
  def doc_starts(self) -> np.ndarray:
    return self._index()[1]

  def _index(self):
    if self._layout is None:
      with self._lock:
        if self._layout is None:
          self._layout = self._read_index()
    return self._layout

  def _read_index(self):
    path = join(self._store.path, self.info.index_file)
    try:
      with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as z:
        lengths, per_doc = z["sentence_lengths"], z["doc_sentences"]
    except FileNotFoundError:
      raise PretrainError(
        f"token store {self._store.path}: {self.info.index_file} is missing"
      ) from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
      raise PretrainError(
        f"token store {self._store.path}: {self.info.index_file} is unreadable: {e}"
      ) from None
    sentence_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    doc_starts = np.concatenate([[0], np.cumsum(per_doc, dtype=np.int64)]).astype(np.int64)
    if (len(lengths), len(per_doc), sentence_starts[-1]) != (
      self.num_sentences,
      self.num_docs,
      self.num_tokens,
    ) or doc_starts[-1] != self.num_sentences:
      raise PretrainError(
        f"token store {self._store.path}: {self.info.index_file} does not match the "
        "manifest's counts"
      )
    for a in (sentence_starts, doc_starts):
      a.flags.writeable = False
    return sentence_starts, doc_starts, sentence_starts[doc_starts]

  def _records(self) -> array_record_module.ArrayRecordReader:
    if self._reader is None:
      with self._lock:
        if self._reader is None:
          local = self._store.local_file(self.info.file, self.info.bytes, self.info.sha256)
          self._reader = array_record_module.ArrayRecordReader(local, _READER_OPTIONS)
    return self._reader

  def take(self, positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions)
    flat = positions.reshape(-1).astype(np.int64)
    if not flat.size:
      return np.zeros(positions.shape, np.int32)
    if flat.min() < 0 or flat.max() >= self.num_tokens:
      raise IndexError(
        f"token positions {flat.min()}..{flat.max()} outside [0, {self.num_tokens}) "
        f"of {self.info.file}"
      )
    _, _, doc_tokens = self._index()
    doc = np.searchsorted(doc_tokens, flat, side="right") - 1
    unique, inverse = np.unique(doc, return_inverse=True)
    records = self._records().read(unique.tolist())
    parts = []
    for d, r in zip(unique, records):
      n = int.from_bytes(r[:4], "little")
      part = np.frombuffer(r, self._dtype, offset=4 + 4 * n)
      if len(part) != doc_tokens[d + 1] - doc_tokens[d]:
        raise PretrainError(
          f"token store {self._store.path}: record {d} of {self.info.file} holds "
          f"{len(part)} tokens, its index says {doc_tokens[d + 1] - doc_tokens[d]}"
        )
      parts.append(part)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    tokens = np.concatenate(parts)
    out = tokens[offsets[inverse.reshape(-1)] + flat - doc_tokens[doc]].astype(np.int32)
    return out.reshape(positions.shape)


def _sizes(path: str, names: list[str]) -> dict[str, int]:
  """The sizes of the files in `names` that exist (one listing for a bucket)."""
  if not paths.is_remote(path):
    return {n: os.path.getsize(join(path, n)) for n in names if os.path.isfile(join(path, n))}
  import fsspec  # pylint: disable=g-import-not-at-top

  fs, root = fsspec.core.url_to_fs(path)
  try:
    listing = fs.ls(root, detail=True)
  except FileNotFoundError:
    listing = []
  wanted = set(names)
  return {
    os.path.basename(e["name"].rstrip("/")): int(e["size"])
    for e in listing
    if os.path.basename(e["name"].rstrip("/")) in wanted
  }


class Store:
  """A finished token store (see `open_store`)."""

  def __init__(self, path: str, manifest: dict, manifest_sha256: str):
    self.path = path
    self.manifest = manifest
    self.manifest_sha256 = manifest_sha256
    self._shards = {s: [ShardInfo.from_json(d) for d in manifest["splits"][s]] for s in SPLITS}
    # Shards in use are shared; one no builder holds any more is freed with its index (a store may have
    # thousands of shards, and a run reads a few at a time).
    self._documents: "weakref.WeakValueDictionary[tuple[str, int], ShardDocuments]" = (
      weakref.WeakValueDictionary()
    )
    self._lock = threading.Lock()

  @property
  def name(self) -> str:
    return os.path.basename(self.path.rstrip("/"))

  def __repr__(self) -> str:
    return f"Store({self.path!r})"

  def _check_split(self, split: str) -> None:
    if split not in SPLITS:
      raise PretrainError(f"split {split!r} is unknown; a token store has {', '.join(SPLITS)}")

  def shards(self, split: str) -> list[ShardInfo]:
    self._check_split(split)
    return list(self._shards[split])

  def totals(self, split: str) -> dict:
    self._check_split(split)
    return dict(self.manifest["totals"][split])

  def documents(self, split: str, i: int) -> ShardDocuments:
    self._check_split(split)
    if not 0 <= i < len(self._shards[split]):
      raise PretrainError(
        f"token store {self.path} has {len(self._shards[split])} {split} shards, not {i + 1}"
      )
    with self._lock:
      docs = self._documents.get((split, i))
      if docs is None:
        docs = self._documents[(split, i)] = ShardDocuments(self, self._shards[split][i])
      return docs

  def num_tokens(self, split: str) -> int:
    return int(self.totals(split)["num_tokens"])

  def open_tokenizer(self):
    """The tokenizer the store was prepared with (its copy in the store), checked."""
    from pretrain.data import tokenizer_files  # pylint: disable=g-import-not-at-top

    files = self.manifest["tokenizer"].get("files") or []
    if not files:
      raise PretrainError(
        f"token store {self.path} holds no copy of its tokenizer; set tokenizer.path"
      )
    local = [self.local_file(f["file"], f["bytes"], f["sha256"]) for f in files]
    for f, p in zip(files, local):
      if not os.path.isfile(p):
        raise PretrainError(f"token store {self.path}: {f['file']} is missing")
    tokenizer = tokenizer_files.open_tokenizer(local[0])
    self.check_tokenizer(tokenizer)
    return tokenizer

  def check_tokenizer(self, tokenizer) -> None:
    """Refuses a run whose tokenizer is not the one the store was tokenized with."""
    want = self.manifest["tokenizer"]
    if (
      tokenizer.fingerprint != want["fingerprint"]
      or int(tokenizer.vocab_size) != want["vocab_size"]
    ):
      raise PretrainError(
        f"token store {self.path} was tokenized with the {want['kind']} tokenizer "
        f"{want['fingerprint'][:12]} (vocab {want['vocab_size']}), but this run's tokenizer "
        f"{getattr(tokenizer, 'path', '')} is {tokenizer.fingerprint[:12]} (vocab {tokenizer.vocab_size}); "
        "use the store's tokenizer, or prepare a store with this one"
      )

  def local_file(self, name: str, size: int, sha256: str) -> str:
    """A shard file as a local path: the store's own, or (gs://) a verified copy in the host's cache."""
    if not paths.is_remote(self.path):
      return os.path.join(self.path, name)
    dest = os.path.join(paths.cache_dir(), "store-cache", self.manifest_sha256[:16], name)
    if os.path.isfile(dest) and os.path.getsize(dest) == size:
      return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(
      dir=os.path.dirname(dest), prefix=f".{os.path.basename(name)}.", suffix=".tmp"
    )
    try:
      h = hashlib.sha256()
      with os.fdopen(fd, "wb") as dst, epath.Path(join(self.path, name)).open("rb") as src:
        while chunk := src.read(_COPY_CHUNK):
          h.update(chunk)
          dst.write(chunk)
      got = os.path.getsize(tmp)
      if got != size or h.hexdigest() != sha256:
        raise PretrainError(
          f"token store {self.path}: downloaded {name} has {got} bytes and sha256 "
          f"{h.hexdigest()[:12]}; the manifest says {size} bytes, {sha256[:12]}"
        )
      if not (
        os.path.isfile(dest) and os.path.getsize(dest) == size
      ):  # Another process may have won.
        os.replace(tmp, dest)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return dest


def read_manifest(path: str) -> tuple[dict, bytes] | None:
  """The manifest of the store at `path` and its bytes; None when there is none (unfinished)."""
  try:
    raw = read_bytes(join(path, MANIFEST))
  except FileNotFoundError:
    return None
  try:
    manifest = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PretrainError(
      f"{join(path, MANIFEST)} is not valid JSON ({e}); prepare the store again"
    ) from None
  if not isinstance(manifest, dict):
    raise PretrainError(f"{join(path, MANIFEST)} is not a token store manifest")
  return manifest, raw


def open_store(path: str) -> Store:
  """The finished store at `path`, checked: its format, and every shard file there at its size."""
  path = os.fspath(path)
  if not paths.is_remote(path):
    path = os.path.expanduser(path)
  got = read_manifest(path)
  if got is None:
    raise PretrainError(
      f"{path} is not a finished token store (no {MANIFEST}); run "
      f"python -m pretrain.prepare --config=... --out={path}"
    )
  manifest, raw = got
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise PretrainError(
      f"token store {path} has format {version!r}, this code reads {FORMAT_VERSION!r}; "
      "prepare it again with python -m pretrain.prepare"
    )
  try:
    shards = [ShardInfo.from_json(d) for s in SPLITS for d in manifest["splits"][s]]
    np.dtype(manifest["token_dtype"])
    if not isinstance(manifest["tokenizer"]["fingerprint"], str):
      raise TypeError("tokenizer.fingerprint")
  except (KeyError, TypeError) as e:
    raise PretrainError(f"{join(path, MANIFEST)} lacks {e}; prepare the store again") from None
  expected = {}
  for s in shards:
    expected[s.file], expected[s.index_file] = s.bytes, s.index_bytes
  sizes = _sizes(path, list(expected))
  for name, size in expected.items():
    if name not in sizes:
      raise PretrainError(f"token store {path}: shard {name} is missing")
    if sizes[name] != size:
      how = "is truncated" if sizes[name] < size else "is larger than written"
      raise PretrainError(
        f"token store {path}: shard {name} {how}: {sizes[name]} bytes, the manifest says {size}"
      )
  return Store(path, manifest, hashlib.sha256(raw).hexdigest())
