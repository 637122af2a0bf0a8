"""Small labelled task files for the fine-tuning tests."""

import json
import os
import random


def write_jsonl(path, rows) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


def learnable_task(folder, n_train=256, n_dev=64, seed=0) -> tuple[str, str]:
  """(train, dev) JSONL files: a sentence's label is its first word (house: yes, tree: no)."""
  rng = random.Random(seed)
  words = "the cat sat on a mat with dog and bird in".split()

  def rows(n):
    out = []
    for _ in range(n):
      first = rng.choice(["house", "tree"])
      text = " ".join([first] + [rng.choice(words) for _ in range(6)])
      out.append({"text": text, "label": "yes" if first == "house" else "no"})
    return out

  os.makedirs(folder, exist_ok=True)
  return (
    write_jsonl(os.path.join(folder, "train.jsonl"), rows(n_train)),
    write_jsonl(os.path.join(folder, "dev.jsonl"), rows(n_dev)),
  )
