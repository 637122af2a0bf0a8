"""The embedded downstream task: which standard-library package a docstring sentence comes from.

Built from the CPython sources that every Python 3.11 ships (parsed with
`ast`, never imported; the sentences cleaned and split as the embedded
pretraining corpus's, pretrain/data/embedded_corpus.py), so it needs no
download. Six packages are the classes: asyncio, email, importlib, tkinter,
unittest and xml. The held-out split is by module: a package's modules are
ordered by the SHA-256 of their path and the first quarter of them (at least
two) give the dev sentences, so dev sentences come from modules the model never
saw labelled. A sentence of at least five words counts once (its first
occurrence, train first); each class keeps at most 500 train and 150 dev
sentences (the first in module order), so the largest class is not most of the
data. The same Python version gives the same examples on any machine.
"""

import ast
import functools
import hashlib
import os
import sysconfig
import warnings

import numpy as np

from pretrain.data import embedded_corpus
from pretrain.errors import PretrainError
from pretrain.finetune import tasks as tasks_lib

PACKAGES = ("asyncio", "email", "importlib", "tkinter", "unittest", "xml")
_MIN_WORDS = 5
_DEV_FRACTION = 0.25
_MAX_TRAIN, _MAX_DEV = 500, 150


def _module_sentences(path: str) -> list[str]:
  with open(path, "rb") as f:
    source = f.read()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Invalid escapes etc. in old modules.
      tree = ast.parse(source, filename=path)
  except (SyntaxError, ValueError):
    return []
  out = []
  for doc in embedded_corpus._module_docstrings(tree):  # pylint: disable=protected-access
    text = embedded_corpus._clean_docs_text(doc)  # pylint: disable=protected-access
    out.extend(s for s in embedded_corpus.split_sentences(text) if len(s.split()) >= _MIN_WORDS)
  return out


def _package_modules(root: str, package: str) -> list[str]:
  """The package's .py files (relative to the stdlib), in their SHA-256 order."""
  found = []
  for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
    dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "__pycache__"))
    found += [
      os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if f.endswith(".py")
    ]
  return sorted(
    found, key=lambda rel: hashlib.sha256(rel.replace(os.sep, "/").encode()).hexdigest()
  )


@functools.lru_cache(maxsize=1)
def sentences() -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
  """((train sentences, labels), (dev sentences, labels))."""
  root = sysconfig.get_paths()["stdlib"]
  splits = {"train": ([], []), "dev": ([], [])}
  per_split = {"train": [], "dev": []}  # [(label, sentences of each module in order)]
  for label, package in enumerate(PACKAGES):
    modules = _package_modules(root, package)
    if len(modules) < 4:
      raise PretrainError(
        f"the embedded task needs the {package} package's sources in {root}; found "
        f"{len(modules)} modules"
      )
    n_dev = max(2, int(len(modules) * _DEV_FRACTION))
    per_split["dev"].append((label, modules[:n_dev]))
    per_split["train"].append((label, modules[n_dev:]))
  seen: set[str] = set()
  for split, limit in (("train", _MAX_TRAIN), ("dev", _MAX_DEV)):
    texts, labels = splits[split]
    for label, modules in per_split[split]:
      kept = 0
      for rel in modules:
        for sentence in _module_sentences(os.path.join(root, rel)):
          if kept < limit and sentence not in seen:
            seen.add(sentence)
            texts.append(sentence)
            labels.append(label)
            kept += 1
  return tuple((tuple(t), tuple(lab)) for t, lab in splits.values())


def load() -> tasks_lib.Dataset:
  (train_texts, train_labels), (dev_texts, dev_labels) = sentences()
  where = "the embedded task (CPython's docstrings)"
  return tasks_lib.Dataset(
    name="embedded",
    kind=tasks_lib.CLASSIFICATION,
    label_names=PACKAGES,
    metrics=("accuracy",),
    train=tasks_lib.check_nonempty(
      tasks_lib.Split((train_texts,), np.asarray(train_labels, np.int32), where), "train"
    ),
    dev={
      "": tasks_lib.check_nonempty(
        tasks_lib.Split((dev_texts,), np.asarray(dev_labels, np.int32), where), "dev"
      )
    },
  )
