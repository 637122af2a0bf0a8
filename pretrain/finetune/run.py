"""`finetune(config, workdir)`: fine-tunes and evaluates a pretrained checkpoint on a labelled task.

The train loop is pretraining's (pretrain/train.py `run`): the same sharded,
jitted step, orbax checkpoints with the data position (a rerun resumes), metrics.jsonl +
TensorBoard, the progress bar and the SIGTERM save. What differs is given to it
as `RunInputs`: the fine-tuning task (pretrain/finetune/task.py, or
t5_task.py for T5) over the dataset's train split, an evaluator that predicts
every dev example and computes the task's metrics, and the params of a new run
(the init checkpoint's encoder, a fresh head). Its return value is the last
metrics row: `eval_<metric>` for each metric of the task, `eval_score` (their
mean: the task's GLUE score) and "step"; it is a job function for
pretrain.jobs.run_job.
"""

import hashlib
import json
import logging

import jax
import numpy as np

from pretrain import sharding
from pretrain import train as train_lib
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.finetune import config as config_lib
from pretrain.finetune import metrics as metrics_lib
from pretrain.finetune import tasks as tasks_lib
from pretrain.finetune import task as task_lib

_logger = logging.getLogger("pretrain.finetune")


def _make_task(run, tokenizer, dataset):
  if run.task.name == config_lib.T5_FAMILY:
    from pretrain.finetune import t5_task  # pylint: disable=import-outside-toplevel

    return t5_task.TextToTextTask(run, tokenizer, dataset)
  return task_lib.ClassifierTask(run, tokenizer, dataset)


def _fingerprint(arrays: dict) -> str:
  h = hashlib.sha256()
  for k in sorted(arrays):
    h.update(k.encode())
    h.update(np.ascontiguousarray(arrays[k]).tobytes())
  return h.hexdigest()


def make_evaluator(task, dataset: tasks_lib.Dataset, dev: dict, batch_size: int):
  """evaluate(fns, params) -> {"eval_<prefix><metric>": ..., "eval_score": mean of them}."""
  compiled = {}

  def evaluate(fns, params) -> dict:
    if "predict" not in compiled:
      param_sh = jax.tree.map(lambda s: s.sharding, fns.abstract_state.params)
      replicated = jax.sharding.NamedSharding(fns.mesh, jax.sharding.PartitionSpec())
      model = task.build_model()
      compiled["predict"] = jax.jit(
        lambda p, b: task.predict(model, p, b),
        in_shardings=(param_sh, sharding.data_sharding(fns.mesh)),
        out_shardings=replicated,
      )
    row = {}
    count, local = jax.process_count(), batch_size // jax.process_count()
    me = jax.process_index()
    for prefix, arrays in dev.items():
      outputs = []
      for batch in task_lib.eval_batches(arrays, batch_size):
        rows = {k: v[me * local : (me + 1) * local] for k, v in batch.items()}
        with sharding.mesh_context(fns.mesh):
          out = compiled["predict"](params, sharding.make_global_batch(rows, fns.mesh))
        outputs.append(np.asarray(jax.device_get(out))[batch["weights"] > 0])
      predictions = task.predictions(np.concatenate(outputs))
      values = metrics_lib.compute(dataset.metrics, dataset.dev[prefix].labels, predictions)
      row.update({f"eval_{prefix}{k}": v for k, v in values.items()})
    del count
    row["eval_score"] = float(np.mean(list(row.values())))
    return row

  return evaluate


def _init_params(run, family: str):
  """The init checkpoint's params where the fine-tuning model has them (the encoder; a head of the same
  shape, e.g. of a converted *ForSequenceClassification), the rest as initialized."""

  def init_params(fns, state):
    if run.finetune.random_init:
      _logger.info("finetune.random_init: the params are freshly initialized")
      return state
    target = fns.abstract_state.params
    directory, key, saved, _ = checkpoints.locate(run.init_from)
    stored = checkpoints.read_numpy(directory, key)
    stacks = checkpoints.family_stacks(saved)
    if checkpoints.is_scanned(stored, stacks) != checkpoints.is_scanned(target, stacks):
      convert = checkpoints.stack_layers if run.model.scan_layers else checkpoints.unstack_layers
      stored = convert(stored, stacks)
    if "pooler" in stored.get("bert", {}) and "pooler" not in target.get("bert", {}):
      # A head that does not read the pooler (finetune.head=mean): the checkpoint's is left unread.
      stored = dict(stored, bert={k: v for k, v in stored["bert"].items() if k != "pooler"})
    params, fresh = dict(state.params), []
    for name in target:
      if name not in stored:
        fresh.append(name)
        continue
      try:
        checkpoints.check_shapes(stored[name], target[name], run.init_from)
      except PretrainError:
        if family == config_lib.T5_FAMILY or name == "bert":
          raise
        fresh.append(name)  # A head of another size (e.g. other labels): a new one.
        continue
      params[name] = jax.tree.map(
        lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding), stored[name], target[name]
      )
    if family != config_lib.T5_FAMILY and "bert" in fresh:
      raise PretrainError(f"init_from {run.init_from} holds no encoder params ('bert')")
    if fresh:
      _logger.info("fresh params (not in %s): %s", run.init_from, ", ".join(fresh))
    return state.replace(params=params)

  return init_params


def prepare(config):
  """(run config, dataset, tokenizer) of a fine-tuning config; nothing is written."""
  saved, tokenizer_path = config_lib.read_init(config.init_from)
  family = config_lib.family_of(saved, config.init_from)
  tokenizer = config_lib.open_init_tokenizer(config.finetune, saved, tokenizer_path)
  dataset = tasks_lib.load(config.finetune)
  run = config_lib.resolve(config, dataset, saved, tokenizer)
  del family
  return run, dataset, tokenizer


def job_steps(config) -> int:
  """The steps a fine-tuning job of `config` trains (its epochs resolved): what pretrain.jobs must see
  reached before it counts the job as finished."""
  return int(prepare(config)[0].train.steps)


def finetune(config, workdir: str, *, stop_at_step: int | None = None) -> dict:
  """Fine-tunes (or resumes) in `workdir`; returns the last metrics row (eval_<metric>, eval_score, step)."""
  run, dataset, tokenizer = prepare(config)
  task = _make_task(run, tokenizer, dataset)
  train_arrays = task.encode(dataset.train)
  dev = {prefix: task.encode(split) for prefix, split in dataset.dev.items()}
  _logger.info(
    "fine-tuning %s on %s: %d train, %s dev examples, %d steps",
    run.init_from,
    dataset.name,
    len(dataset.train),
    "+".join(str(len(s)) for s in dataset.dev.values()),
    run.train.steps,
  )
  fingerprint = _fingerprint(
    {**train_arrays, **{f"dev{p}/{k}": v for p, a in dev.items() for k, v in a.items()}}
  )
  inputs = train_lib.RunInputs(
    task=task,
    tokenizer=tokenizer,
    train_examples=task.examples(train_arrays, int(run.train.seed)),
    evaluate=make_evaluator(task, dataset, dev, int(run.eval.batch_size)),
    init_params=_init_params(run, run.task.name),
    data_fingerprint=fingerprint,
    data_stats={
      "task": dataset.name,
      "train_examples": len(dataset.train),
      **{f"dev{p and '_' + p.rstrip('_')}_examples": len(s) for p, s in dataset.dev.items()},
    },
  )
  row = train_lib.run(run, workdir, lambda _: inputs, stop_at_step=stop_at_step)
  return json.loads(json.dumps(row, default=float))
