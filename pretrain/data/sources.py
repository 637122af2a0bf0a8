"""Where a run's examples come from: token stores, mixed by weight, read by global example index.

  data.source=prepared, data.paths=DIR[,DIR...]   stores made by `python -m pretrain.prepare`
  data.mixture='DIR=W,DIR=W'                       several stores with weights (e.g. BERT's 1:1)
  data.source=embedded|text|jsonl                  small corpora, prepared automatically into the
                                                   cache on first use (up to data.auto_prepare_max_mb)

Every shard of every store is one component of one `mixture.MixtureSource`:
a store's weight is split over its shards by their token counts, each shard is
an endless example stream of the task's builder (pretrain/families), and global
example i goes to the shard the mixture assigns, in runs of data.mixture_run_length
consecutive examples (a process stays on a shard for several steps). Nothing but the manifests is
read at start-up; a shard's index is read when the first example needs it and
its tokens document by document (pretrain/data/store.py). A store of one shard
(every small corpus) gives exactly the examples of the shard alone.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np

from pretrain import config as config_lib
from pretrain.data import corpus as corpus_lib
from pretrain.data import mixture
from pretrain.data import prepare as prepare_lib
from pretrain.data import store as store_lib
from pretrain.data.tokenizer_files import open_tokenizer
from pretrain.errors import PretrainError
from pretrain.paths import cache_dir

_logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
# Seeds of shards after the first: far from the small seeds users pick, so that shard k's stream
# never equals another run's shard 0.
_SHARD_SEED_STRIDE = 1_000_003


@dataclasses.dataclass(frozen=True)
class WeightedStore:
  store: Any  # store_lib.Store
  weight: float
  name: str = ""  # In metrics: the store folder's name, or its whole path where two names repeat.


def _split_paths(value) -> list[str]:
  items = value.split(",") if isinstance(value, str) else list(value or ())
  return [p.strip() for p in items if p and p.strip()]


def parse_mixture(spec: str) -> list[tuple[str, float]]:
  """'DIR=W,DIR=W' -> [(DIR, W), ...]; every weight a positive number."""
  out = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    path, sep, weight = item.rpartition("=")
    if not sep or not path:
      raise PretrainError(
        f"data.mixture entry {item!r} must be PATH=WEIGHT (e.g. gs://b/wiki=1,gs://b/books=1)"
      )
    try:
      w = float(weight)
    except ValueError:
      raise PretrainError(f"data.mixture weight {weight!r} of {path} is not a number") from None
    if not np.isfinite(w) or w <= 0:
      raise PretrainError(
        f"data.mixture weight of {path} is {weight}: weights must be positive numbers"
      )
    out.append((path, w))
  if not out:
    raise PretrainError("data.mixture is set but names no store")
  return out


def auto_store_path(data_cfg: Any, tokenizer) -> str:
  """Where a small corpus is prepared in the cache: keyed by its text, the tokenizer and the split."""
  key = json.dumps(
    [
      store_lib.FORMAT_VERSION,
      corpus_lib.corpus_fingerprint(data_cfg),
      tokenizer.fingerprint,
      float(config_lib.field(data_cfg, "heldout_fraction", 0.02)),
    ]
  )
  return os.path.join(cache_dir(), "stores", hashlib.sha256(key.encode()).hexdigest()[:16])


@contextlib.contextmanager
def _host_lock(path: str):
  """One process per host prepares a cached store (or trains a cached tokenizer); the others wait for it."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a+b") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _auto_prepare(data_cfg: Any, tok_cfg: Any):
  """(tokenizer, store) of a small raw corpus, prepared once into the cache."""
  limit_mb = float(config_lib.field(data_cfg, "auto_prepare_max_mb", 1024))
  with _host_lock(os.path.join(cache_dir(), "stores", "prepare.lock")):
    if config_lib.field(data_cfg, "source") != "embedded":
      _, sources = corpus_lib.plan_units(data_cfg)
      size_mb = sum(s["size"] for s in sources) / 2**20
      if size_mb > limit_mb:
        raise PretrainError(
          f"the corpus is {size_mb:,.0f} MB, more than data.auto_prepare_max_mb={limit_mb:g} prepares on "
          "the fly: prepare it once with `python -m pretrain.prepare --config=... --out=DIR` and train with "
          "--config.data.source=prepared --config.data.paths=DIR"
        )
    tokenizer = prepare_lib.resolve_tokenizer(data_cfg, tok_cfg)
    out = auto_store_path(data_cfg, tokenizer)
    if not store_lib.exists(store_lib.join(out, store_lib.MANIFEST)):
      _logger.info("preparing the %s corpus into %s", config_lib.field(data_cfg, "source"), out)
    return tokenizer, prepare_lib.prepare(
      data_cfg, tokenizer, out
    )  # All cores; one unit runs in-process.


def _store_tokenizer(store, tok_cfg: Any):
  """The run's tokenizer: tokenizer.path if set, else the one the store was prepared with."""
  path = config_lib.field(tok_cfg, "path", "")
  return open_tokenizer(path) if path else store.open_tokenizer()


def open_stores(data_cfg: Any, tok_cfg: Any) -> tuple[Any, list[WeightedStore]]:
  """(tokenizer, weighted stores) of the run's data config; every store checked against the tokenizer."""
  source = config_lib.field(data_cfg, "source", "embedded")
  spec = config_lib.field(data_cfg, "mixture", "")
  if spec and source != "prepared":
    raise PretrainError(
      f"data.mixture names prepared stores; set data.source=prepared (it is {source!r})"
    )
  if source == "prepared":
    paths = _split_paths(config_lib.field(data_cfg, "paths", ""))
    entries = parse_mixture(spec) if spec else [(p, None) for p in paths]
    if spec and paths:
      raise PretrainError("set data.paths or data.mixture, not both")
    if not entries:
      raise PretrainError(
        "data.source=prepared needs data.paths=DIR (a store made by python -m pretrain.prepare)"
      )
    stores = [store_lib.open_store(os.path.expanduser(p)) for p, _ in entries]
    tokenizer = _store_tokenizer(stores[0], tok_cfg)
    # Without explicit weights the stores pool by tokens, as one corpus in several folders.
    weighted = [
      WeightedStore(s, w if w is not None else float(s.num_tokens("train")))
      for s, (_, w) in zip(stores, entries)
    ]
  elif source in corpus_lib.SOURCES:
    tokenizer, store = _auto_prepare(data_cfg, tok_cfg)
    weighted = [WeightedStore(store, 1.0)]
  else:
    raise PretrainError(
      f"data.source={source!r} is unknown; allowed: prepared, {', '.join(corpus_lib.SOURCES)}"
    )
  for w in weighted:
    w.store.check_tokenizer(tokenizer)
  names = [w.store.name for w in weighted]
  weighted = [
    dataclasses.replace(w, name=w.store.name if names.count(w.store.name) == 1 else w.store.path)
    for w in weighted
  ]
  return tokenizer, weighted


def _shard_seed(seed: int, component: int) -> int:
  return int(seed) if component == 0 else (int(seed) + _SHARD_SEED_STRIDE * component) % 2**31


def example_source(
  task,
  stores: list[WeightedStore],
  split: str,
  seed: int,
  *,
  run_length: int = 4096,
  max_open: int = 4,
) -> mixture.MixtureSource:
  """The task's examples over every usable shard of `split`, by global example index."""
  builders, weights, names, skipped = [], [], [], 0
  min_docs, min_tokens = task.min_shard
  for ws in stores:
    shards = ws.store.shards(split)
    usable = [
      i for i, s in enumerate(shards) if s.num_docs >= min_docs and s.num_tokens >= min_tokens
    ]
    skipped += len(shards) - len(usable)
    total = sum(shards[i].num_tokens for i in usable)
    for i in usable:
      k = len(builders)
      builders.append(
        lambda st=ws.store, i=i, k=k: task.examples(
          st.documents(split, i), seed=_shard_seed(seed, k)
        )
      )
      weights.append(ws.weight * shards[i].num_tokens / total)
      names.append(ws.name or ws.store.name)
  if skipped:
    _logger.warning(
      "%s split: %d shard(s) too small for the %s task (< %d documents or < %d tokens) left out",
      split,
      skipped,
      task.name,
      min_docs,
      min_tokens,
    )
  if not builders:
    where = ", ".join(ws.store.path for ws in stores)
    raise PretrainError(
      f"no {split} shard of {where} is large enough for the {task.name} task "
      f"(needs >= {min_docs} documents and >= {min_tokens} tokens)"
    )
  return mixture.MixtureSource(
    builders, weights, seed=int(seed), run_length=run_length, names=names, max_open=max_open
  )


def describe(stores: list[WeightedStore]) -> dict:
  """A JSON-able summary for the run's log."""
  out = {}
  for ws in stores:
    out[ws.name or ws.store.name] = {
      "path": ws.store.path,
      "weight": ws.weight,
      **{f"{s}_{k}": v for s in SPLITS for k, v in ws.store.totals(s).items()},
    }
  return out


def fingerprint(stores: list[WeightedStore]) -> str:
  """A hash of the tokens the run reads: each store's weight and shards (their sha256s), not its path.

  Two hosts that prepared the same corpus into their own caches agree; a different corpus, a
  re-tokenized store or another mixture weight does not.
  """
  parts = [
    [ws.weight, ws.store.manifest["token_dtype"], ws.store.manifest["splits"]] for ws in stores
  ]
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
