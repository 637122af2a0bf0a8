"""The model families and their one registry.

A family is one package here (or anywhere importable) holding what is
particular to it: `task.py` with its Task (a pretrain.families.base.Task: what
the train loop, the sampler and the converter ask of a family), `model.py`,
`examples.py`, and optionally `convert.py` (HF checkpoints in and out,
pretrain/convert) and `hf_reference.py` (the HF torch reference the
benchmarks time). Adding a family is that package plus one line in FAMILIES;
nothing else in the project names a family.
"""

import importlib
import types

from pretrain.errors import PretrainError
from pretrain.families.base import Task

# task.name -> "module:class" of its Task, imported on use so one family's deps never load another's.
# The family's other parts are modules beside the task module (`family_part`).
FAMILIES = {
  "bert": "pretrain.families.bert.task:BertTask",
  "roberta": "pretrain.families.roberta.task:RobertaTask",
  "gpt2": "pretrain.families.gpt2.task:Gpt2Task",
  "t5": "pretrain.families.t5.task:T5Task",
}


def _entry(name: str, what: str) -> tuple[str, str]:
  if name not in FAMILIES:
    raise PretrainError(f"{what}={name!r}: expected one of {', '.join(map(repr, FAMILIES))}")
  module, cls = FAMILIES[name].split(":")
  return module, cls


def task_class(name: str, what: str = "task.name") -> type[Task]:
  """The Task class of family `name`."""
  module, cls = _entry(name, what)
  found = getattr(importlib.import_module(module), cls)
  if not (isinstance(found, type) and issubclass(found, Task)):
    raise PretrainError(f"family {name!r}: {FAMILIES[name]} is not a pretrain.families.base.Task")
  return found


def family_part(name: str, part: str, what: str = "task.name") -> types.ModuleType:
  """Module `part` (e.g. 'convert', 'hf_reference') of family `name`'s package, or a PretrainError."""
  module, _ = _entry(name, what)
  package = module.rpartition(".")[0]
  try:
    return importlib.import_module(f"{package}.{part}")
  except ModuleNotFoundError as e:
    if e.name != f"{package}.{part}":
      raise
    raise PretrainError(f"family {name!r} has no {part} module ({package}.{part})") from None


def get_task(config, tokenizer) -> Task:
  """The task named by `config.task.name`, built for this tokenizer."""
  return task_class(config.task.name)(config, tokenizer)


def layer_stacks(name: str | None = None) -> dict[str, str]:
  """Per-layer param prefix -> its scanned subtree (Task.layer_stacks) of family `name`, or of every
  registered family (for params whose family is not known)."""
  names = [name] if name is not None else list(FAMILIES)
  out = {}
  for n in names:
    out.update(task_class(n).layer_stacks)
  return out
