"""What a run may resume from: the checks a checkpoint's saved config must pass, and the optimizer reset.

A checkpoint resumes with the same vocabulary, the model and task fields its
family's Task says (`Task.check_resume`), the data section that made its data
position (up to a phase change of train.phases, pretrain/training/phases.py,
and a moved corpus, which is logged) and an optimizer that keeps the same
state; `checkpoint.reset_optimizer=True` keeps params, step and data position
with a new optimizer state instead.
"""

import logging

import jax
import ml_collections
import numpy as np
import optax

from pretrain.errors import PretrainError
from pretrain.training import phases as phases_lib
from pretrain.training.optimizer import make_optimizer

_logger = logging.getLogger("pretrain.train")


def check_compatible(saved: dict, config, tokenizer, task, abstract_params=None):
  """A checkpoint must be resumed with the same vocabulary, the model and task its family says and, unless
  the optimizer is reset, an optimizer that keeps the same state."""
  saved_tok = saved.get("_tokenizer", {})
  if saved_tok.get("fingerprint") not in (None, tokenizer.fingerprint):
    raise PretrainError(
      f"the tokenizer ({tokenizer.path}, vocab {tokenizer.vocab_size}) differs from the checkpoint's "
      f"(vocab {saved_tok.get('vocab_size')}, fingerprint {saved_tok.get('fingerprint', '')[:12]}); "
      "resume with the checkpoint's tokenizer or use a new workdir"
    )
  task.check_resume(config, saved)
  check_data(saved, config)
  if abstract_params is not None and not resets_optimizer(saved, config):
    _check_optimizer_state(saved, config, abstract_params)


# Data keys that say how examples are read, not which: a resume may change them.
RESUMABLE_DATA_KEYS = frozenset(
  {"data.num_threads", "data.prefetch_batches", "data.auto_prepare_max_mb"}
)
# Where the corpus is: a resume may move it (a store copied to a bucket), and the log says so.
RELOCATABLE_DATA_KEYS = frozenset({"data.source", "data.paths"})


def check_data(saved: dict, config) -> None:
  """PretrainError naming the first data key whose change would put the checkpoint's data position in
  another example stream (the sequence length, the masking, the seed, the mixture...), unless a phase
  change of train.phases sets it; a moved corpus (data.source, data.paths) is logged; keys one side
  lacks (a checkpoint from before a key existed) are not compared."""
  now, before = config.data.to_dict(), saved.get("data") or {}
  by_phase = phases_lib.changed_by_phase(saved, config)
  for key in sorted(set(now) & set(before)):
    name = f"data.{key}"
    if now[key] == before[key] or name in RESUMABLE_DATA_KEYS or name in by_phase:
      continue
    if name in RELOCATABLE_DATA_KEYS:
      _logger.warning(
        "config %s is %r but the checkpoint was trained with %r: the run goes on at the "
        "checkpoint's example position in the data now configured",
        name,
        now[key],
        before[key],
      )
      continue
    raise PretrainError(
      f"config {name} is {now[key]!r} but the checkpoint was trained with {before[key]!r}: its "
      "data position belongs to the examples that made; resume with the checkpoint's data section, "
      "change data in a phase (train.phases), or start a new workdir from these params with "
      "--config.init_from=<this workdir>"
    )


def resets_optimizer(saved: dict, config) -> bool:
  """checkpoint.reset_optimizer applies once: not to a checkpoint of a run that reset already with
  these optimizer settings (its optimizer state is this run's)."""
  if not config.checkpoint.get("reset_optimizer", False):
    return False
  before = saved.get("checkpoint", {}).get("reset_optimizer", False)
  return not (before and saved.get("optimizer") == config.optimizer.to_dict())


def _check_optimizer_state(saved: dict, config, abstract_params) -> None:
  """PretrainError naming the optimizer field whose saved value makes another optimizer state than
  this run's (optimizer.name, clipping on or off); fields that leave the state as it is may change."""
  now, before = config.optimizer.to_dict(), saved.get("optimizer")
  if not before:
    return  # Saved without its config: the tree check of the checkpoint still applies.
  changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
  if not changed:
    return

  def state_of(opt: dict):
    tx, _ = make_optimizer(ml_collections.ConfigDict(opt), int(config.train.steps))
    tree = jax.eval_shape(tx.init, abstract_params)
    return jax.tree.structure(tree), [x.shape for x in jax.tree.leaves(tree)]

  try:
    if state_of(dict(now, **before)) == state_of(now):
      return
  except PretrainError:
    pass  # The saved settings no longer make an optimizer: name the first changed field.
  k = changed[0]
  for field in changed:  # Name the field that alone changes the state.
    try:
      if state_of(dict(now, **{field: before[field]})) != state_of(now):
        k = field
        break
    except (PretrainError, KeyError):
      pass
  raise PretrainError(
    f"config optimizer.{k} is {now.get(k)!r} but the checkpoint was trained with {before.get(k)!r}, "
    "which keeps another optimizer state; set checkpoint.reset_optimizer=True to keep the "
    "checkpoint's params, step and data position with a new optimizer state, or use a new workdir"
  )


def with_new_optimizer_state(fns, config, restored: dict):
  """The train state of restored {"step", "params"} with a new optimizer state whose learning-rate
  schedule counts on from the restored step (so the schedule and the logged learning_rate go on from
  where the run is), while moments and Adam's bias correction start afresh."""
  fresh = fns.init_state(int(config.train.seed))
  step = restored["step"]

  def count_from_step(x):
    if isinstance(x, optax.ScaleByScheduleState):
      # From the host: a buffer of its own (the step donates the state; one buffer twice would crash).
      count = np.asarray(jax.device_get(step)).astype(x.count.dtype)
      return x._replace(count=jax.device_put(count, x.count.sharding))
    return x

  opt_state = jax.tree.map(
    count_from_step,
    fresh.opt_state,
    is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState),
  )
  return fresh.replace(step=step, params=restored["params"], opt_state=opt_state)
