"""The embedded word-order task: is a docstring sentence as written, or are its inner words shuffled?

Built from the embedded package task's sentences (pretrain/finetune/tasks/embedded.py: CPython's
docstrings, no download, dev sentences from held-out modules), so it needs no download either.
Half the sentences (those whose SHA-256 is even) stay as written ("intact"); in the others the
words between the first and the last are put in another order ("shuffled"), by a permutation
seeded from the same hash. The first and last words stay in place, so a capitalised first word or
a final full stop tells nothing: the classifier must know which words follow which, the knowledge
masked-LM pretraining gives a small model first (CoLA, GLUE's acceptability task, asks the same of
a larger one). A bag-of-words model cannot tell the classes apart: both hold the same words.

Where the package task asks for topics, which a few minutes of pretraining on two cores do not
teach a tiny model, this one shows that pretraining taught it something: BENCHMARKS.md,
"Fine-tuning", has both against random init.
"""

import hashlib

import numpy as np

from pretrain.finetune import tasks as tasks_lib
from pretrain.finetune.tasks import embedded

LABELS = ("intact", "shuffled")


def _digest(sentence: str) -> int:
  return int.from_bytes(hashlib.sha256(sentence.encode("utf-8")).digest()[:8], "little")


def reorder(sentence: str) -> str | None:
  """The sentence with its inner words in another order, or None when no other order exists."""
  words = sentence.split()
  inner = words[1:-1]
  if len(set(inner)) < 2:
    return None
  rng = np.random.default_rng(_digest(sentence))
  while True:  # At least two distinct inner words: a permutation that changes them exists.
    shuffled = [inner[i] for i in rng.permutation(len(inner))]
    if shuffled != inner:
      return " ".join([words[0], *shuffled, words[-1]])


def _examples(sentences: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
  texts, labels = [], []
  for sentence in sentences:
    shuffled = reorder(sentence) if _digest(sentence) % 2 else None
    texts.append(shuffled or sentence)
    labels.append(int(shuffled is not None))
  return texts, np.asarray(labels, np.int32)


def load() -> tasks_lib.Dataset:
  (train_sentences, _), (dev_sentences, _) = embedded.sentences()
  where = "the embedded word-order task (CPython's docstrings)"
  splits = {}
  for name, sentences in (("train", train_sentences), ("dev", dev_sentences)):
    texts, labels = _examples(sentences)
    splits[name] = tasks_lib.check_nonempty(tasks_lib.Split((tuple(texts),), labels, where), name)
  return tasks_lib.Dataset(
    name="embedded_order",
    kind=tasks_lib.CLASSIFICATION,
    label_names=LABELS,
    metrics=("accuracy",),
    train=splits["train"],
    dev={"": splits["dev"]},
  )
