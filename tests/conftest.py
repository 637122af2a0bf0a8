"""Shared test setup: 8 fake CPU devices (set before jax is imported anywhere),
a tokenizer cache private to the test session, and a tiny corpus + config."""

import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The two test workers may both load libtpu to compile for TPU targets (no chip is driven); without
# this the second one fails on libtpu's lockfile.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("PRETRAIN_CACHE_DIR", tempfile.mkdtemp(prefix="pretrain-test-cache-"))
# One persistent XLA compilation cache for the session, inherited by the CLI subprocesses the tests
# start: a relaunched tiny run (the kill -9 lives, resumes, multi-process runs) loads its programs
# instead of compiling them again. The thresholds let the tiny programs in.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="pretrain-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# Helper modules that tests import by name from tests/ subfolders (hf_folders, mlm_examples,
# model_checks): on the path once here, and their asserts report values as the tests' own do.
_TESTS = os.path.dirname(os.path.abspath(__file__))
for _folder in ("convert", "families"):
  if os.path.join(_TESTS, _folder) not in sys.path:
    sys.path.insert(0, os.path.join(_TESTS, _folder))
pytest.register_assert_rewrite("hf_folders", "mlm_examples", "model_checks")


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> str:
  """~200 documents of real prose in BERT's format (a sentence per line, blank line between docs)."""
  from pretrain.data.corpus import embedded_documents  # pylint: disable=g-import-not-at-top

  docs = [d for d in embedded_documents() if len(d) >= 4][:200]
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
  return str(path)


def write_memorised_corpus(text_corpus: str, path, sentence: str) -> str:
  """A corpus in which every document of `text_corpus` (its first and last lines) repeats `sentence`."""
  docs = [
    d.split("\n")[:2] for d in open(text_corpus, encoding="utf-8").read().strip().split("\n\n")
  ]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n\n".join("\n".join([sentence, d[0], sentence, d[-1]]) for d in docs) + "\n")
  return str(path)


def make_tiny_config(corpus_path: str):
  """A model small enough to train a few steps in seconds, with every dim divisible by 8."""
  from pretrain.families.bert.config import bert_config  # pylint: disable=g-import-not-at-top

  c = bert_config()
  c.data.update(
    source="text",
    paths=corpus_path,
    max_seq_length=64,
    max_predictions_per_seq=10,
    num_threads=1,
    heldout_fraction=0.05,
  )
  c.tokenizer.vocab_size = 512
  c.model.update(
    hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=64
  )
  c.optimizer.update(learning_rate=1e-3, warmup_steps=2)
  c.train.update(steps=6, batch_size=16, log_every=2)
  c.eval.update(every_steps=3, batch_size=16, num_batches=2)
  c.checkpoint.update(every_steps=3, keep=5, async_save=True)
  c.metrics.progress_bar = False
  return c


@pytest.fixture
def tiny_config(text_corpus):
  return make_tiny_config(text_corpus)


@pytest.fixture(scope="session")
def tiny_config_factory():
  """make_tiny_config, for fixtures that build their own corpus."""
  return make_tiny_config


@pytest.fixture(scope="session")
def memorised_corpus():
  """write_memorised_corpus: prose in which every document repeats one sentence (for sampling tests)."""
  return write_memorised_corpus


class PoisonedTask:
  """`task` whose loss value is unchanged but whose gradients are all inf (or nan) in a marked batch.

  A batch is marked by `mark` as its first input id (BERT's batches start with [CLS]); the loss' own
  value stays finite, so only the gradients show the fault.
  """

  def __init__(self, task, mark: int):
    self._task, self._mark = task, mark

  def __getattr__(self, name):
    return getattr(self._task, name)

  def loss(self, model, params, batch, denominators, **kwargs):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    @jax.custom_vjp
    def poison(x, flag):
      return x

    def fwd(x, flag):
      return x, flag

    def bwd(flag, g):
      return g * jnp.where(flag > 0, jnp.inf, 1.0), jnp.zeros_like(flag)

    poison.defvjp(fwd, bwd)
    loss, sums = self._task.loss(model, params, batch, denominators, **kwargs)
    flag = (batch["input_ids"][0, 0] == self._mark).astype(jnp.float32)
    return poison(loss, flag), sums


@pytest.fixture(scope="session")
def poisoned_task():
  """PoisonedTask(task, mark): a task whose marked batches have non-finite gradients and a finite loss."""
  return PoisonedTask
