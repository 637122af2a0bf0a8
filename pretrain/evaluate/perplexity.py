"""Held-out perplexity of a causal LM with strided sliding windows, as Hugging Face documents for
fixed-length models ("Perplexity of fixed-length models").

  python -m pretrain.evaluate perplexity --init_from=runs/gpt2_tiny --text=heldout.txt \
      [--max_length=N] [--stride=N] [--batch_size=N]

The text file is encoded whole into ids x_0 .. x_{n-1} with the checkpoint's own tokenizer.
Windows of `max_length` tokens start every `stride` tokens (begin = 0, stride, 2 stride, ...; the
last one ends at n); each window scores only the tokens that the windows before it did not reach
(from the previous window's end to its own), each predicted from the tokens before it inside the
window, so every token after the first is scored exactly once with at least max_length - stride
tokens of context (fewer at the start of the text). x_0 has no context and is not scored. With
stride == max_length the windows do not overlap and the first token of each is not scored either.

  token perplexity = exp(total NLL / tokens scored)
  word perplexity  = exp(total NLL / words), words = whitespace-separated strings of the text
                     (str.split()), so that models with other tokenizers compare
  bits per byte    = total NLL / ln 2 / UTF-8 bytes of the text
"""

import dataclasses
import math

from pretrain.errors import PretrainError
from pretrain.evaluate.scoring import CausalScorer


@dataclasses.dataclass(frozen=True)
class Perplexity:
  nll: float  # Summed negative log-likelihood (nats) of the scored tokens.
  tokens: int  # Tokens scored.
  words: int
  bytes: int
  windows: int
  max_length: int
  stride: int

  @property
  def token_perplexity(self) -> float:
    return math.exp(self.nll / self.tokens)

  @property
  def word_perplexity(self) -> float:
    return math.exp(self.nll / self.words)

  @property
  def bits_per_byte(self) -> float:
    return self.nll / math.log(2) / self.bytes

  def row(self) -> dict:
    return dict(
      dataclasses.asdict(self),
      token_perplexity=self.token_perplexity,
      word_perplexity=self.word_perplexity,
      bits_per_byte=self.bits_per_byte,
    )


def strided_windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
  """(begin, end, first scored position) of each window over n tokens; positions [first, end) are
  scored in it. Every position 1 .. n - 1 is scored once when stride < max_length."""
  check_window(max_length, stride)
  out, previous_end = [], 0
  for begin in range(0, n, stride):
    end = min(begin + max_length, n)
    first = max(previous_end, begin + 1)  # A window's first token has no context in it.
    if first < end:
      out.append((begin, end, first))
    previous_end = end
    if end == n:
      break
  return out


def check_window(max_length: int, stride: int, positions: int | None = None) -> None:
  """PretrainError for a window the method cannot use (or the model cannot take: `positions`)."""
  if not isinstance(max_length, int) or max_length < 2:
    raise PretrainError(f"max_length={max_length!r} must be an integer >= 2")
  if positions is not None and max_length > positions:
    raise PretrainError(f"max_length={max_length} exceeds the model's {positions} positions")
  if not isinstance(stride, int) or not 1 <= stride <= max_length:
    raise PretrainError(
      f"stride={stride!r} must be an integer in [1, max_length={max_length}]: windows further "
      "apart than their length would skip tokens"
    )


def perplexity(
  scorer: CausalScorer,
  ids: list[int],
  *,
  words: int,
  num_bytes: int,
  max_length: int | None = None,
  stride: int | None = None,
) -> Perplexity:
  """The strided perplexity of the token ids `ids` (a whole text of `words` words, `num_bytes`
  bytes). max_length defaults to the model's positions, stride to half of max_length."""
  max_length = scorer.max_length if max_length is None else max_length
  stride = max(1, max_length // 2) if stride is None else stride
  check_window(max_length, stride, scorer.max_length)
  if len(ids) < 2:
    raise PretrainError(
      f"the text is {len(ids)} token{'s' * (len(ids) != 1)} long: perplexity scores every token "
      "after the first, so it needs at least 2"
    )
  if words < 1:
    raise PretrainError("the text has no words (only whitespace)")
  windows = strided_windows(len(ids), max_length, stride)
  rows = [(ids[begin : end - 1], ids[begin + 1 : end]) for begin, end, _ in windows]
  nll, scored = 0.0, 0
  for (begin, end, first), (logp, _) in zip(windows, scorer.score(rows)):
    # Target j of a row is position begin + 1 + j of the text.
    nll -= float(logp[first - begin - 1 :].sum())
    scored += end - first
  return Perplexity(nll, scored, words, num_bytes, len(windows), max_length, stride)


def read_text(path: str) -> str:
  """The UTF-8 text of `path`; PretrainError if it is missing, undecodable or blank."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise PretrainError(f"--text {path} does not exist") from None
  except UnicodeDecodeError as e:
    raise PretrainError(f"--text {path} is not UTF-8 text ({e})") from None
  except OSError as e:
    raise PretrainError(f"cannot read --text {path}: {e}") from None
  if not text.strip():
    raise PretrainError(f"--text {path} is empty")
  return text


def text_perplexity(scorer: CausalScorer, tokenizer, text: str, **window) -> Perplexity:
  """perplexity() of `text` encoded whole with `tokenizer`."""
  ids = tokenizer.encode([text])[0]
  return perplexity(
    scorer, ids, words=len(text.split()), num_bytes=len(text.encode("utf-8")), **window
  )
