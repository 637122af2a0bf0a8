"""Prepares a token store (pretrain/data/store.py) from a raw corpus, once, in parallel.

The corpus is planned into input units (`corpus.plan_units`, ~64 MB each, in corpus order). Each unit
is read, split into train and held-out documents, tokenized and written as its own two shards, then
marked done (`work/unit-00007.json`); the manifest is written last. A killed run, rerun with the same
arguments, redoes only the units without a done marker, and the finished store is byte-identical
however often it was killed and however many workers ran: every file depends only on its unit.

Runners: "local" (processes on this host; one runs in-process) and "beam" (pretrain/data/prepare_beam.py:
Dataflow, Flink, Spark, or Beam's DirectRunner), both running `run_unit`.
"""

import concurrent.futures
import functools
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Iterable, Sequence

from etils import epath
import tqdm

from pretrain import config as config_lib
from pretrain import paths
from pretrain.data import corpus as corpus_lib
from pretrain.data import sentencepiece_tokenizer
from pretrain.data import store as store_lib
from pretrain.data import tokenized as tokenized_lib
from pretrain.data import tokenizer_files
from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)

PLAN = "plan.json"
WORK = "work"
TOKENIZER_DIR = "tokenizer"
DEFAULT_UNIT_BYTES = 64 << 20
DEFAULT_SAMPLE_BYTES = (
  1 << 30
)  # Of text, to train a tokenizer on: bounds its memory at any corpus size.
# Sentencepiece's own bound (sentences, sampled with a fixed seed), used only when the corpus exceeds the
# sample: a smaller corpus trains with exactly the options, and so gives exactly the model, it always did.
DEFAULT_INPUT_SENTENCE_SIZE = 10_000_000
RUNNERS = ("local", "beam")
# Test hook: seconds to sleep between a unit's two shards, so a fault-injection test can kill mid-unit.
_SLEEP_ENV = "PRETRAIN_PREPARE_TEST_SLEEP"
_CORPUS_KEYS = ("source", "paths", "text_field", "heldout_fraction")


def corpus_config(data_cfg: Any) -> dict:
  """The part of the data config that says which documents the corpus holds (sent to workers as JSON)."""
  out = {
    k: config_lib.field(data_cfg, k)
    for k in _CORPUS_KEYS
    if config_lib.field(data_cfg, k) is not None
  }
  if isinstance(out.get("paths"), (list, tuple)):
    out["paths"] = list(out["paths"])
  return out


def split_unit(docs: list[list[str]], fraction: float) -> tuple[list[list[str]], list[list[str]]]:
  """A unit's held-out split: `corpus.split_heldout` (so one unit splits as the whole corpus does);
  a unit of one document trains."""
  if len(docs) >= 2:
    return corpus_lib.split_heldout(docs, fraction)
  return list(docs), []


def sample_sentences(data_cfg: Any, max_bytes: int = DEFAULT_SAMPLE_BYTES) -> Iterable[str]:
  """Train-split sentences of a bounded, document-aligned sample from the start of every unit.

  A corpus smaller than the sample gives exactly its train sentences, in order.
  """
  fraction = corpus_lib.heldout_fraction(data_cfg)  # Before a tokenizer is trained on the rest.
  units, _ = corpus_lib.plan_units(data_cfg)
  per_unit = max(1, int(max_bytes) // max(1, len(units)))
  for unit in units:
    train, _ = split_unit(list(corpus_lib.sample_unit(unit, data_cfg, per_unit)), fraction)
    yield from itertools.chain.from_iterable(train)


def resolve_tokenizer(data_cfg: Any, tok_cfg: Any):
  """tokenizer.path if set; else the one trained on this corpus (cached); else trains it on a sample."""
  path = config_lib.field(tok_cfg, "path", "")
  if path:
    return tokenizer_files.open_tokenizer(path)
  if data_cfg is None:
    raise PretrainError("tokenizer.path is empty and no corpus is configured to train one from")
  cached = tokenizer_files.cached_tokenizer_path(tok_cfg, data_cfg)
  if os.path.isfile(cached):
    try:
      return sentencepiece_tokenizer.SentencePieceTokenizer(cached)
    except PretrainError as e:
      _logger.warning("ignoring a broken cached tokenizer: %s", e)
  return train_on_sample(data_cfg, tok_cfg, cached)


def train_on_sample(data_cfg: Any, tok_cfg: Any, out_path: str):
  """Trains `tok_cfg`'s tokenizer on a bounded sample of the corpus (all of a small one) into `out_path`."""
  sample_bytes = int(config_lib.field(tok_cfg, "sample_bytes", None) or DEFAULT_SAMPLE_BYTES)
  bound = 0
  if config_lib.field(data_cfg, "source", "embedded") != "embedded":
    _, sources = corpus_lib.plan_units(data_cfg)
    if sum(s["size"] for s in sources) > sample_bytes:
      bound = int(
        config_lib.field(tok_cfg, "input_sentence_size", None) or DEFAULT_INPUT_SENTENCE_SIZE
      )
  vocab_size = config_lib.field(tok_cfg, "vocab_size")
  model_type = config_lib.field(tok_cfg, "model_type", "unigram")
  _logger.info(
    "training a %s tokenizer (vocab %d) on up to %d MB of the %s corpus into %s",
    model_type,
    vocab_size,
    sample_bytes >> 20,
    config_lib.field(data_cfg, "source"),
    out_path,
  )
  return sentencepiece_tokenizer.train_tokenizer(
    sample_sentences(data_cfg, sample_bytes),
    vocab_size,
    model_type,
    out_path,
    input_sentence_size=bound,
    source=f"the {config_lib.field(data_cfg, 'source')} corpus "
    f"data.paths={config_lib.field(data_cfg, 'paths', '')!r}",
  )


def _tokenizer_files(tokenizer) -> list[tuple[str, str]]:
  """(local source, name in the store) of the files that make up `tokenizer`."""
  src = tokenizer.path
  if isinstance(tokenizer, sentencepiece_tokenizer.SentencePieceTokenizer):
    return [(src, f"{TOKENIZER_DIR}/tokenizer.model")]
  files = [(src, f"{TOKENIZER_DIR}/{os.path.basename(src)}")]
  from pretrain.data import hf_tokenizer  # pylint: disable=g-import-not-at-top

  config = os.path.join(os.path.dirname(os.path.abspath(src)), hf_tokenizer.CONFIG)
  if os.path.isfile(config):
    files.append((config, f"{TOKENIZER_DIR}/{hf_tokenizer.CONFIG}"))
  return files


def make_plan(data_cfg: Any, tokenizer, unit_bytes: int) -> tuple[dict, list]:
  """The plan (what plan.json holds) and the units."""
  fraction = corpus_lib.heldout_fraction(data_cfg)
  units, sources = corpus_lib.plan_units(data_cfg, unit_bytes=unit_bytes)
  source = units[0].source if units else config_lib.field(data_cfg, "source", "embedded")
  text_field = config_lib.field(data_cfg, "text_field", "text") if source == "jsonl" else ""
  corpus = {
    "source": source,
    "text_field": text_field,
    "heldout_fraction": float(fraction),
    "unit_bytes": int(unit_bytes),
  }
  if source == "embedded":  # Its text is a function of the Python build.
    corpus["embedded"] = f"{corpus_lib.EMBEDDED_VERSION} {sys.version}"
  tok = store_lib.tokenizer_info(tokenizer)
  tok["files"] = []
  for src, name in _tokenizer_files(tokenizer):
    tok["files"].append(
      {"file": name, "bytes": os.path.getsize(src), "sha256": store_lib.file_sha256(src)}
    )
  plan = {
    "format_version": store_lib.FORMAT_VERSION,
    "corpus": corpus,
    "tokenizer": tok,
    "sources": [{"path": s["path"], "size": int(s["size"])} for s in sources],
    "units": [u.to_json() for u in units],
  }
  return plan, units


def _differences(old: dict, new: dict) -> str:
  """What differs between an existing store's plan or manifest and this one, for the error message."""
  out = []
  for key in sorted(set(old.get("corpus", {})) | set(new["corpus"])):
    a, b = old.get("corpus", {}).get(key), new["corpus"].get(key)
    if a != b:
      out.append(f"{key} {a!r}, here {b!r}")
  a, b = old.get("tokenizer", {}), new["tokenizer"]
  if (a.get("fingerprint"), a.get("vocab_size")) != (b["fingerprint"], b["vocab_size"]):
    out.append(
      f"tokenizer {str(a.get('fingerprint'))[:12]} (vocab {a.get('vocab_size')}), here "
      f"{b['fingerprint'][:12]} (vocab {b['vocab_size']})"
    )
  a = [(s.get("path"), s.get("size")) for s in old.get("sources", [])]
  b = [(s["path"], s["size"]) for s in new["sources"]]
  if a != b:
    changed = [p for (p, n), (q, m) in zip(a, b) if (p, n) != (q, m)]
    first = f"; first differing: {changed[0]}" if changed else ""
    out.append(f"sources: {len(a)} file(s), here {len(b)}{first}")
  if not out and old.get("units") is not None and old.get("units") != new["units"]:
    out.append("its units differ")
  if not out and old.get("format_version") != new["format_version"]:
    out.append(f"format {old.get('format_version')!r}, here {new['format_version']!r}")
  return "; ".join(out) or "its plan differs"


def _same_store(manifest: dict, plan: dict) -> bool:
  return (
    manifest.get("format_version") == plan["format_version"]
    and manifest.get("corpus") == plan["corpus"]
    and manifest.get("tokenizer") == plan["tokenizer"]
    and [(s.get("path"), s.get("size")) for s in manifest.get("sources", [])]
    == [(s["path"], s["size"]) for s in plan["sources"]]
  )


def _marker_path(out: str, i: int) -> str:
  return store_lib.join(out, f"{WORK}/unit-{i:05d}.json")


def _tmp_dir(out: str) -> str:
  return os.path.join(out, WORK, "tmp")


def _fetch_tokenizer(url: str, fingerprint: str) -> str:
  """A local copy of the tokenizer at `url` (and its HF config beside it), for workers without `out` mounted."""
  from pretrain.data import hf_tokenizer  # pylint: disable=g-import-not-at-top

  folder = os.path.join(paths.cache_dir(), "store-cache", f"tokenizer-{fingerprint[:16]}")
  os.makedirs(folder, exist_ok=True)
  for src in (url, f"{url.rsplit('/', 1)[0]}/{hf_tokenizer.CONFIG}"):
    try:
      data = store_lib.read_bytes(src)
    except FileNotFoundError:
      if src == url:
        raise PretrainError(f"tokenizer {url} is missing") from None
      continue
    paths.write_atomic(os.path.join(folder, src.rsplit("/", 1)[1]), lambda f, d=data: f.write(d))
  return os.path.join(folder, url.rsplit("/", 1)[1])


@functools.lru_cache(maxsize=4)
def _worker_tokenizer(path: str, fingerprint: str):
  """The tokenizer a worker encodes with (opened once per process), checked against the plan's."""
  local = _fetch_tokenizer(path, fingerprint) if paths.is_remote(path) else path
  tokenizer = tokenizer_files.open_tokenizer(local)
  if tokenizer.fingerprint != fingerprint:
    raise PretrainError(
      f"tokenizer {path} changed while preparing: its fingerprint is "
      f"{tokenizer.fingerprint[:12]}, the plan's {fingerprint[:12]}"
    )
  return tokenizer


def run_unit(
  unit_json: Any, corpus_json: str, tokenizer_path: str, fingerprint: str, out: str, num_units: int
) -> dict:
  """Reads, splits, tokenizes and writes one unit's shards, then its done marker (returned).

  Only JSON-able arguments: it runs in spawned processes and on Beam workers.
  """
  unit = corpus_lib.InputUnit.from_json(unit_json)
  cfg = json.loads(corpus_json)
  tokenizer = _worker_tokenizer(tokenizer_path, fingerprint)
  stats = {"undecodable_lines": 0, "bad_lines": 0}
  docs = list(corpus_lib.read_unit(unit, cfg, stats))
  splits = dict(zip(store_lib.SPLITS, split_unit(docs, float(cfg.get("heldout_fraction", 0.02)))))
  dtype = store_lib.token_dtype(tokenizer.vocab_size)
  remote = paths.is_remote(out)
  tmp = tempfile.mkdtemp(prefix="pretrain-prepare-") if remote else _tmp_dir(out)
  sleep = float(os.environ.get(_SLEEP_ENV) or 0)
  shards = {}
  try:
    for split in store_lib.SPLITS:
      tokenized = tokenized_lib.tokenize_documents(splits[split], tokenizer)
      shards[split] = store_lib.write_shard(
        out, store_lib.shard_stem(split, unit.index, num_units), tokenized, dtype, tmp
      )
      if sleep:
        time.sleep(sleep)
  finally:
    if remote:
      shutil.rmtree(tmp, ignore_errors=True)
  unit_stats = {
    "undecodable_lines": int(stats["undecodable_lines"]),
    "bad_lines": int(stats["bad_lines"]),
    "ranges": [dict(r) for r in stats.get("ranges", [])],
  }
  marker = {
    "index": unit.index,
    "unit": unit_json,
    "input_docs": len(docs),
    "shards": shards,
    "stats": unit_stats,
  }
  paths.write_bytes_atomic(_marker_path(out, unit.index), store_lib.dumps(marker))
  return marker


def _done_markers(out: str, plan: dict) -> dict[int, dict]:
  """The units already done: a marker for this unit, and its shard files there at their sizes."""
  markers = {}
  for i, unit_json in enumerate(plan["units"]):
    try:
      marker = json.loads(store_lib.read_bytes(_marker_path(out, i)))
    except (FileNotFoundError, ValueError):
      continue
    if isinstance(marker, dict) and marker.get("index") == i and marker.get("unit") == unit_json:
      markers[i] = marker
  want = {}
  for m in markers.values():
    for entry in m["shards"].values():
      if entry:
        want[entry["file"]], want[entry["index_file"]] = entry["bytes"], entry["index_bytes"]
  sizes = store_lib._sizes(out, list(want))  # pylint: disable=protected-access
  bad = {n for n, size in want.items() if sizes.get(n) != size}
  return {
    i: m
    for i, m in markers.items()
    if not any(e and (e["file"] in bad or e["index_file"] in bad) for e in m["shards"].values())
  }


def _unit_mb(unit_json: Any) -> float:
  unit = corpus_lib.InputUnit.from_json(unit_json)
  return sum(end - start for _, start, end in unit.ranges) / 2**20


def _run_local(todo: list, args: tuple, num_workers: int, progress) -> None:
  def done(marker_unit):
    progress.update(round(_unit_mb(marker_unit), 3))

  if num_workers <= 1:
    for u in todo:
      run_unit(u, *args)
      done(u)
    return
  ctx = multiprocessing.get_context("spawn")  # No fork: the parent may hold threads (grain, jax).
  with concurrent.futures.ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
    futures = {pool.submit(run_unit, u, *args): u for u in todo}
    try:
      for f in concurrent.futures.as_completed(futures):
        f.result()
        done(futures[f])
    except BaseException:
      pool.shutdown(wait=True, cancel_futures=True)
      raise


def _check_out(out: str, plan: dict) -> bool:
  """Refuses an `out` that holds something else, touching nothing; True when it holds this finished store."""
  got = store_lib.read_manifest(out)
  if got is not None:
    manifest, _ = got
    if _same_store(manifest, plan):
      return True
    raise PretrainError(
      f"{out} holds a finished store of another corpus ({_differences(manifest, plan)}); "
      "choose another --out"
    )
  try:
    old = json.loads(store_lib.read_bytes(store_lib.join(out, PLAN)))
  except FileNotFoundError:
    old = None
  except ValueError:
    raise PretrainError(
      f"{store_lib.join(out, PLAN)} is not valid JSON; choose another --out"
    ) from None
  if old is not None and old != plan:
    raise PretrainError(
      f"{out} holds a partial store of another plan ({_differences(old, plan)}); rerun with "
      "that plan's corpus and tokenizer to finish it, or choose another --out"
    )
  if old is None and not paths.is_remote(out) and os.path.isdir(out) and os.listdir(out):
    raise PretrainError(
      f"{out} is a folder that is not a token store (no {PLAN}); choose a new or empty --out"
    )
  return False


def _finalize(out: str, plan: dict, markers: list[dict]) -> dict:
  manifest_tok = dict(plan["tokenizer"])
  manifest = store_lib.build_manifest(manifest_tok, plan["corpus"], plan["sources"], markers)
  totals, stats = manifest["totals"], manifest["stats"]
  if not totals["train"]["num_docs"] or not totals["heldout"]["num_docs"]:
    docs = sum(m["input_docs"] for m in markers)
    skipped = (
      f"skipped {stats['undecodable_lines']} undecodable line(s) and {stats['bad_lines']} bad "
      "line(s)"
    )
    size = sum(s["size"] for s in plan["sources"])
    names = ", ".join(s["path"] for s in plan["sources"][:3]) + (
      ", ..." if len(plan["sources"]) > 3 else ""
    )
    what = f"the {plan['corpus']['source']} corpus ({len(plan['sources'])} file(s), {size} bytes: {names})"
    if not docs:
      raise PretrainError(f"{what} holds no documents ({skipped})")
    if not totals["train"]["num_docs"]:
      raise PretrainError(f"{what} has no train document after tokenizing ({docs} read; {skipped})")
    raise PretrainError(
      f"{what} has no held-out document: {docs} document(s) read, and a unit holds out a "
      f"document only when it has 2 or more ({skipped}); use a larger unit size"
    )
  return manifest


def _remove_new(out: str, plan: dict, out_existed: bool) -> None:
  """After a failure on input with nothing usable: removes what this run wrote, where it began the store."""
  names = [PLAN] + [f"{WORK}/unit-{i:05d}.json" for i in range(len(plan["units"]))]
  names += [f["file"] for f in plan["tokenizer"]["files"]]
  names += [
    f"{s}-{i:05d}-of-{len(plan['units']):05d}{ext}"
    for s in store_lib.SPLITS
    for i in range(len(plan["units"]))
    for ext in (".array_record", ".index.npz")
  ]
  for name in names:
    p = store_lib.join(out, name)
    if paths.is_remote(p):
      if epath.Path(p).exists():
        epath.Path(p).unlink()
    elif os.path.isfile(p):
      os.remove(p)
  if not paths.is_remote(out):
    for d in (_tmp_dir(out), os.path.join(out, WORK), os.path.join(out, TOKENIZER_DIR), out):
      if os.path.isdir(d) and not os.listdir(d) and (d != out or not out_existed):
        os.rmdir(d)


def _put_tokenizer(out: str, tokenizer) -> None:
  """Copies the tokenizer into the store: a run reads it from there, and so do Beam workers."""
  for src, name in _tokenizer_files(tokenizer):
    with open(src, "rb") as f:
      data = f.read()
    dest = store_lib.join(out, name)
    try:
      if store_lib.read_bytes(dest) == data:
        continue
    except FileNotFoundError:
      pass
    if not paths.is_remote(out):
      os.makedirs(os.path.dirname(dest), exist_ok=True)
    paths.write_bytes_atomic(dest, data)


def prepare(
  data_cfg: Any,
  tokenizer,
  out: str,
  *,
  num_workers: int | None = None,
  unit_bytes: int = DEFAULT_UNIT_BYTES,
  runner: str = "local",
  pipeline_args: Sequence[str] | None = None,
) -> store_lib.Store:
  """Prepares the store of `data_cfg` tokenized by `tokenizer` at `out` (a folder or gs:// URL).

  Idempotent and restartable: an `out` holding this finished store is returned untouched, a partial one
  is finished. An `out` holding anything else is refused before anything is written.
  """
  if runner not in RUNNERS:
    raise PretrainError(f"runner {runner!r} is unknown; allowed: {', '.join(RUNNERS)}")
  if not isinstance(unit_bytes, int) or unit_bytes <= 0:
    raise PretrainError(f"unit_bytes={unit_bytes!r} must be a positive integer")
  out = os.fspath(out)
  if not paths.is_remote(out):
    out = os.path.abspath(os.path.expanduser(out))
  plan, units = make_plan(data_cfg, tokenizer, unit_bytes)
  if _check_out(out, plan):
    _logger.info("%s is already complete", out)
    return store_lib.open_store(out)
  created = not store_lib.exists(store_lib.join(out, PLAN))  # This run begins the store.
  out_existed = paths.is_remote(out) or os.path.isdir(out)
  if not paths.is_remote(out):
    os.makedirs(os.path.join(out, WORK), exist_ok=True)
  if created:
    paths.write_bytes_atomic(store_lib.join(out, PLAN), store_lib.dumps(plan))
  _put_tokenizer(out, tokenizer)
  done = _done_markers(out, plan)
  todo = [u for i, u in enumerate(plan["units"]) if i not in done]
  n = len(units)
  total_mb = sum(_unit_mb(u) for u in plan["units"])
  with tqdm.tqdm(
    total=round(total_mb, 3),
    initial=round(total_mb - sum(_unit_mb(u) for u in todo), 3),
    unit="MB",
    desc=f"prepare {n} unit(s)",
    disable=None,
    file=sys.stderr,
  ) as progress:
    if runner == "beam":
      from pretrain.data import prepare_beam  # pylint: disable=g-import-not-at-top  (Beam is slow to import)

      tok_path = store_lib.join(out, plan["tokenizer"]["files"][0]["file"])
      prepare_beam.run(
        todo,
        (json.dumps(corpus_config(data_cfg)), tok_path, tokenizer.fingerprint, out, n),
        pipeline_args or [],
      )
    else:
      workers = min(num_workers or os.cpu_count() or 1, max(1, len(todo)))
      _run_local(
        todo,
        (json.dumps(corpus_config(data_cfg)), tokenizer.path, tokenizer.fingerprint, out, n),
        workers,
        progress,
      )
  done = _done_markers(out, plan)
  missing = [i for i in range(n) if i not in done]
  if missing:
    raise PretrainError(
      f"{len(missing)} of {n} unit(s) of {out} did not finish (first: unit {missing[0]}); "
      "rerun to finish them"
    )
  try:
    manifest = _finalize(out, plan, [done[i] for i in range(n)])
  except PretrainError:
    if created:
      _remove_new(out, plan, out_existed)
    raise
  paths.write_bytes_atomic(store_lib.join(out, store_lib.MANIFEST), store_lib.dumps(manifest))
  if not paths.is_remote(out):
    shutil.rmtree(
      _tmp_dir(out), ignore_errors=True
    )  # Temp files of killed units: only ours live there.
  return store_lib.open_store(out)
