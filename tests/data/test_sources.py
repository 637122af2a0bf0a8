"""A run's examples from token stores: the same batches as the in-memory documents, mixtures, resume."""

import os
import sys

import ml_collections
import numpy as np
import pytest

from pretrain import families
from pretrain.data import corpus as corpus_lib
from pretrain.data import pipeline
from pretrain.data import prepare as prepare_lib
from pretrain.data import sources
from pretrain.data.tokenized import tokenize_documents
from pretrain.errors import PretrainError
from pretrain.families.gpt2.config import gpt2_config
from pretrain.families.t5.config import t5_config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from fake_gcs import BUCKET, root_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

fake_gcs = root_fixture()


def _family_config(family: str, data_cfg, tok_cfg) -> ml_collections.ConfigDict:
  """A tiny config of each family on the given corpus."""
  if family in ("bert", "bert_nonsp", "roberta"):
    c = make_tiny_config(data_cfg.paths or "")
    if family == "bert_nonsp":
      c.data.next_sentence_prediction = False
      c.model.nsp_head = False
    if family == "roberta":
      c.task.name = "roberta"
      c.data.next_sentence_prediction = False
      c.model.update(
        nsp_head=False,
        pooler=False,
        position_offset=2,
        max_position_embeddings=66,
        type_vocab_size=1,
      )
    c.data.whole_word_masking = family == "bert"
  elif family.startswith("gpt2"):
    c = gpt2_config()
    c.data.update(max_seq_length=32, packing=family == "gpt2_packed")
    c.model.update(
      vocab_size=0, hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=32
    )
  else:
    c = t5_config()
    c.data.update(inputs_length=32)
    c.model.update(
      vocab_size=0,
      hidden_size=32,
      intermediate_size=64,
      num_heads=2,
      num_layers=1,
      num_decoder_layers=1,
    )
  for k in ("source", "paths", "text_field", "heldout_fraction"):
    c.data[k] = data_cfg[k]
  c.tokenizer.update(
    vocab_size=tok_cfg.vocab_size, model_type=tok_cfg.model_type, path=tok_cfg.path
  )
  return c


FAMILIES = ("bert", "bert_nonsp", "roberta", "gpt2_chunked", "gpt2_packed", "t5")


@pytest.fixture(scope="module", params=["text", "embedded"])
def text_setup(request, text_corpus):
  """(config, tokenizer, auto-prepared stores) of the test's text corpus and of the embedded one."""
  c = make_tiny_config(text_corpus)
  if request.param == "embedded":
    c.data.update(source="embedded", paths="")
  tokenizer, stores = sources.open_stores(c.data, c.tokenizer)
  return c, tokenizer, stores


def _old_examples(task, data_cfg, tokenizer, split, seed):
  """The in-memory path: the whole corpus read and tokenized, one builder over it."""
  c = corpus_lib.load_corpus(data_cfg)
  docs = tokenize_documents(c.train if split == "train" else c.heldout, tokenizer)
  return task.examples(docs, seed=seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_small_corpus_store_gives_the_in_memory_batches(text_setup, family):
  c, tokenizer, stores = text_setup
  cfg = _family_config(family, c.data, c.tokenizer)
  task = families.get_task(cfg, tokenizer)
  assert (
    len(stores) == 1 and len(stores[0].store.shards("train")) == 1
  )  # A small corpus is one shard.
  assert stores[0].store.manifest["corpus"]["source"] == c.data.source
  for split, seed in (("train", 3), ("heldout", 4)):
    new = sources.example_source(task, stores, split, seed)
    old = _old_examples(task, c.data, tokenizer, split, seed)
    for first in (0, 5, 997, 10_000):  # Later epochs too.
      idx = np.arange(first, first + 8, dtype=np.int64)
      a, b = new.batch(idx), old.batch(idx)
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{family} {split} {k} at {first}")


def test_the_auto_prepared_store_is_reused(text_setup, monkeypatch):
  """The second run opens the cached store: no corpus text is read or tokenized again."""
  c, _, stores = text_setup
  monkeypatch.setattr(corpus_lib, "read_unit", lambda *a, **k: pytest.fail("read the corpus again"))
  _, again = sources.open_stores(c.data, c.tokenizer)
  assert again[0].store.path == stores[0].store.path


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, text_corpus):
  """Two stores of halves of the corpus, prepared with one tokenizer, in several shards each."""
  root = tmp_path_factory.mktemp("stores")
  docs = open(text_corpus, encoding="utf-8").read().strip().split("\n\n")
  c = make_tiny_config(text_corpus)
  tokenizer = prepare_lib.resolve_tokenizer(c.data, c.tokenizer)
  out = {}
  for name, part in (("wiki", docs[:100]), ("books", docs[100:])):
    path = root / f"{name}.txt"
    path.write_text("\n\n".join(part) + "\n", encoding="utf-8")
    data = c.data.copy_and_resolve_references()
    data.paths = str(path)
    out[name] = str(root / name)
    prepare_lib.prepare(data, tokenizer, out[name], num_workers=1, unit_bytes=4096)
  return c, tokenizer, out


def test_mixture_proportions_follow_the_weights(two_stores):
  c, tokenizer, out = two_stores
  data = c.data.copy_and_resolve_references()
  data.update(source="prepared", paths="", mixture=f"{out['wiki']}=1,{out['books']}=3")
  tok, stores = sources.open_stores(data, c.tokenizer)
  assert tok.fingerprint == tokenizer.fingerprint
  assert [len(s.store.shards("train")) > 1 for s in stores] == [True, True]
  task = families.get_task(_family_config("bert", data, c.tokenizer), tok)
  src = sources.example_source(task, stores, "train", seed=0, run_length=4)
  drawn = src.drawn(40_000)
  assert set(drawn) == {"wiki", "books"}
  assert drawn["books"] / 40_000 == pytest.approx(0.75, abs=0.01)
  # The rows really come from the named store: every token a row holds is text of that store.
  batch = src.batch(np.arange(64, dtype=np.int64))
  assert batch["input_ids"].shape == (64, c.data.max_seq_length)


def test_mixture_resume_mid_run_is_exact(two_stores):
  """A stream resumed on one process where two left off sees every example once, in order."""
  c, _, out = two_stores
  data = c.data.copy_and_resolve_references()
  data.update(source="prepared", paths="", mixture=f"{out['wiki']}=1,{out['books']}=1")
  tok, stores = sources.open_stores(data, c.tokenizer)
  cfg = _family_config("gpt2_packed", data, c.tokenizer)
  task = families.get_task(cfg, tok)
  make = lambda: sources.example_source(task, stores, "train", seed=1, run_length=3)
  whole = pipeline.BatchStream(make(), 8, num_threads=1)
  expected = [next(whole) for _ in range(6)]
  two = [
    pipeline.BatchStream(make(), 8, process_index=p, process_count=2, num_threads=1) for p in (0, 1)
  ]
  seen = []
  for _ in range(3):
    rows = [next(s) for s in two]
    seen.append({k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
  one = pipeline.BatchStream(make(), 8, num_threads=1)
  one.set_state(two[0].get_state())
  seen += [next(one) for _ in range(3)]
  for a, b in zip(seen, expected):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
  "spec, message",
  [
    ("a=0", "weights must be positive"),
    ("a=-1,b=1", "weights must be positive"),
    ("a=x", "is not a number"),
    ("a", "must be PATH=WEIGHT"),
  ],
)
def test_bad_mixture_specs(spec, message):
  with pytest.raises(PretrainError, match=message):
    sources.parse_mixture(spec)


def test_a_store_of_another_tokenizer_is_refused(two_stores, tmp_path):
  c, _, out = two_stores
  data = c.data.copy_and_resolve_references()
  data.update(source="prepared", paths=out["wiki"])
  tok_cfg = c.tokenizer.copy_and_resolve_references()
  other = prepare_lib.resolve_tokenizer(
    ml_collections.ConfigDict(dict(c.data.to_dict(), heldout_fraction=0.3)), tok_cfg
  )
  tok_cfg.path = other.path
  with pytest.raises(PretrainError, match="tokenizer"):
    sources.open_stores(data, tok_cfg)


def test_a_large_raw_corpus_is_not_prepared_on_the_fly(text_corpus):
  c = make_tiny_config(text_corpus)
  data = c.data.copy_and_resolve_references()
  data.auto_prepare_max_mb = 0.001
  with pytest.raises(PretrainError, match="python -m pretrain.prepare"):
    sources.open_stores(data, c.tokenizer)


def test_a_damaged_cached_store_is_refused_with_the_shard_named(text_corpus, tmp_path, monkeypatch):
  """A truncated shard is never taken for data nor silently rebuilt over: the run stops naming it."""
  monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
  c = make_tiny_config(text_corpus)
  _, stores = sources.open_stores(c.data, c.tokenizer)
  shard = stores[0].store.shards("train")[0].file
  path = os.path.join(stores[0].store.path, shard)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 10)
  with pytest.raises(PretrainError, match=f"{shard} is truncated"):
    sources.open_stores(c.data, c.tokenizer)
  assert os.path.getsize(path) == size - 10  # Left as it was, for the user to look at.


def test_a_run_reads_a_store_in_gcs_as_the_local_one(fake_gcs, two_stores):
  """data.paths=gs://...: manifest, tokenizer and shards come from the bucket; the batches are the local ones."""
  c, tokenizer, out = two_stores
  url = f"gs://{BUCKET}/stores/wiki"
  data = c.data.copy_and_resolve_references()
  data.paths = os.path.join(os.path.dirname(out["wiki"]), "wiki.txt")
  prepare_lib.prepare(data, tokenizer, url, num_workers=1, unit_bytes=4096)
  assert (fake_gcs / BUCKET / "stores" / "wiki" / "manifest.json").is_file()
  batches = []
  for path in (out["wiki"], url):
    data.update(source="prepared", paths=path)
    tok, stores = sources.open_stores(data, c.tokenizer)  # No tokenizer.path: the store's own copy.
    assert tok.fingerprint == tokenizer.fingerprint
    task = families.get_task(_family_config("bert", data, c.tokenizer), tok)
    src = sources.example_source(task, stores, "train", seed=2, run_length=4)
    batches.append(src.batch(np.arange(100, 164, dtype=np.int64)))
  for k in batches[0]:
    np.testing.assert_array_equal(batches[0][k], batches[1][k])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_dropped_shard_builder_is_freed_at_once(two_stores, family):
  """A mixture over thousands of shards keeps a few open: one it drops must not wait for the cyclic gc."""
  import gc  # pylint: disable=g-import-not-at-top
  import weakref  # pylint: disable=g-import-not-at-top

  c, _, out = two_stores
  data = c.data.copy_and_resolve_references()
  data.update(source="prepared", paths=out["wiki"])
  tok, stores = sources.open_stores(data, c.tokenizer)
  task = families.get_task(_family_config(family, data, c.tokenizer), tok)
  gc.disable()
  try:
    shards = stores[0].store.shards("train")
    largest = max(range(len(shards)), key=lambda i: (shards[i].num_docs, shards[i].num_tokens))
    examples = task.examples(stores[0].store.documents("train", largest), seed=0)
    examples.batch(np.arange(4, dtype=np.int64))
    refs = [weakref.ref(examples)]
    del examples
    assert refs[0]() is None
  finally:
    gc.enable()


def test_a_mixture_run_reports_what_each_store_gave(two_stores, tmp_path):
  """metrics.jsonl: examples and tokens drawn per store, adding up to every example the run consumed."""
  import json  # pylint: disable=g-import-not-at-top
  from pretrain import train as train_lib  # pylint: disable=g-import-not-at-top

  c, _, out = two_stores
  cfg = c.copy_and_resolve_references()
  cfg.data.update(
    source="prepared", paths="", mixture=f"{out['wiki']}=1,{out['books']}=3", mixture_run_length=2
  )
  cfg.train.update(steps=4, log_every=2)
  cfg.eval.every_steps = 0
  train_lib.train(cfg, str(tmp_path / "run"))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8")]
  logged = [r for r in rows if "examples_drawn/wiki" in r]
  assert [r["step"] for r in logged] == [
    2,
    3,
    4,
  ]  # Logged every 2 steps, and flushed by the save at 3.
  for r in logged:
    examples = r["examples_drawn/wiki"] + r["examples_drawn/books"]
    assert examples == r["step"] * cfg.train.batch_size
    assert r["tokens_drawn/books"] == r["examples_drawn/books"] * cfg.data.max_seq_length
  assert logged[-1]["examples_drawn/books"] > logged[-1]["examples_drawn/wiki"] > 0
