"""What the masked-LM example tests (BERT's, RoBERTa's) share: a corpus whose every id names its position, and an
example's text with the masked ids put back.

A test module imports it by putting tests/families/ on sys.path:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from mlm_examples import ...
"""

import numpy as np

from pretrain.data.tokenized import TokenizedDocs


def unique_ids(docs: TokenizedDocs) -> TokenizedDocs:
  """The documents and sentences of `docs` with token id = 5 + its position in the corpus: every id names its
  source."""
  return TokenizedDocs(
    np.arange(5, 5 + docs.num_tokens, dtype=np.int32), docs.sentence_starts, docs.doc_starts
  )


def unmasked(ex):
  """An example's input_ids with the original ids back at the masked positions."""
  ids = ex["input_ids"].copy()
  used = ex["masked_lm_weights"] > 0
  ids[ex["masked_lm_positions"][used]] = ex["masked_lm_ids"][used]
  return ids
