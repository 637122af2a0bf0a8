"""Causal (next-token) LM examples built on the fly, by global example index.

The corpus is read as one token stream in which every document is preceded by
an end-of-text token, and one more ends the stream:

  EOT d0 EOT d1 EOT ... EOT d{n-1} EOT

End-of-text is the tokenizer's `special.eos`: <|endoftext|> for GPT-2's own
vocabulary; [SEP] (id 3) for the project's sentencepiece tokenizers, which
reserve ids 0..4 for [PAD] [UNK] [CLS] [SEP] [MASK] and have no <|endoftext|>
([SEP] already means "a text ends here" and never occurs inside encoded
text). Padding is `special.pad`, or EOT where the vocabulary has no pad
token (GPT-2's); padded positions carry loss weight 0. Sentences of a
document are concatenated as they are (their pieces carry the word-start mark).
Empty documents are skipped.

Two layouts, every field `[seq_len]`:

* chunked (packing=False), as GPT-2 and nanoGPT train: the stream is cut into
  N = (T - 1) // L windows of L + 1 tokens (T = stream length, L = seq_len);
  inputs are a window's first L tokens, targets its last L. Attention spans the
  whole window, across documents (EOT marks the boundary), and every position
  is a target. Each epoch starts its windows at its own random offset in
  [0, (T - 1) % L], so the cut points move while N stays fixed.

* packed (packing=True): each example holds whole documents, each its own
  segment (segment_ids 1, 2, ...; 0 = padding) with positions from 0, so
  attention never crosses documents. A document of n tokens is the segment
  `EOT d` with targets `d EOT` (n + 1 positions): its first token is predicted
  from EOT alone, as in the chunked stream, and its last one predicts EOT, so
  no target ever comes from another document and every real position counts
  (loss weight 1; padding 0). A document longer than L is split into pieces of
  L positions (the last one shorter), each a segment of its own with positions
  from 0. Pieces are packed into examples once per (docs, seed) by best-fit
  decreasing; N is the number of examples that makes.

Global index i reads epoch i // N, slot i % N of that epoch's permutation of
the N examples (seeded by (seed, epoch)), so every epoch has N examples, an
index past the first epoch reads a reshuffled one, and any index is O(1) away:
the same (docs, seed, i) gives the same example in any batch, on any process.

The stream is virtual (pretrain.data.streams) and plans need only document
lengths: a batch reads its tokens in one `Documents.take` of the positions it shows.
"""

import bisect
import collections
import dataclasses

import numpy as np

from pretrain.data.epochs import Epochs
from pretrain.data.streams import doc_stream, Stream
from pretrain.data.tokenized import Documents
from pretrain.data.special_tokens import project_special_tokens, SEP_ID, SpecialTokens
from pretrain.errors import PretrainError

EOT_ID = SEP_ID  # The project tokenizer's end-of-text.
FIELDS = ("input_ids", "target_ids", "loss_weights", "segment_ids", "positions")
_PLAN, _EPOCH = 0, 1  # Seed streams of the packing plan and of the epochs.


@dataclasses.dataclass(frozen=True)
class CausalExampleConfig:
  seq_len: int = 1024
  packing: bool = False

  def __post_init__(self):
    if not isinstance(self.seq_len, (int, np.integer)) or self.seq_len < 1:
      raise PretrainError(f"seq_len={self.seq_len!r} must be a positive integer")
    if not isinstance(self.packing, (bool, np.bool_)):
      raise PretrainError(f"packing={self.packing!r} must be True or False")


def corpus_stream(docs: Documents) -> Stream:
  """The virtual stream EOT d0 EOT d1 ... EOT over the nonempty documents, in corpus order."""
  nonempty = np.flatnonzero(np.diff(docs.sentence_starts[docs.doc_starts]) > 0)
  return doc_stream(docs, nonempty, first_sep=True, last_sep=True)


def token_stream(
  docs: Documents, eot_id: int = EOT_ID
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(stream int32 [T], unit_starts int64 [D], doc_lengths int64 [D]) over the D nonempty documents.

  stream = EOT d0 EOT d1 ... EOT; document k's tokens are
  stream[unit_starts[k] + 1 : unit_starts[k] + 1 + doc_lengths[k]], after its EOT. Reads every token:
  for tests and inspection; the examples read `corpus_stream` lazily.
  """
  stream = corpus_stream(docs)
  ids = stream.token_ids(np.arange(stream.length), docs, eot_id)
  return ids, stream.doc_start[:-1], np.diff(stream.doc_start) - 1


def pack_pieces(lengths: np.ndarray, capacity: int, order: np.ndarray) -> np.ndarray:
  """Best-fit decreasing: the bin of each piece (int64 [P]), bins numbered from 0 in order of opening.

  Pieces go longest first (ties in `order`); each goes into the open bin with
  the least room that still fits it, else opens a bin.
  """
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
    raise ValueError(f"piece lengths must be in [1, {capacity}]")
  ranked = order[np.argsort(-lengths[order], kind="stable")]
  bin_of = np.empty(lengths.size, np.int64)
  by_room = collections.defaultdict(list)  # room left -> open bins with that much room
  rooms = []  # Sorted room values that have open bins.
  num_bins = 0
  for piece, size in zip(ranked.tolist(), lengths[ranked].tolist()):
    j = bisect.bisect_left(rooms, size)
    if j < len(rooms):
      room = rooms[j]
      b = by_room[room].pop()
      if not by_room[room]:
        del rooms[j]
    else:
      room, b = capacity, num_bins
      num_bins += 1
    bin_of[piece] = b
    room -= size
    if room:
      if not by_room[room]:
        bisect.insort(rooms, room)
      by_room[room].append(b)
  return bin_of


class CausalExamples:
  """Random access to an endless stream of causal LM examples: `self[i]` for any i >= 0."""

  def __init__(
    self,
    docs: Documents,
    cfg: CausalExampleConfig,
    vocab_size: int,
    seed: int,
    special: SpecialTokens | None = None,
  ):
    """`special`: the tokenizer's special ids (default: the project's sentencepiece layout)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise PretrainError(f"seed={seed!r} must be a non-negative integer")
    special = special or project_special_tokens(max(vocab_size, 0))
    special.require("causal LM", "eos")
    self.eot_id = special.eos
    self.pad_id = special.pad if special.pad is not None else special.eos
    if vocab_size <= max(self.eot_id, self.pad_id):
      raise PretrainError(
        f"vocab_size={vocab_size} has no room for the end-of-text id {self.eot_id}"
      )
    if docs.num_tokens and docs.max_token_id >= vocab_size:
      raise PretrainError(f"the corpus has token id {docs.max_token_id} >= vocab_size={vocab_size}")
    self.cfg = cfg
    self.seed = int(seed)
    self._docs = docs
    self._stream = corpus_stream(docs)
    unit_starts, doc_lengths = self._stream.doc_start[:-1], np.diff(self._stream.doc_start) - 1
    if not doc_lengths.size:
      raise PretrainError("the corpus has no tokens to build causal LM examples from")
    length = cfg.seq_len
    if cfg.packing:
      self._pieces = self._pack(unit_starts, doc_lengths)
      self._num_examples = len(self._pieces[2]) - 1
    else:
      self._num_examples = (self._stream.length - 1) // length
      if not self._num_examples:
        raise PretrainError(
          f"the corpus is {self._stream.length} tokens with end-of-text tokens, fewer than one window of "
          f"seq_len + 1 = {length + 1}; use a larger corpus, a smaller seq_len, or packing"
        )
    self._epochs = Epochs(self._num_examples, self._plan)

  def _pack(self, unit_starts: np.ndarray, doc_lengths: np.ndarray):
    """(piece_starts, piece_lengths, example_starts): pieces grouped by example, CSR style.

    Piece p fills positions with stream[piece_starts[p] + k] -> stream[piece_starts[p] + k + 1].
    """
    length = self.cfg.seq_len
    positions = doc_lengths + 1  # `EOT d` -> `d EOT`.
    num_pieces = -(-positions // length)  # [D]
    doc = np.repeat(np.arange(positions.size), num_pieces)  # [P]
    k = np.arange(doc.size) - np.repeat(
      np.cumsum(num_pieces) - num_pieces, num_pieces
    )  # Piece of its doc.
    piece_starts = unit_starts[doc] + k * length
    piece_lengths = np.minimum(positions[doc] - k * length, length)
    rng = np.random.default_rng([self.seed, _PLAN])
    bin_of = pack_pieces(piece_lengths, length, rng.permutation(doc.size))
    by_example = np.lexsort((np.arange(doc.size), bin_of))  # Example order, then document order.
    example_starts = np.searchsorted(bin_of[by_example], np.arange(bin_of.max() + 2))
    return piece_starts[by_example], piece_lengths[by_example], example_starts

  @property
  def num_examples(self) -> int:
    """Examples per epoch; every index >= 0 is valid (later epochs are reshufflings)."""
    return self._num_examples

  def __len__(self) -> int:
    return self._num_examples

  def padding_fraction(self) -> float:
    """Share of positions that are padding (0 when chunked)."""
    if not self.cfg.packing:
      return 0.0
    return 1.0 - float(self._pieces[1].sum()) / (self._num_examples * self.cfg.seq_len)

  def _plan(self, epoch: int) -> tuple[int, np.ndarray]:
    """(window offset, slot -> example [N]) of an epoch."""
    rng = np.random.default_rng([self.seed, _EPOCH, epoch])
    slack = (self._stream.length - 1) % self.cfg.seq_len
    offset = 0 if self.cfg.packing else int(rng.integers(0, slack + 1))
    return offset, rng.permutation(self._num_examples)

  def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(example int64 [B], window offset int64 [B]) that each global index reads."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    example, offset = np.empty_like(idx), np.empty_like(idx)
    for g in self._epochs.groups(idx):
      off, order = g.plan
      example[g.rows], offset[g.rows] = order[g.slots], off
    return example, offset

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.batch(np.asarray([index], np.int64)).items()}

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples of `indices` stacked: each field [B, seq_len]; row b equals self[indices[b]]."""
    example, offset = self._locate(indices)
    if self.cfg.packing:
      return self._packed(example)
    return self._chunked(offset + example * self.cfg.seq_len)

  def _chunked(self, starts: np.ndarray) -> dict[str, np.ndarray]:
    length = self.cfg.seq_len
    v = starts[:, None] + np.arange(length + 1)  # [B, L + 1]
    window = self._stream.token_ids(v, self._docs, self.eot_id)
    b = starts.size
    return {
      "input_ids": window[:, :-1],
      "target_ids": window[:, 1:],
      "loss_weights": np.ones([b, length], np.float32),
      "segment_ids": np.ones([b, length], np.int32),
      "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
    }

  def _packed(self, example: np.ndarray) -> dict[str, np.ndarray]:
    length = self.cfg.seq_len
    piece_starts, piece_lengths, example_starts = self._pieces
    first, count = example_starts[example], np.diff(example_starts)[example]  # [B]
    # Every piece of the batch, row by row: [Q] with Q = count.sum().
    row = np.repeat(np.arange(example.size), count)
    within = np.arange(row.size) - np.repeat(
      np.cumsum(count) - count, count
    )  # Piece's place in its row.
    piece = np.repeat(first, count) + within
    size = piece_lengths[piece]
    offset = (
      np.cumsum(size) - size
    )  # Where each piece starts in the batch's positions laid end to end.
    col0 = offset - np.repeat(offset[np.cumsum(count) - count], count)  # ... and in its row.
    # Every real position of the batch: [R] with R = size.sum().
    k = np.arange(int(size.sum())) - np.repeat(offset, size)  # Position in its piece.
    r, c = np.repeat(row, size), np.repeat(col0, size) + k
    # Each piece reads size + 1 stream positions (inputs, then the last target): [R + Q] in one take.
    read = size + 1
    read0 = np.cumsum(read) - read
    at = np.arange(int(read.sum())) - np.repeat(read0, read)
    ids = self._stream.token_ids(np.repeat(piece_starts[piece], read) + at, self._docs, self.eot_id)
    src = np.repeat(read0, size) + k  # Each position's input in `ids`; its target follows.

    out = {
      "input_ids": np.full([example.size, length], self.pad_id, np.int32),
      "target_ids": np.full([example.size, length], self.pad_id, np.int32),
      "loss_weights": np.zeros([example.size, length], np.float32),
      "segment_ids": np.zeros([example.size, length], np.int32),
      "positions": np.zeros([example.size, length], np.int32),
    }
    out["input_ids"][r, c] = ids[src]
    out["target_ids"][r, c] = ids[src + 1]
    out["loss_weights"][r, c] = 1.0
    out["segment_ids"][r, c] = np.repeat(within + 1, size)
    out["positions"][r, c] = k
    return out
