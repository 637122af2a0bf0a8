"""HF tokenizers (vocab.txt, tokenizer.json) through the data path: special ids where published
vocabularies put them, masking that never touches them, and runs trained on them."""

import json
import os

import numpy as np
import pytest
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import Tokenizer
from tokenizers import trainers

from pretrain import sample
from pretrain.data import hf_tokenizer
from pretrain.data import tokenizer_files
from pretrain.data.tokenized import tokenize_documents
from pretrain.data.tokenized import TokenizedDocs
from pretrain.errors import PretrainError
from pretrain.families.gpt2 import examples as ce
from pretrain.families import get_task
from pretrain.families.t5.config import t5_config
from pretrain.families.bert.examples import BertExampleConfig
from pretrain.families.bert.examples import BertExamples
from pretrain.families.roberta.examples import RobertaExampleConfig
from pretrain.families.roberta.examples import RobertaExamples
from pretrain.train import train

# bert-base-uncased's layout: [PAD] 0, [unused0..98] 1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103.
BERT_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103, "eos": 102}
SENTENCE = "The garden gate opens at seven every morning."


def _lines(corpus: str) -> list[str]:
  return [l for l in open(corpus, encoding="utf-8").read().splitlines() if l.strip()]


def _write_bert_vocab(corpus: str, path: str, size: int = 500) -> str:
  """A WordPiece vocab.txt trained on `corpus` (uncased), laid out as bert-base-uncased's."""
  wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  wp.normalizer = normalizers.BertNormalizer(lowercase=True)
  wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  wp.train_from_iterator(
    _lines(corpus), trainers.WordPieceTrainer(vocab_size=size - 104, special_tokens=["[UNK]"])
  )
  pieces = [t for t, _ in sorted(wp.get_vocab().items(), key=lambda kv: kv[1]) if t != "[UNK]"]
  vocab = (
    ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + pieces
  )
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(vocab) + "\n")
  return path


def _byte_level_bpe(corpus: str, size: int, specials: list[str]) -> Tokenizer:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
    _lines(corpus),
    trainers.BpeTrainer(
      vocab_size=size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ),
  )
  return tok


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory, text_corpus):
  """Folders holding a BERT vocab.txt, a RoBERTa-like, a GPT-2-like and a T5-like tokenizer.json."""
  root = tmp_path_factory.mktemp("hf_tokenizers")
  out = {}
  os.makedirs(root / "bert")
  out["bert"] = _write_bert_vocab(text_corpus, str(root / "bert" / "vocab.txt"))

  os.makedirs(root / "roberta")
  tok = _byte_level_bpe(text_corpus, 600, ["<s>", "<pad>", "</s>", "<unk>"])
  tok.add_special_tokens(["<mask>"])  # Last, as roberta-base's 50264.
  tok.save(str(root / "roberta" / "tokenizer.json"))
  (root / "roberta" / "tokenizer_config.json").write_text(
    json.dumps(
      {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": {"content": "<mask>", "lstrip": True},
      }
    )
  )
  out["roberta"] = str(root / "roberta" / "tokenizer.json")

  os.makedirs(root / "gpt2")
  tok = _byte_level_bpe(text_corpus, 600, [])
  tok.add_special_tokens(["<|endoftext|>"])  # Last, as GPT-2's 50256.
  tok.save(str(root / "gpt2" / "tokenizer.json"))
  out["gpt2"] = str(root / "gpt2" / "tokenizer.json")

  os.makedirs(root / "t5")
  tok = Tokenizer(models.Unigram())
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(
    _lines(text_corpus),
    trainers.UnigramTrainer(
      vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    ),
  )
  tok.add_special_tokens(
    [f"<extra_id_{k}>" for k in reversed(range(100))]
  )  # <extra_id_0> last, as T5's.
  tok.save(str(root / "t5" / "tokenizer.json"))
  out["t5"] = str(root / "t5" / "tokenizer.json")
  return out


def _docs(tok, corpus: str, n: int = 60):
  docs = [d.split("\n") for d in open(corpus, encoding="utf-8").read().strip().split("\n\n")][:n]
  return tokenize_documents(docs, tok)


def test_wordpiece_vocab_has_berts_published_special_ids(vocabs):
  tok = tokenizer_files.open_tokenizer(vocabs["bert"])
  assert isinstance(tok, hf_tokenizer.HfTokenizer)
  assert tok.special.ids() == BERT_IDS
  assert set(np.flatnonzero(tok.special.is_special)) == {0, 100, 101, 102, 103}
  assert not set(tok.special.random_ids.tolist()) & {0, 100, 101, 102, 103}
  # Uncased (no uppercase piece): text is lowercased, as BertTokenizer(do_lower_case=True).
  assert tok.encode(["The Garden"]) == tok.encode(["the garden"])
  ids = tok.encode(["the statement exits"])[0]
  assert 100 not in ids and tok.decode(ids) == "the statement exits"
  pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
  continuation = np.array([p.startswith("##") for p in pieces])
  assert (
    continuation.any()
    and not tok.word_start[continuation].any()
    and tok.word_start[~continuation].all()
  )
  # The folder works as tokenizer.path too, and the same file gives the same fingerprint.
  assert (
    tokenizer_files.open_tokenizer(os.path.dirname(vocabs["bert"])).fingerprint == tok.fingerprint
  )


def test_roles_from_tokenizer_config_and_byte_level_word_starts(vocabs):
  tok = tokenizer_files.open_tokenizer(vocabs["roberta"])
  mask = tok.vocab_size - 1
  assert tok.special.ids() == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": mask, "eos": 2}
  assert tok.id_to_piece(mask) == "<mask>"
  ids = tok.encode(["the statement exits the loop"])[0]
  assert 0 not in ids and 2 not in ids  # No <s> ... </s> template: the example builders place them.
  assert tok.decode(ids) == "the statement exits the loop"
  starts = [tok.id_to_piece(i).startswith("\u0120") for i in range(tok.vocab_size)]
  np.testing.assert_array_equal(tok.word_start, np.array(starts) | tok.special.is_special)


def test_bert_examples_use_the_vocabularys_ids_and_never_mask_a_special(vocabs, text_corpus):
  tok = tokenizer_files.open_tokenizer(vocabs["bert"])
  cfg = BertExampleConfig(max_seq_length=64, max_predictions_per_seq=10, whole_word_masking=True)
  ex = BertExamples(
    _docs(tok, text_corpus),
    cfg,
    tok.vocab_size,
    seed=0,
    word_start=tok.word_start,
    special=tok.special,
  )
  b = ex.batch(np.arange(256))
  ids, real = b["input_ids"], b["input_mask"].astype(bool)
  assert (ids[:, 0] == 101).all() and ((ids == 101).sum(1) == 1).all()
  assert ((ids == 102).sum(1) == 2).all()  # [SEP] after A and after B; never a random replacement.
  assert (ids[~real] == 0).all() and not (ids[real] == 0).any()
  w = b["masked_lm_weights"] > 0
  labels = b["masked_lm_ids"][w]
  inputs = np.take_along_axis(ids, b["masked_lm_positions"], 1)[w]
  assert not tok.special.is_special[labels].any()
  assert 0.7 < np.mean(inputs == 103) < 0.9
  replaced = (inputs != 103) & (inputs != labels)
  assert replaced.any() and not tok.special.is_special[inputs[replaced]].any()
  # Whole words: a masked "##" piece has the piece before it masked too (unless that is a [SEP] or
  # [CLS]: truncation can cut a word's start off).
  original = ids.copy()
  np.put_along_axis(original, b["masked_lm_positions"], b["masked_lm_ids"], 1)
  masked = np.zeros_like(real)
  np.put_along_axis(masked, b["masked_lm_positions"], w, 1)
  rows, cols = np.nonzero(masked & ~tok.word_start[original])
  after_text = ~tok.special.is_special[original[rows, cols - 1]]
  assert after_text.sum() > 100 and masked[rows, cols - 1][after_text].all()


def test_roberta_examples_with_a_byte_level_vocabulary(vocabs, text_corpus):
  tok = tokenizer_files.open_tokenizer(vocabs["roberta"])
  ex = RobertaExamples(
    _docs(tok, text_corpus),
    RobertaExampleConfig(max_seq_length=64, max_predictions_per_seq=10),
    tok.vocab_size,
    seed=0,
    special=tok.special,
  )
  b = ex.batch(np.arange(64))
  ids, real = b["input_ids"], b["input_mask"].astype(bool)
  assert (ids[:, 0] == 0).all() and (ids[~real] == 1).all()
  inputs = np.take_along_axis(ids, b["masked_lm_positions"], 1)[b["masked_lm_weights"] > 0]
  assert (inputs == tok.special.mask).any()


def test_causal_examples_end_documents_with_endoftext(vocabs, text_corpus):
  tok = tokenizer_files.open_tokenizer(vocabs["gpt2"])
  eot = tok.vocab_size - 1
  assert (
    tok.special.eos == eot and tok.special.pad is None and tok.id_to_piece(eot) == "<|endoftext|>"
  )
  docs = _docs(tok, text_corpus, n=20)
  stream, starts, _ = ce.token_stream(docs, eot)
  assert (
    (stream[starts] == eot).all() and stream[-1] == eot and (stream == eot).sum() == len(starts) + 1
  )
  short = TokenizedDocs.from_lists([tok.encode(["the statement exits"]), tok.encode(["the loop"])])
  packed = ce.CausalExamples(
    short,
    ce.CausalExampleConfig(seq_len=32, packing=True),
    tok.vocab_size,
    seed=0,
    special=tok.special,
  )
  b = packed.batch(np.arange(2))
  pad = b["segment_ids"] == 0
  assert pad.any() and (b["input_ids"][pad] == eot).all() and (b["loss_weights"][pad] == 0).all()
  with pytest.raises(
    PretrainError, match=r"BERT task needs the pad, cls, sep, mask tokens, which the tokenizer "
  ):
    BertExamples(
      docs, BertExampleConfig(max_seq_length=32), tok.vocab_size, seed=0, special=tok.special
    )


def test_t5_takes_the_vocabularys_own_sentinels(vocabs, text_corpus):
  tok = tokenizer_files.open_tokenizer(vocabs["t5"])
  assert tok.special.pad == 0 and tok.special.eos == 1 and len(tok.sentinels) == 100
  c = t5_config()
  c.data.update(inputs_length=64)
  task = get_task(c, tok)
  assert task.first_sentinel == tok.vocab_size - 1 == tok.sentinels[0]
  assert (
    task.num_sentinels == 100 and task.model_config.vocab_size == 512
  )  # 400 + 100 -> a multiple of 128.
  b = task.examples(_docs(tok, text_corpus), seed=0).batch(np.arange(8))
  targets = b["decoder_target_tokens"]
  assert (targets[:, 0] == task.first_sentinel).all()
  assert tok.id_to_piece(int(targets[0, 0])) == "<extra_id_0>"
  assert (b["decoder_input_tokens"][:, 0] == 0).all()
  ends = b["decoder_loss_weights"].sum(1).astype(int) - 1
  assert (targets[np.arange(8), ends] == 1).all()


def test_bad_tokenizer_files(vocabs, tmp_path):
  not_json = tmp_path / "tokenizer.json"
  not_json.write_text('{"model": 3}')
  with pytest.raises(PretrainError, match="is not a tokenizers tokenizer.json"):
    tokenizer_files.open_tokenizer(str(not_json))
  with pytest.raises(PretrainError, match="is a folder without tokenizer.json or vocab.txt"):
    tokenizer_files.open_tokenizer(str(tmp_path / ".."))
  bad = tmp_path / "bad"
  os.makedirs(bad)
  (bad / "vocab.txt").write_text(open(vocabs["bert"], encoding="utf-8").read())
  (bad / "tokenizer_config.json").write_text(json.dumps({"mask_token": "[MSK]"}))
  with pytest.raises(PretrainError, match=r"names mask_token='\[MSK\]', which is not in"):
    tokenizer_files.open_tokenizer(str(bad / "vocab.txt"))
  (tmp_path / "twice.txt").write_text("[PAD]\n[UNK]\nthe\nthe\n")
  with pytest.raises(PretrainError, match="'the' appears twice"):
    tokenizer_files.open_tokenizer(str(tmp_path / "twice.txt"))


@pytest.fixture(scope="module")
def memorised_wordpiece_run(
  tmp_path_factory, text_corpus, tiny_config_factory, memorised_corpus, vocabs
):
  """A tiny BERT trained with the published-layout vocab.txt on prose that repeats SENTENCE."""
  root = tmp_path_factory.mktemp("memorised_hf")
  corpus = memorised_corpus(text_corpus, root / "corpus.txt", SENTENCE)
  vocab = _write_bert_vocab(corpus, str(root / "vocab.txt"), size=500)
  c = tiny_config_factory(corpus)
  c.tokenizer.path = vocab
  c.model.update(vocab_size=0, dropout_rate=0.0, attention_dropout_rate=0.0)
  c.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  c.train.update(steps=100, log_every=20)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 100
  workdir = str(root / "run")
  last = train(c, workdir)
  return workdir, last


def test_a_run_on_a_published_layout_vocabulary_learns_and_fills_masks(memorised_wordpiece_run):
  workdir, last = memorised_wordpiece_run
  assert np.isfinite(last["loss"])
  config, tok, task, params, step = sample.load_run(workdir)
  assert step == 100 and isinstance(tok, hf_tokenizer.HfTokenizer)
  assert config.model.vocab_size == 0 and task.vocab_size == tok.vocab_size
  ids = tok.encode([SENTENCE])[0]
  masked = sample.encode_masked(SENTENCE.replace("garden", "[MASK]"), tok)
  assert masked[0] == 101 and masked[-1] == 102 and (masked == 103).sum() == 1
  hits = 0
  for k in range(len(ids)):
    prompt = np.asarray([101] + ids[:k] + [103] + ids[k + 1 :] + [102], np.int32)
    hits += int(np.argmax(sample.mask_probabilities(task, params, prompt)[0]) == ids[k])
  assert hits >= len(ids) * 0.6, (hits, len(ids))


def test_gpt2_trains_on_a_byte_level_vocabulary_with_endoftext(
  vocabs, text_corpus, tiny_config_factory, tmp_path
):
  from pretrain.families.gpt2.config import gpt2_config  # pylint: disable=g-import-not-at-top

  c = gpt2_config()
  tiny = tiny_config_factory(text_corpus)
  c.data.update(
    source="text",
    paths=text_corpus,
    max_seq_length=32,
    num_threads=1,
    heldout_fraction=0.05,
    packing=True,
  )
  c.tokenizer.path = vocabs["gpt2"]
  c.model.update(
    vocab_size=0,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    dtype="float32",
  )
  for section in ("optimizer", "train", "eval", "checkpoint", "metrics"):
    c[section].update(tiny[section].to_dict())
  c.optimizer.update(learning_rate=5e-3, warmup_steps=4)
  c.train.update(steps=40, log_every=5)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 40
  workdir = str(tmp_path / "run")
  train(c, workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0] - 0.5, losses
  _, tok, task, params, _ = sample.load_run(workdir)
  text = sample.generate(task, params, tok, "the statement", max_new_tokens=8)
  assert isinstance(text, str) and "<|endoftext|>" not in text


def test_an_imported_checkpoint_continues_on_its_own_vocabulary(vocabs, text_corpus, tmp_path):
  """HF BertForPreTraining + vocab.txt -> from-hf -> `pretrain.train --config=converted/config.py`."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from pretrain import convert  # pylint: disable=g-import-not-at-top

  tok = tokenizer_files.open_tokenizer(vocabs["bert"])
  hf_dir = tmp_path / "hf"
  torch.manual_seed(0)
  transformers.BertForPreTraining(
    transformers.BertConfig(
      vocab_size=tok.vocab_size,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=2,
      intermediate_size=64,
      max_position_embeddings=64,
    )
  ).save_pretrained(str(hf_dir), safe_serialization=True)
  (hf_dir / "vocab.txt").write_text(open(vocabs["bert"], encoding="utf-8").read(), encoding="utf-8")
  out = tmp_path / "converted"
  convert.from_hf(str(hf_dir), str(out))
  workdir = tmp_path / "run"
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "pretrain.train",
      f"--config={out}/config.py",
      f"--workdir={workdir}",
      f"--config.init_from={out}",
      "--config.data.source=text",
      f"--config.data.paths={text_corpus}",
      "--config.data.max_seq_length=64",
      "--config.data.max_predictions_per_seq=10",
      "--config.train.steps=2",
      "--config.train.batch_size=8",
      "--config.eval.every_steps=0",
      "--config.checkpoint.every_steps=2",
      "--config.metrics.progress_bar=False",
    ],
    cwd=repo,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  _, run_tok, task, params, step = sample.load_run(str(workdir))
  assert step == 2 and run_tok.path == str(out / "vocab.txt") and run_tok.special.ids() == BERT_IDS
  assert task.vocab_size == tok.vocab_size
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl", encoding="utf-8")]
  assert np.isfinite([r["loss"] for r in rows if "loss" in r]).all()


def test_tokenizer_cli_checks_a_given_tokenizer(vocabs, text_corpus, tiny_config_factory, capsys):
  from pretrain import tokenizer as tokenizer_cli  # pylint: disable=g-import-not-at-top

  c = tiny_config_factory(text_corpus)
  c.tokenizer.path = vocabs["bert"]
  tokenizer_cli.run(c, "")
  out = capsys.readouterr().out
  assert f"path: {vocabs['bert']}" in out
  assert "special ids: pad=0, unk=100, cls=101, sep=102, mask=103, eos=102" in out
  pieces = out.split("pieces: ")[1].splitlines()[0].split()
  vocab = set(open(vocabs["bert"], encoding="utf-8").read().splitlines())
  assert pieces and set(pieces) <= vocab
