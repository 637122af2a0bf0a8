"""A task is the unit of a model family: its examples, its model, its loss and its FLOPs.

The train loop talks to a task only through this interface, so adding a family
adds a module here and a config, never a second loop.
"""
from pretrain.errors import PretrainError


def get_task(config, tokenizer):
  """The task named by `config.task.name`, built for this tokenizer."""
  name = config.task.name
  if name == "bert":
    from pretrain.tasks.bert import BertTask  # pylint: disable=g-import-not-at-top
    return BertTask(config, tokenizer)
  raise PretrainError(f"task.name={name!r}: expected one of 'bert'")
