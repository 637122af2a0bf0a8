"""A task is the unit of a model family: its examples, its model, its loss and its FLOPs.

The train loop talks to a task only through this interface, so adding a family
adds a module here, a line in TASKS and a config, never a second loop:

  examples(docs, seed)            random-access examples (len, __getitem__)
  dummy_batch(batch_size)         zeros of every batch field
  tokens_per_example              tokens one example contributes to tokens/s
  build_model(), init_args(batch) the flax module and its positional inputs
  denominators(batch)             global-batch normalisers (microbatches add up)
  loss(model, params, batch, denominators, *, dropout_rng, deterministic)
                                  -> (objective, metric sums)
  finalize(sums)                  metric values from summed counts
  train_flops_per_example()       model FLOPs of forward + backward
  describe()                      a JSON-able summary for logs
"""
import importlib

from pretrain.errors import PretrainError

# task.name -> "module:class", imported on use so one family's deps never load another's.
TASKS = {
    "bert": "pretrain.tasks.bert:BertTask",
    "roberta": "pretrain.tasks.roberta:RobertaTask",
    "gpt2": "pretrain.tasks.gpt2:Gpt2Task",
    "t5": "pretrain.tasks.t5:T5Task",
}


def get_task(config, tokenizer):
  """The task named by `config.task.name`, built for this tokenizer."""
  name = config.task.name
  if name not in TASKS:
    raise PretrainError(f"task.name={name!r}: expected one of {', '.join(map(repr, TASKS))}")
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)(config, tokenizer)
