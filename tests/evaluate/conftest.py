"""Local checkpoints for the evaluation tests: random-weight HF models with a word-level tokenizer.json,
converted with `pretrain.convert.from_hf` (no hub)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # The harness tests read local files only.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import tokenizers
import torch
import transformers
from tokenizers import models, pre_tokenizers

from pretrain import convert

from hf_folders import perturb_and_save  # pylint: disable=g-import-not-at-top,wrong-import-position

WORDS = [f"w{i}" for i in range(60)]
VOCAB = [
  "<|endoftext|>",
  "<unk>",
  "[PAD]",
  "[CLS]",
  "[SEP]",
  "[MASK]",
  *WORDS,
]  # BERT needs its roles.
POSITIONS = 64


def save_word_tokenizer(folder) -> None:
  """tokenizer.json: one id per whitespace-separated word of VOCAB."""
  tok = tokenizers.Tokenizer(
    models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>")
  )
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / "tokenizer.json"))


def random_text(n_words: int, seed: int = 0) -> str:
  """Words of VOCAB in lines of up to 12, drawn with a fixed seed."""
  rng = np.random.default_rng(seed)
  words = [WORDS[i] for i in rng.integers(0, len(WORDS), n_words)]
  return "\n".join(" ".join(words[i : i + 12]) for i in range(0, n_words, 12)) + "\n"


@pytest.fixture(scope="session")
def words_text():
  """random_text(n_words, seed): words of the tokenizer's vocabulary, one token each."""
  return random_text


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory):
  """(the HF GPT2LMHeadModel, the converted folder) of a random 2-layer GPT-2 with 64 positions."""
  root = tmp_path_factory.mktemp("gpt2_eval")
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=len(VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=POSITIONS,
    bos_token_id=0, eos_token_id=0,
  )  # fmt: skip
  model = perturb_and_save(transformers.GPT2LMHeadModel(config).eval(), root / "hf")
  save_word_tokenizer(root / "hf")
  convert.from_hf(str(root / "hf"), str(root / "converted"))
  return model, str(root / "converted")


@pytest.fixture(scope="session")
def bert_converted(tmp_path_factory):
  """A converted random BertForMaskedLM on the same vocabulary: a model perplexity refuses."""
  root = tmp_path_factory.mktemp("bert_eval")
  torch.manual_seed(0)
  config = transformers.BertConfig(
    vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=POSITIONS, pad_token_id=2,
  )  # fmt: skip
  transformers.BertForMaskedLM(config).eval().save_pretrained(root / "hf")
  save_word_tokenizer(root / "hf")
  (root / "hf" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))
  convert.from_hf(str(root / "hf"), str(root / "converted"))
  return str(root / "converted")
