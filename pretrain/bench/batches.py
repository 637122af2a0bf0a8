"""What the benchmarks time: the config's task, and a batch of it with every position real.

A batch is the task's own: its `examples(docs, seed)` over synthetic documents
(random ids of the tokenizer's non-special pieces, each document one sentence
longer than two examples, so no example is cut short), collated as the data
path collates eval batches (`pipeline.fixed_batches`). What a family needs for
that beyond its task, the data options that keep every example full length and
the tokenizer size its config implies, comes from its `hf_reference` module.
"""

import types

import numpy as np

from pretrain import families
from pretrain.data import pipeline
from pretrain.data import special_tokens
from pretrain.data.tokenized import TokenizedDocs
from pretrain.errors import PretrainError


def family_reference(name: str) -> types.ModuleType:
  """The benchmark's part of family `name`: its `hf_reference` module (see pretrain/bench/reference.py)."""
  return families.family_part(name, "hf_reference")


def bench_task(config, dtype: str | None = None):
  """The config's task on a stand-in tokenizer, `dtype` compute when given, full-length examples."""
  config = config.copy_and_resolve_references()
  ref = family_reference(config.task.name)
  with config.unlocked():
    if dtype:
      config.model.dtype = dtype
    config.data.update(ref.FULL_LENGTH_DATA)
  return families.get_task(config, special_tokens.StandInTokenizer(ref.tokenizer_vocab(config)))


def synthetic_docs(task, num_docs: int, seed: int = 0) -> TokenizedDocs:
  """`num_docs` one-sentence documents of random non-special ids, each as long as two examples."""
  length = 2 * task.tokens_per_example + 2
  ids = np.random.default_rng(seed).choice(task.special.random_ids, num_docs * length)
  return TokenizedDocs(
    ids.astype(np.int32),
    np.arange(0, num_docs * length + 1, length, dtype=np.int64),
    np.arange(num_docs + 1, dtype=np.int64),
  )


def task_batch(task, batch_size: int, seed: int = 0) -> dict:
  """A batch of `batch_size` of the task's examples, with the fields, shapes and dtypes of its dummy batch."""
  source = task.examples(synthetic_docs(task, max(batch_size, 2), seed), seed)
  (batch,) = pipeline.fixed_batches(source, batch_size, 1)
  want = {k: (v.shape, v.dtype) for k, v in task.dummy_batch(batch_size).items()}
  got = {k: (v.shape, v.dtype) for k, v in batch.items()}
  if got != want:
    raise PretrainError(
      f"task {task.name!r}'s examples have the fields {got}; its dummy batch {want}"
    )
  return batch
