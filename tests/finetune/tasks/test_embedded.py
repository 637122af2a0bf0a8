"""The embedded task: CPython's docstrings by package, dev sentences from modules train never saw."""

import numpy as np

from pretrain.finetune.tasks import embedded


def test_classes_splits_and_determinism():
  d = embedded.load()
  assert d.label_names == embedded.PACKAGES and d.metrics == ("accuracy",)
  train, dev = d.train.texts[0], d.dev[""].texts[0]
  assert len(train) > 2000 and len(dev) > 300
  assert not set(train) & set(dev)
  assert np.bincount(d.train.labels).min() > 300  # Every class has examples in both splits.
  assert np.bincount(d.dev[""].labels, minlength=len(embedded.PACKAGES)).min() > 0
  assert np.bincount(d.train.labels).max() <= 500
  assert all(len(s.split()) >= 5 for s in dev)
  # The split is by module: a dev module's sentences are nowhere in train.
  root = embedded.sysconfig.get_paths()["stdlib"]
  modules = embedded._package_modules(root, "email")  # pylint: disable=protected-access
  held_out = set(embedded._module_sentences(f"{root}/{modules[0]}"))  # pylint: disable=protected-access
  assert held_out and not held_out & set(train)
  embedded.sentences.cache_clear()
  again = embedded.load()
  assert again.train.texts == d.train.texts and np.array_equal(
    again.dev[""].labels, d.dev[""].labels
  )
