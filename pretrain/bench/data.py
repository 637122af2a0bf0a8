"""The data path: preparing a token store against HF `datasets`, and what a training process pays for it.

  python -m pretrain.bench.data --sizes_mb=10,100,1000 --workdir=/tmp/bench_data

Per size, a BERT-format corpus: the embedded corpus (CPython's docs, ~1.4 MB) repeated, each copy shuffled,
in files of <= 64 MB; one sentencepiece tokenizer (trained once on the embedded corpus) for every size.
1. `prepare(..., num_workers=cores)` into a fresh folder vs HF `datasets` (`load_dataset("text")`, then
   `.map(batched=True, num_proc=cores)` encoding every line with the same model), in MB of text per second;
2. a fresh training process (bert_tiny on the store): seconds to its first batch and to the end of its
   first step, peak RSS (VmHWM), RssAnon/RssFile; and the old in-memory start-up
   (`tokenize_documents(load_corpus(...).train)`), its seconds and peak RSS;
3. `BatchStream` examples/s over the store vs the in-memory documents, and the bert_base chips
   (TPU v5p, H100 at MFU 0.5) that feeds.
MB is 2**20 bytes. Corpora in --workdir are reused; stores and `datasets` caches are made afresh (their
wall time is the measurement) unless --noprepare. --profile: where one unit's and 20 batches' time goes.
"""

import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import types

from absl import app
from absl import flags
import numpy as np

from pretrain import ablate
from pretrain import cli
from pretrain.bench import common
from pretrain.bench import data_children as children
from pretrain.bench.data_report import CHIPS, format_tables
from pretrain.data import corpus as corpus_lib
from pretrain.data import prepare as prepare_lib
from pretrain.data import special_tokens
from pretrain.data import store as store_lib
from pretrain.data import tokenized as tokenized_lib
from pretrain.errors import PretrainError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MB = children.MB
FILE_BYTES = 64 << 20
_MARK = "BENCH_DATA_RESULT "
_MAX_OLD_PATH_MIB = 12 * 1024  # The old in-memory path is skipped where it would need more.
_SEQS = ((128, 20), (512, 80))  # bert_base's two phases: (max_seq_length, max_predictions_per_seq).


def write_corpus(folder: str, size_mb: float, seed: int = 0, file_bytes: int = FILE_BYTES) -> dict:
  """The embedded corpus repeated to `size_mb` (each copy shuffled), in BERT format; reused if present."""
  want = {"size_mb": size_mb, "seed": seed, "file_bytes": file_bytes, "layout": 2}
  meta_path = os.path.join(folder, "corpus.json")
  if os.path.isfile(meta_path):
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
    if {k: meta.get(k) for k in want} == want and all(os.path.isfile(p) for p in meta["files"]):
      return meta
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  docs = [("\n".join(d) + "\n\n").encode("utf-8") for d in corpus_lib.embedded_documents()]
  target, total, copies, files, out, written = int(size_mb * MB), 0, 0, [], None, 0
  while total < target:
    for i in np.random.default_rng([seed, copies]).permutation(len(docs)):
      if out is None or (
        written and written + len(docs[i]) > file_bytes
      ):  # A file is one input unit.
        if out:
          out.close()
        files.append(os.path.join(folder, f"part-{len(files):05d}.txt"))
        out, written = open(files[-1], "wb"), 0
      out.write(docs[i])
      written += len(docs[i])
      total += len(docs[i])
      if total >= target:
        break
    copies += 1
  out.close()
  meta = dict(want, files=files, bytes=total, copies=copies, embedded_docs=len(docs))
  with open(meta_path, "w", encoding="utf-8") as f:
    json.dump(meta, f)
  return meta


def bench_tokenizer(vocab_size: int):
  """The one tokenizer of every size: trained (once, cached) on the embedded corpus."""
  return prepare_lib.resolve_tokenizer(
    {"source": "embedded", "heldout_fraction": 0.02},
    {"vocab_size": int(vocab_size), "model_type": "unigram"},
  )


def time_prepare(data_cfg: dict, tokenizer, out: str, cores: int, text_bytes: int) -> dict:
  """Wall time of `prepare` into a fresh folder, as MB of text per second."""
  shutil.rmtree(out, ignore_errors=True)
  t0 = time.perf_counter()
  store = prepare_lib.prepare(data_cfg, tokenizer, out, num_workers=cores)
  seconds = time.perf_counter() - t0
  units = len(store.manifest["splits"]["train"])
  mb_per_s = text_bytes / MB / seconds
  return {
    "seconds": seconds,
    "mb_per_s": mb_per_s,
    "mb_per_s_per_core": mb_per_s / cores,
    "units": units,
    "workers": min(cores, units),
    "train_tokens": store.num_tokens("train"),
    "store_mb": sum(s.bytes + s.index_bytes for sp in store_lib.SPLITS for s in store.shards(sp))
    / MB,
  }


def run_child(kind: str, args: dict, env: dict | None = None) -> dict:
  """Runs `python -m pretrain.bench.data --_child=KIND` in a fresh process; its result dict."""
  cmd = [
    sys.executable,
    "-m",
    "pretrain.bench.data",
    f"--_child={kind}",
    f"--_args={json.dumps(args)}",
  ]
  proc = subprocess.run(
    cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **(env or {})), check=False
  )
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
  if proc.returncode or not lines:
    raise PretrainError(f"the {kind} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len(_MARK) :])


def _stream_task(tokenizer, seq: int, predictions: int):
  from pretrain import families  # pylint: disable=g-import-not-at-top

  config = ablate.load_config_file("configs/bert_tiny.py")
  config.data.update(max_seq_length=seq, max_predictions_per_seq=predictions)
  return families.get_task(config, tokenizer)


def bench_streams(
  store_path: str, data_cfg: dict, *, batch: int = 256, threads: int = 2, batches: int = 50
) -> list[dict]:
  """Examples/s over the store's example_source and over the in-memory TokenizedDocs, per sequence length."""
  from pretrain.bench import pipeline  # pylint: disable=g-import-not-at-top
  from pretrain.data import sources  # pylint: disable=g-import-not-at-top

  tokenizer, stores = sources.open_stores({"source": "prepared", "paths": store_path}, {"path": ""})
  docs = tokenized_lib.tokenize_documents(corpus_lib.load_corpus(data_cfg).train, tokenizer)
  rows = []
  for seq, predictions in _SEQS:
    task = _stream_task(tokenizer, seq, predictions)
    rate = lambda source: pipeline.stream_rate(source, batch, threads=threads, batches=batches)
    rows.append(
      {
        "seq": seq,
        "store": rate(sources.example_source(task, stores, "train", 0)),
        "in_memory": rate(task.examples(docs, seed=0)),
      }
    )
  return rows


def top_functions(fn, top: int = 8) -> dict:
  """cProfile of fn(): its wall seconds and the `top` functions by own time, with their share of it."""
  prof = cProfile.Profile()
  t0 = time.perf_counter()
  prof.runcall(fn)
  wall = time.perf_counter() - t0
  stats = sorted(pstats.Stats(prof).stats.items(), key=lambda kv: -kv[1][2])[:top]
  return {
    "seconds": wall,
    "top": [
      {
        "function": f"{os.path.basename(f)}:{line}({name})",
        "calls": v[1],
        "seconds": v[2],
        "share": v[2] / wall,
      }
      for (f, line, name), v in stats
    ],
  }


def profile(workdir: str, data_cfg: dict, tokenizer, store_path: str) -> dict:
  """Where the time goes: the first prepare unit (`run_unit`, in this process) and 20 store batches."""
  from pretrain.data import sources  # pylint: disable=g-import-not-at-top

  plan, units = prepare_lib.make_plan(data_cfg, tokenizer, prepare_lib.DEFAULT_UNIT_BYTES)
  out = os.path.join(workdir, "profile-unit")
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(os.path.join(out, prepare_lib.WORK))
  corpus_json = json.dumps(prepare_lib.corpus_config(data_cfg))
  unit = top_functions(
    lambda: prepare_lib.run_unit(
      plan["units"][0], corpus_json, tokenizer.path, tokenizer.fingerprint, out, len(units)
    )
  )
  shutil.rmtree(out, ignore_errors=True)
  unit["mb"] = units[0].num_bytes / MB
  tok, stores = sources.open_stores({"source": "prepared", "paths": store_path}, {"path": ""})
  source = sources.example_source(_stream_task(tok, 128, 20), stores, "train", 0)
  rows = lambda i: np.arange(i * 256, (i + 1) * 256, dtype=np.int64)
  source.batch(rows(0))
  batches = top_functions(lambda: [source.batch(rows(i)) for i in range(1, 21)])
  return {"prepare_unit": unit, "store_batches": batches}


def consumption() -> list[dict]:
  """Examples/s one chip's bert_base step consumes at MFU 0.5, per chip kind and sequence length."""
  from pretrain import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from pretrain import families  # pylint: disable=g-import-not-at-top

  out = []
  for seq, predictions in _SEQS:
    config = ablate.load_config_file("configs/bert_base.py")
    config.data.update(max_seq_length=seq, max_predictions_per_seq=predictions)
    task = families.get_task(config, special_tokens.StandInTokenizer(config.tokenizer.vocab_size))
    flops = task.train_flops_per_example()
    for chip, platform, kind in CHIPS:
      device = types.SimpleNamespace(platform=platform, device_kind=kind)
      peak = metrics_lib.peak_flops_per_device(config.metrics, device)
      out.append(
        {
          "chip": chip,
          "seq": seq,
          "peak_flops": peak,
          "flops_per_example": flops,
          "examples_per_s": 0.5 * peak / flops,
        }
      )
  return out


def run(
  sizes_mb,
  workdir: str,
  *,
  vocab_size: int = 8192,
  num_workers: int = 0,
  steps: int = 2,
  stream_sizes_mb=(10, 100),
  stream_batches: int = 50,
  do_prepare: bool = True,
  do_profile: bool = False,
  train_overrides: dict | None = None,
  log=lambda s: None,
) -> dict:
  """Every measurement, as one JSON-able dict."""
  cores = num_workers or os.cpu_count() or 1
  sizes_mb = sorted(float(s) for s in sizes_mb)
  os.makedirs(workdir, exist_ok=True)
  log(f"tokenizer (vocab {vocab_size}) on the embedded corpus ...")
  tokenizer = bench_tokenizer(vocab_size)
  results = {
    "date": time.strftime("%Y-%m-%d %H:%M"),
    "cores": cores,
    "vocab_size": tokenizer.vocab_size,
    "corpus": "the embedded corpus (CPython's docs) repeated, each copy shuffled",
    "sizes": [],
    "consumption": consumption(),
  }
  for size in sizes_mb:
    tag = f"{size:g}mb"
    corpus = write_corpus(os.path.join(workdir, f"corpus-{tag}"), size)
    row = {
      "size_mb": size,
      "text_bytes": corpus["bytes"],
      "files": len(corpus["files"]),
      "copies": corpus["copies"],
    }
    data_cfg = {"source": "text", "paths": ",".join(corpus["files"]), "heldout_fraction": 0.02}
    store = os.path.join(workdir, f"store-{tag}")
    if do_prepare or store_lib.read_manifest(store) is None:
      log(f"{tag}: prepare ({cores} workers) ...")
      row["prepare"] = time_prepare(data_cfg, tokenizer, store, cores, corpus["bytes"])
      log(f"{tag}: HF datasets load_dataset + map (num_proc {cores}) ...")
      cache = os.path.join(workdir, f"hf-cache-{tag}")
      shutil.rmtree(cache, ignore_errors=True)
      hf = run_child(
        "datasets",
        {
          "files": corpus["files"],
          "cores": cores,
          "cache_dir": cache,
          "model_path": tokenizer.path,
        },
        env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
      )
      shutil.rmtree(cache, ignore_errors=True)
      hf["mb_per_s"] = corpus["bytes"] / MB / hf["seconds"]
      hf["mb_per_s_per_core"] = hf["mb_per_s"] / cores
      row["datasets"] = hf
      row["prepare_over_datasets"] = row["prepare"]["mb_per_s"] / hf["mb_per_s"]
    log(f"{tag}: training process on the store ...")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="train-") as run_dir:
      row["train"] = run_child(
        "train",
        {"store": store, "steps": steps, "workdir": run_dir, "overrides": train_overrides or {}},
      )
    prev = [r["in_memory"] for r in results["sizes"] if "peak_rss_mib" in r.get("in_memory", {})]
    estimate = (
      (
        (prev[-1]["peak_rss_mib"] - prev[-1]["base_rss_mib"]) * size / prev[-1]["size_mb"]
        + prev[-1]["base_rss_mib"]
      )
      if prev
      else 6 * corpus["bytes"] / MB
    )
    if estimate > _MAX_OLD_PATH_MIB:
      row["in_memory"] = {
        "skipped": f"estimated peak RSS {estimate:,.0f} MiB > {_MAX_OLD_PATH_MIB:,} MiB"
      }
    else:
      log(f"{tag}: the old in-memory path ...")
      row["in_memory"] = dict(
        run_child("inmemory", {"data_cfg": data_cfg, "model_path": tokenizer.path}), size_mb=size
      )
    if size in [float(s) for s in stream_sizes_mb]:
      log(f"{tag}: batch streams ...")
      row["streams"] = bench_streams(store, data_cfg, batches=stream_batches)
    results["sizes"].append(row)
  if do_profile:
    log(f"{tag}: profiling one prepare unit and 20 store batches ...")
    results["profile"] = profile(workdir, data_cfg, tokenizer, store)
  first, last = results["sizes"][0]["train"], results["sizes"][-1]["train"]
  for r in results["sizes"]:
    for k in ("peak_rss", "peak_rss_first_batch"):
      r["train"][f"{k}_increase"] = r["train"][f"{k}_mib"] / first[f"{k}_mib"] - 1
  growth = last["peak_rss_increase"]
  results["targets"] = {
    "peak_rss_increase": growth,
    "rss_met": growth < 0.05,
    "peak_rss_first_batch_increase": last["peak_rss_first_batch_increase"],
    "first_batch_s": last["first_batch_s"],
    "startup_met": last["first_batch_s"] < 10,
  }
  return results


_CHILDREN = {
  "datasets": children.child_datasets,
  "train": children.child_train,
  "inmemory": children.child_inmemory,
}


def define_flags() -> None:
  flags.DEFINE_list("sizes_mb", ["10", "100", "1000"], "Corpus sizes, MB of text (2^20 bytes).")
  flags.DEFINE_string("workdir", "", "Where corpora and stores go (default: a new temp dir).")
  flags.DEFINE_integer("vocab_size", 8192, "Pieces of the sentencepiece tokenizer.")
  flags.DEFINE_integer("num_workers", 0, "Processes for prepare and datasets.map (0: all cores).")
  flags.DEFINE_integer("steps", 2, "Train steps of each training process.")
  flags.DEFINE_list("stream_sizes_mb", ["10", "100"], "Sizes whose batch streams are timed.")
  flags.DEFINE_bool(
    "prepare", True, "Time prepare and datasets (off: reuse the stores in --workdir)."
  )
  flags.DEFINE_bool(
    "profile", False, "cProfile one prepare unit and 20 store batches of the largest size."
  )
  flags.DEFINE_string("_child", "", "Internal: run one measurement in this process.")
  flags.DEFINE_string("_args", "{}", "Internal: the child's arguments, JSON.")


def main(argv):
  del argv
  f = flags.FLAGS
  if f._child:  # pylint: disable=protected-access
    cli.quiet_library_logs()
    result = _CHILDREN[f._child](json.loads(f._args))  # pylint: disable=protected-access
    print(_MARK + json.dumps(result), flush=True)
    return
  workdir = f.workdir or tempfile.mkdtemp(prefix="bench-data-")
  common.run_main(
    lambda: run(
      [float(s) for s in f.sizes_mb],
      workdir,
      vocab_size=f.vocab_size,
      num_workers=f.num_workers,
      steps=f.steps,
      do_prepare=f.prepare,
      do_profile=f.profile,
      stream_sizes_mb=[float(s) for s in f.stream_sizes_mb],
      log=common.log,
    ),
    format_tables,
    json_out="-",
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
