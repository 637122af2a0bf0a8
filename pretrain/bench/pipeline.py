"""Examples/s of the input pipeline: a BatchStream over an example source, and BERT's against HF's collator."""

import time

import numpy as np

from pretrain import families
from pretrain.bench import reference
from pretrain.data import special_tokens
from pretrain.errors import PretrainError


def _per_second(run, examples: int) -> float:
  t0 = time.perf_counter()
  run()
  return examples / (time.perf_counter() - t0)


def stream_rate(
  source, batch: int, *, threads: int = 2, prefetch: int = 4, batches: int = 50, warmup: int = 5
) -> float:
  """Examples/s of a BatchStream over `source`, after `warmup` batches."""
  from pretrain.data import pipeline  # pylint: disable=g-import-not-at-top

  stream = pipeline.BatchStream(source, batch, num_threads=threads, prefetch_batches=prefetch)
  for _ in range(warmup):
    next(stream)
  return _per_second(lambda: [next(stream) for _ in range(batches)], batches * batch)


def hf_tokenizer_stand_in(vocab_size: int):
  """A transformers fast tokenizer with the project's special ids 0..4 and `vocab_size` pieces."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = {tok: i for i, tok in enumerate(special_tokens.SPECIAL_TOKENS)}
  vocab.update({f"piece{i}": i for i in range(special_tokens.NUM_SPECIAL, vocab_size)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    pad_token="[PAD]",
    unk_token="[UNK]",
    cls_token="[CLS]",
    sep_token="[SEP]",
    mask_token="[MASK]",
  )


def _unmasked_ids(batch: dict) -> np.ndarray:
  """input_ids with the original tokens back at the masked positions (what a collator is given)."""
  ids = batch["input_ids"].copy()
  rows, cols = np.nonzero(batch["masked_lm_weights"] > 0)
  ids[rows, batch["masked_lm_positions"][rows, cols]] = batch["masked_lm_ids"][rows, cols]
  return ids


def bert_pipeline(config, *, batches: int = 200, reference_collator: bool = True) -> dict:
  """Examples/s of BertExamples.batch (one thread), of BatchStream, and of HF's MLM collator.

  BERT only: the figures are BertExamples' and the reference is HF's collator of BERT's MLM fields.
  """
  config = config.copy_and_resolve_references()
  if config.task.name != "bert":
    raise PretrainError(f"--data times BERT's input pipeline only; task.name={config.task.name!r}")
  batch_size = int(config.train.batch_size)
  from pretrain.data import sources  # pylint: disable=g-import-not-at-top

  tokenizer, stores = sources.open_stores(config.data, config.tokenizer)
  task = families.get_task(config, tokenizer)
  examples = sources.example_source(
    task, stores, "train", int(config.data.seed), run_length=int(config.data.mixture_run_length)
  )
  rows = lambda i: np.arange(i * batch_size, (i + 1) * batch_size, dtype=np.int64)
  examples.batch(rows(0))  # Plans the first epoch.
  out = {
    "corpus_train_tokens": sum(ws.store.num_tokens("train") for ws in stores),
    "corpus_source": config.data.source,
    "batch_size": batch_size,
    "batches": batches,
  }
  out["bert_examples_per_sec"] = _per_second(
    lambda: [examples.batch(rows(i)) for i in range(1, batches + 1)], batches * batch_size
  )
  out["batch_stream_per_sec"] = stream_rate(
    examples,
    batch_size,
    threads=config.data.num_threads,
    prefetch=config.data.prefetch_batches,
    batches=batches,
    warmup=1,
  )
  out["batch_stream_threads"] = int(config.data.num_threads)
  if reference_collator and reference.hf_available():
    import transformers  # pylint: disable=g-import-not-at-top

    collator = transformers.DataCollatorForLanguageModeling(
      hf_tokenizer_stand_in(tokenizer.vocab_size), mlm=True, mlm_probability=0.15
    )
    features = [
      [{"input_ids": row.tolist()} for row in _unmasked_ids(examples.batch(rows(i)))]
      for i in range(batches)
    ]
    it = iter(features)
    out["hf_collator_per_sec"] = _per_second(
      lambda: [collator(next(it)) for _ in range(batches)], batches * batch_size
    )
  return out
