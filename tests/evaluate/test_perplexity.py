"""pretrain.evaluate perplexity: the strided windows, parity with transformers' strided perplexity of
the same GPT-2, the command line and its bad input."""

import json
import math

import pytest
import torch

from pretrain.evaluate import __main__ as evaluate_cli
from pretrain.evaluate import perplexity
from pretrain.evaluate import scoring


def hf_strided_nll(model, ids, max_length, stride):
  """(summed NLL, tokens scored) by the loop of HF's "Perplexity of fixed-length models", counting each
  window's tokens as its loss does (labels shifted by one inside the model)."""
  input_ids = torch.tensor([ids])
  nll, tokens, previous_end = 0.0, 0, 0
  for begin in range(0, len(ids), stride):
    end = min(begin + max_length, len(ids))
    target_length = end - previous_end
    window = input_ids[:, begin:end]
    labels = window.clone()
    labels[:, :-target_length] = -100
    with torch.no_grad():
      loss = model(window, labels=labels).loss
    n = int((labels[:, 1:] != -100).sum())
    nll, tokens = nll + float(loss) * n, tokens + n
    previous_end = end
    if end == len(ids):
      break
  return nll, tokens


@pytest.mark.parametrize(
  "n,max_length,stride", [(200, 32, 12), (34, 32, 32), (7, 32, 5), (50, 8, 1)]
)
def test_windows_score_every_token_after_the_first_once(n, max_length, stride):
  windows = perplexity.strided_windows(n, max_length, stride)
  scored = sorted(p for _, end, first in windows for p in range(first, end))
  if stride < max_length:
    assert scored == list(range(1, n))
  assert len(scored) == len(set(scored)) and scored[-1] == n - 1
  assert all(end - begin <= max_length and begin < first < end for begin, end, first in windows)


@pytest.fixture(scope="module")
def scorer(gpt2):
  return scoring.load_scorer(gpt2[1], batch_size=4)


@pytest.mark.parametrize("max_length,stride", [(32, 12), (32, 32)])
def test_equals_transformers_strided_perplexity(gpt2, scorer, words_text, max_length, stride):
  model, _ = gpt2
  scorer, tokenizer = scorer
  text = words_text(230, seed=max_length + stride)
  ids = tokenizer.encode([text])[0]
  assert len(ids) == 230  # One token a word: word- and token-level counts differ only by x_0.
  result = perplexity.text_perplexity(scorer, tokenizer, text, max_length=max_length, stride=stride)
  nll, tokens = hf_strided_nll(model, ids, max_length, stride)
  assert result.tokens == tokens
  assert result.nll == pytest.approx(nll, rel=1e-4)
  assert result.token_perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-4)
  assert result.word_perplexity == pytest.approx(math.exp(nll / 230), rel=1e-4)
  assert result.bits_per_byte == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-4)


def test_cli_prints_one_json_row(gpt2, words_text, tmp_path, capsys):
  model, converted = gpt2
  path = tmp_path / "heldout.txt"
  path.write_text(words_text(100, seed=3))
  argv = ["perplexity", f"--init_from={converted}", f"--text={path}", "--max_length=32"]
  assert evaluate_cli.main([*argv, "--stride=16", "--batch_size=3"]) == 0
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (row["max_length"], row["stride"], row["words"], row["tokens"]) == (32, 16, 100, 99)
  ids = [int(w[1:]) + 6 for w in path.read_text().split()]  # w<i> is id i + 6 (VOCAB's order).
  nll, _ = hf_strided_nll(model, ids, 32, 16)
  assert row["token_perplexity"] == pytest.approx(math.exp(nll / 99), rel=1e-4)


@pytest.mark.parametrize(
  "case,flags,message",
  [
    ("masked_lm", [], "is task 'bert' (a masked LM)"),
    ("empty_text", [], "is empty"),
    ("one_token", [], "the text is 1 token long"),
    ("missing_text", [], "does not exist"),
    ("stride_past_window", ["--max_length=16", "--stride=17"], "stride=17 must be an integer in"),
    ("window_past_positions", ["--max_length=65"], "exceeds the model's 64 positions"),
    ("no_init_from", [], "is not a directory"),
  ],
)
def test_bad_input_is_one_error_line(gpt2, bert_converted, tmp_path, capsys, case, flags, message):
  text = tmp_path / "t.txt"
  text.write_text({"empty_text": " \n\n", "one_token": "w1\n"}.get(case, "w1 w2 w3\n"))
  init_from = {"masked_lm": bert_converted, "no_init_from": str(tmp_path / "absent")}.get(
    case, gpt2[1]
  )
  text_flag = str(tmp_path / "absent.txt") if case == "missing_text" else str(text)
  code = evaluate_cli.main(
    ["perplexity", f"--init_from={init_from}", f"--text={text_flag}", *flags]
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
