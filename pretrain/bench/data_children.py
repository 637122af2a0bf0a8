"""The measurements of pretrain.bench.data that run in a fresh process each (`--_child=KIND`): HF datasets'
preparation, a training process's start-up on a store, the old in-memory start-up."""

import gc
import json
import os
import resource
import time


from pretrain import ablate
from pretrain.data import corpus as corpus_lib
from pretrain.data import tokenized as tokenized_lib
from pretrain.data import tokenizer_files

MB = 1 << 20


def _proc_status() -> dict:
  """RSS parts of this process now, in MiB (from /proc/self/status)."""
  with open("/proc/self/status", encoding="ascii") as f:
    fields = dict(line.split(":", 1) for line in f if ":" in line)
  return {
    k: int(fields[k].split()[0]) / 1024
    for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
  }


def _peak_rss_mib() -> float:
  """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that across fork + exec, so a child's
  starts at its parent's peak (here the bench's, up to GBs), which hides the child's own."""
  return _proc_status()["VmHWM"]


_SP = {}


def hf_encode(batch: dict, model_path: str) -> dict:
  """`datasets.map` function: every line encoded with the sentencepiece model (loaded once per worker)."""
  if model_path not in _SP:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    _SP[model_path] = spm.SentencePieceProcessor(model_file=model_path)
  return {"input_ids": _SP[model_path].encode(batch["text"], out_type=int)}


def child_datasets(a: dict) -> dict:
  """HF datasets: the text files into Arrow, then every line tokenized into its Arrow cache."""
  import datasets  # pylint: disable=g-import-not-at-top
  import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top

  datasets.disable_progress_bars()
  cores, files = int(a["cores"]), a["files"]
  t0 = time.perf_counter()
  ds = datasets.load_dataset(
    "text",
    data_files=files,
    split="train",
    cache_dir=a["cache_dir"],
    num_proc=cores if len(files) > 1 else None,
  )
  t1 = time.perf_counter()
  ds = ds.map(
    hf_encode,
    batched=True,
    num_proc=cores,
    remove_columns=["text"],
    fn_kwargs={"model_path": a["model_path"]},
  )
  t2 = time.perf_counter()
  lengths = pc.list_value_length(ds.data.table.column("input_ids"))
  cache_mb = (
    sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(a["cache_dir"]) for n in ns)
    / MB
  )
  return {
    "load_seconds": t1 - t0,
    "map_seconds": t2 - t1,
    "seconds": t2 - t0,
    "rows": len(ds),
    "tokens": int(pc.sum(lengths).as_py()),
    "cache_mb": cache_mb,
  }


def child_train(a: dict) -> dict:
  """bert_tiny on the store: time to the first batch (measured here, before train) and to the end of the
  first step (train's own metrics), peak RSS and RSS parts at the end."""
  import psutil  # pylint: disable=g-import-not-at-top

  started = psutil.Process().create_time()
  from pretrain import families  # pylint: disable=g-import-not-at-top
  from pretrain import train as train_lib  # pylint: disable=g-import-not-at-top
  from pretrain.data import pipeline  # pylint: disable=g-import-not-at-top
  from pretrain.data import sources  # pylint: disable=g-import-not-at-top

  config = ablate.load_config_file("configs/bert_tiny.py")
  overrides = {
    "data.source": "prepared",
    "data.paths": a["store"],
    "train.steps": int(a["steps"]),
    "train.log_every": 1,
    "eval.every_steps": 0,
    "checkpoint.every_steps": 10**9,
    "metrics.progress_bar": False,
    **a.get("overrides", {}),
  }
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  t0 = time.time()
  tokenizer, stores = sources.open_stores(config.data, config.tokenizer)
  task = families.get_task(config.copy_and_resolve_references(), tokenizer)
  source = sources.example_source(
    task, stores, "train", config.data.seed, run_length=config.data.mixture_run_length
  )
  stream = pipeline.BatchStream(
    source,
    config.train.batch_size,
    num_threads=config.data.num_threads,
    prefetch_batches=config.data.prefetch_batches,
  )
  next(stream)
  t_batch = time.time()
  rss_batch = _peak_rss_mib()
  del stream, source, stores, task
  gc.collect()
  train_lib.train(config, a["workdir"])
  with open(os.path.join(a["workdir"], "run_start.json"), encoding="utf-8") as f:
    train_start = json.load(f)["first_start_time"]
  with open(os.path.join(a["workdir"], "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(l) for l in f]
  step1 = next(r for r in rows if r["step"] == 1 and "wall_seconds" in r)
  compile_s = next(r["compile_seconds"] for r in rows if "compile_seconds" in r)
  status = _proc_status()
  return {
    "first_batch_s": t_batch - started,
    "data_startup_s": t_batch - t0,
    "imports_s": t0 - started,
    "first_step_done_s": train_start + step1["wall_seconds"] - started,
    "compile_s": compile_s,
    "peak_rss_mib": _peak_rss_mib(),
    "peak_rss_first_batch_mib": rss_batch,
    "rss_anon_mib": status["RssAnon"],
    "rss_file_mib": status["RssFile"],
    "rss_shmem_mib": status["RssShmem"],
    "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def child_inmemory(a: dict) -> dict:
  """The old start-up: the whole corpus read and tokenized into memory."""
  tokenizer = tokenizer_files.open_tokenizer(a["model_path"])
  base = _proc_status()["VmRSS"]
  t0 = time.perf_counter()
  docs = tokenized_lib.tokenize_documents(corpus_lib.load_corpus(a["data_cfg"]).train, tokenizer)
  return {
    "seconds": time.perf_counter() - t0,
    "peak_rss_mib": _peak_rss_mib(),
    "base_rss_mib": base,
    "end_rss_mib": _proc_status()["VmRSS"],
    "train_tokens": int(docs.num_tokens),
    "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }
