"""Special tokens: the project's fixed ids and what every tokenizer tells the example builders.

The project's SentencePiece models hold [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0..4
(pretrain/data/sentencepiece_tokenizer.py). Every tokenizer tells the example builders its
special ids (`special`, a `SpecialTokens`) instead of their assuming the fixed ids.
"""

import dataclasses
import functools

import numpy as np

from pretrain.errors import PretrainError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL = 5
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True, eq=False)
class SpecialTokens:
  """The ids the example builders write, and which ids are special.

  A role the vocabulary lacks is None; a task that needs it says so (`require`).
  Special ids are never masked-LM targets nor random replacements.
  """

  pad: int | None
  unk: int | None
  cls: int | None  # Starts a BERT/RoBERTa sequence (RoBERTa's <s>).
  sep: int | None  # Ends a BERT segment (RoBERTa's </s>).
  mask: int | None
  eos: int | None  # Ends a text: GPT-2's document separator, T5's EOS.
  is_special: np.ndarray  # bool [vocab_size]
  source: str = "the tokenizer"

  ROLES = ("pad", "unk", "cls", "sep", "mask", "eos")

  def require(self, task: str, *roles: str) -> None:
    missing = [r for r in roles if getattr(self, r) is None]
    if missing:
      have = ", ".join(
        f"{r}={getattr(self, r)}" for r in self.ROLES if getattr(self, r) is not None
      )
      raise PretrainError(
        f"the {task} task needs the {', '.join(missing)} token{'s' * (len(missing) > 1)}, "
        f"which {self.source} does not have (it has {have or 'no special tokens'})"
      )

  @functools.cached_property
  def random_ids(self) -> np.ndarray:
    """int32: the ids a masked position may be replaced with (every non-special id)."""
    return np.flatnonzero(~self.is_special).astype(np.int32)

  def ids(self) -> dict[str, int]:
    return {r: getattr(self, r) for r in self.ROLES if getattr(self, r) is not None}


def project_special_tokens(vocab_size: int, source: str = "the tokenizer") -> SpecialTokens:
  """The project's SentencePiece layout: [PAD] [UNK] [CLS] [SEP] [MASK] at 0..4; [SEP] also ends a text."""
  is_special = np.arange(vocab_size) < NUM_SPECIAL
  is_special.flags.writeable = False
  return SpecialTokens(
    pad=PAD_ID,
    unk=UNK_ID,
    cls=CLS_ID,
    sep=SEP_ID,
    mask=MASK_ID,
    eos=SEP_ID,
    is_special=is_special,
    source=source,
  )


@dataclasses.dataclass(frozen=True)
class StandInTokenizer:
  """What a task reads from a tokenizer, for timing and tests that need no trained vocabulary:
  the project's special ids, every piece a word start, no text."""

  vocab_size: int
  path: str = "<stand-in>"
  sentinels: tuple[int, ...] = ()

  @property
  def word_start(self) -> np.ndarray:
    return np.ones([self.vocab_size], bool)

  @functools.cached_property
  def special(self) -> SpecialTokens:
    return project_special_tokens(self.vocab_size, f"the tokenizer {self.path}")
