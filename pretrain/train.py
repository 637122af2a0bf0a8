"""The one train loop: data -> sharded jitted step -> metrics -> checkpoints.

  python -m pretrain.train --config=configs/bert_tiny.py --workdir=runs/bert_tiny

Running the same command on the same workdir resumes from the latest
checkpoint, with the data stream exactly where it stopped. The loop knows
nothing of any model family: the task (pretrain/families) supplies examples,
model, loss and FLOPs. `run` is the loop itself on what `RunInputs` give it
(task, examples, evaluator, initial params): `train` builds them from the data
section, pretrain/finetune from a labelled task and an init checkpoint.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from absl import app
from absl import flags
from etils import epath
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags
import numpy as np
from tqdm import tqdm

from pretrain import checkpoint as ckpt_lib
from pretrain import config as config_lib
from pretrain import cli
from pretrain import distributed
from pretrain import metrics as metrics_lib
from pretrain import sharding
from pretrain import families
from pretrain.data import pipeline
from pretrain.data import sources as data_sources
from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.training import compile_cache
from pretrain.training import profiling
from pretrain.training import phases as phases_lib
from pretrain.training import progress as progress_lib
from pretrain.training import resume as resume_lib
from pretrain.training import step as step_lib

_logger = logging.getLogger("pretrain.train")  # Not __name__: that is "__main__" under -m.


def _attention_backends(resolutions) -> dict:
  """What the compiled train step's attention ran on (its recorded resolutions), as metrics fields."""
  resolved = set(resolutions)
  for requested, backend, reason in sorted(resolved):
    _logger.info("attention: %s -> %s (%s)", requested, backend, reason)
  return {
    "attention_backend": ",".join(sorted({b for _, b, _ in resolved})),
    "attention_backend_reason": "; ".join(sorted({r for _, _, r in resolved if r})),
  }


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint and exits cleanly.

  With several processes a signal reaches each at a different step, and a
  process that stopped alone would leave the others waiting in a collective.
  There jax's preemption service takes SIGTERM instead: it agrees on one step
  for all processes (`reached_preemption_sync_point`, asked at every step) and
  they all save that step and stop. SIGINT keeps its default there.
  """

  def __init__(self):
    self.signal = None
    self.multiprocess = jax.process_count() > 1

  def reached(self, step: int) -> bool:
    if self.multiprocess and multihost_utils.reached_preemption_sync_point(step):
      self.signal = "SIGTERM"
    return self.signal is not None

  @contextlib.contextmanager
  def installed(self):
    if self.multiprocess or threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, _):
      self.signal = signal.Signals(signum).name

    for s in previous:
      signal.signal(s, handler)
    try:
      yield
    finally:
      for s, h in previous.items():
        signal.signal(s, h)


@dataclasses.dataclass
class RunInputs:
  """What the loop trains: pretraining builds these from the data section (`pretraining_inputs`),
  fine-tuning (pretrain/finetune) from a labelled dataset and an init checkpoint."""

  task: Any  # A pretrain.families.base.Task: loss, metrics, FLOPs, resume checks.
  tokenizer: Any
  train_examples: Any  # `.batch(indices)` by global example index (optionally `.names`, `.drawn`).
  # evaluate(fns, params) -> {"eval_...": value}; None: no evals.
  evaluate: Callable[[step_lib.StepFunctions, Any], dict] | None
  # init_params(fns, state) -> the state a new run starts from (its params replaced); None: as initialized.
  init_params: Callable[[step_lib.StepFunctions, Any], Any] | None
  data_fingerprint: str  # Every process must read the same data.
  data_stats: dict  # Logged at the start.


def _pretraining_evaluator(config, task, eval_examples):
  """Held-out batches (the same every eval) through the eval step, their summed metrics finalized."""
  batches: list = []  # Made at the first eval.

  def evaluate(fns, params) -> dict:
    if not batches:
      local = pipeline.fixed_batches(
        eval_examples,
        config.eval.batch_size,
        config.eval.num_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      batches.extend(sharding.make_global_batch(b, fns.mesh) for b in local)
    sums = [fns.eval_step(params, b) for b in batches]
    total = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(sums))
    return {f"eval_{k}": float(v) for k, v in task.finalize(total).items()}

  return evaluate


def _init_from(config):
  """A new run's params from config.init_from (a converted folder or another run), if set."""
  if not config.get("init_from"):
    return None

  def init_params(fns, state):
    from pretrain.convert import checkpoints as params_io  # pylint: disable=import-outside-toplevel

    _logger.info("params from %s", config.init_from)
    return state.replace(params=params_io.load_params(config.init_from, fns.abstract_state.params))

  return init_params


def pretraining_inputs(config) -> RunInputs:
  """The task of config.task.name on the examples of the data section's corpus."""
  tokenizer, stores = data_sources.open_stores(config.data, config.tokenizer)
  task = families.get_task(config, tokenizer)
  run_length = int(config.data.mixture_run_length)
  train_examples = data_sources.example_source(
    task, stores, "train", config.data.seed, run_length=run_length
  )
  evaluate = None
  if config.eval.every_steps:
    eval_examples = data_sources.example_source(
      task, stores, "heldout", config.data.seed + 1, run_length=run_length
    )
    evaluate = _pretraining_evaluator(config, task, eval_examples)
  return RunInputs(
    task=task,
    tokenizer=tokenizer,
    train_examples=train_examples,
    evaluate=evaluate,
    init_params=_init_from(config),
    data_fingerprint=data_sources.fingerprint(stores),
    data_stats=data_sources.describe(stores),
  )


def train(config, workdir: str, *, stop_at_step: int | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

  `stop_at_step` ends this invocation early at that step with a checkpoint, as
  a preemption would (resuming later continues the same run).
  """
  if phases_lib.has_phases(config):  # train.phases: this loop once per phase, on its data.
    return phases_lib.run(config, workdir, train, stop_at_step=stop_at_step)
  config = config.copy_and_resolve_references()
  return run(config, workdir, pretraining_inputs, stop_at_step=stop_at_step)


def run(
  config,
  workdir: str,
  make_inputs: Callable[[Any], RunInputs],
  *,
  stop_at_step: int | None = None,
) -> dict:
  """The loop on the inputs `make_inputs(config)` gives (after the config's shared sections are checked):
  a new run or a resumed one in `workdir`; returns the last logged metrics row with its "step"."""
  mesh = sharding.make_mesh(config.mesh)
  config_lib.validate(config, mesh)
  is_main = jax.process_index() == 0
  max_skipped = int(config.train.get("max_skipped_steps", 0))
  if max_skipped < 0:
    raise PretrainError(f"train.max_skipped_steps={max_skipped} must be 0 or more")

  cache = compile_cache.configure(config.train)  # Before the first compile; restored at the end.
  inputs = make_inputs(config)
  tokenizer, task, train_examples = inputs.tokenizer, inputs.task, inputs.train_examples
  total_steps = int(config.train.steps)
  corpus_stats = inputs.data_stats
  # Before anything is written or restored: every process must run what process 0 runs.
  distributed.check_processes_agree(
    json.loads(json.dumps(config.to_dict(), default=str)),
    tokenizer.fingerprint,
    inputs.data_fingerprint,
  )

  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # A no-op under a gs:// bucket.
  except OSError as e:
    raise PretrainError(f"cannot create workdir {workdir}: {e}") from e
  first_start_time = progress_lib.first_start_time(workdir, is_main)
  checkpointer = ckpt_lib.Checkpointer(
    workdir, config.checkpoint.every_steps, config.checkpoint.keep, config.checkpoint.async_save
  )
  saved_config = dict(
    config.to_dict(),
    _tokenizer={
      "path": tokenizer.path,
      "fingerprint": tokenizer.fingerprint,
      "vocab_size": tokenizer.vocab_size,
      "special_ids": tokenizer.special.ids(),
    },
  )
  saved_config = json.loads(json.dumps(saved_config, default=str))
  global_batch = int(config.train.batch_size)
  fns = step_lib.build_for_run(config, task, mesh)

  stream = pipeline.BatchStream(
    train_examples,
    global_batch,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_threads=config.data.num_threads,
    prefetch_batches=config.data.prefetch_batches,
  )

  with sharding.mesh_context(mesh):
    restored = checkpointer.resume(
      fns.abstract_state,
      lambda saved: resume_lib.check_compatible(
        saved, config, tokenizer, task, fns.abstract_state.params
      ),
      reset_optimizer=lambda saved: resume_lib.resets_optimizer(saved, config),
    )
  optimizer_reset = restored is not None and restored.optimizer_reset
  if restored is not None:
    state = restored.state
    if optimizer_reset:
      state = resume_lib.with_new_optimizer_state(fns, config, state)
    phases_lib.restore_stream(stream, restored, config)  # A new phase's stream starts at 0.
    progress = progress_lib.Progress.resumed(restored.progress, first_start_time)
    _logger.info("resumed from step %d (restart %d)", restored.step, progress.restarts)
    if optimizer_reset:
      _logger.warning(
        "checkpoint.reset_optimizer: kept the params, step, data position and progress of step %d "
        "and started a new %s optimizer state (its moments at zero)",
        restored.step,
        config.optimizer.name,
      )
  else:
    state = fns.init_state(int(config.train.seed))
    if inputs.init_params is not None:
      state = inputs.init_params(fns, state)
    progress = progress_lib.Progress(first_start_time)
  progress.compile_cache = cache
  with (
    attention.recording() as resolutions
  ):  # Each attention call resolves its backend while tracing.
    train_step, compile_seconds = fns.compile_train_step()
  progress.compile_seconds += compile_seconds
  backend_row = _attention_backends(resolutions)

  start_step = int(jax.device_get(state.step))
  profiler = profiling.StepProfiler(config.metrics, workdir, start_step)
  train_step = profiler.wrap(train_step)
  writer = metrics_lib.MetricsWriter(workdir)
  n_params = fns.num_params
  if start_step == 0:
    writer.write_text("config", "```\n" + str(config) + "\n```")
  if is_main:
    _logger.info(
      "task %s, %s parameters, mesh %s, corpus %s",
      task.name,
      f"{n_params:,}",
      dict(mesh.shape),
      corpus_stats,
    )

  flops_per_step = task.train_flops_per_example() * global_batch
  peak_per_device, peak_source = metrics_lib.peak_flops(config.metrics)
  peak = peak_per_device * jax.device_count()  # NaN for an unknown device kind: no MFU then.
  if is_main and not math.isfinite(peak):
    _logger.warning("no MFU: %s", peak_source)
  skips = {"consecutive": 0}  # Consecutive skipped steps up to the last one flushed.
  tokens_per_step = global_batch * task.tokens_per_example
  last_row: dict = {}

  def run_eval(step):
    row = inputs.evaluate(fns, state.params)
    writer.write(step, row)
    return row

  pending: list[tuple[int, dict]] = []  # Device metrics not yet fetched, fetched at log/save time.
  progress.new_interval()

  def flush(step) -> dict:
    """Fetches pending metrics, stops past train.max_skipped_steps consecutive skipped steps, writes the row.

    The jitted step has already skipped any step whose loss or gradients were not finite (step.py);
    a flush comes before every save, so no checkpoint is written after a step that stops the run.
    """
    if not pending:
      return {}
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      if not m["skipped"]:
        skips["consecutive"] = 0
        continue
      skips["consecutive"] += 1
      loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
      what = (
        f"loss is {loss}"
        if not math.isfinite(loss)
        else f"gradients are not finite (grad_norm {grad_norm}, loss {loss:.4g})"
      )
      n = skips["consecutive"]
      if n <= max_skipped:
        _logger.warning(
          "%s at step %d; step skipped (%d in a row, train.max_skipped_steps=%d)",
          what,
          s,
          n,
          max_skipped,
        )
        continue
      good = checkpointer.latest_step()
      run = f"; steps {s - n + 1}..{s} were all skipped, more than train.max_skipped_steps={max_skipped}"
      raise PretrainError(
        f"{what} at step {s}{run if max_skipped else ''}; stopping. The last good checkpoint is "
        f"{'step ' + str(good) if good is not None else 'none'} (nothing was saved after step {s - 1})."
      )
    elapsed, interval_steps, interval_data_wait = progress.close_interval()
    # Averages over the steps that trained; a skipped step's loss or grad_norm is not finite.
    kept = [m for m in fetched if not m["skipped"]] or fetched
    row = {k: float(np.mean([m[k] for m in kept])) for k in fetched[-1] if k != "skipped"}
    row["learning_rate"] = float(fetched[-1]["learning_rate"])
    row["skipped_steps"] = sum(int(m["skipped"]) for m in fetched)
    steps_per_sec = interval_steps / elapsed
    if (
      len(set(getattr(train_examples, "names", ()))) > 1
    ):  # A mixture: what each source has given so far.
      for name, n in train_examples.drawn(stream.examples_consumed()).items():
        row[f"examples_drawn/{name}"] = n
        row[f"tokens_drawn/{name}"] = n * task.tokens_per_example
    row.update(
      tokens_per_sec=tokens_per_step * steps_per_sec,
      examples_per_sec=global_batch * steps_per_sec,
      step_time=elapsed / interval_steps,
      tflops_per_sec=flops_per_step * steps_per_sec / 1e12,
      data_wait_fraction=interval_data_wait / elapsed,
      **progress.goodput_row(),
    )
    if math.isfinite(peak):
      row["mfu"] = flops_per_step * steps_per_sec / peak
    writer.write(step, row)
    pending.clear()
    progress.new_interval()
    return row

  def save(step):
    flush(step)
    with progress.timed("checkpoint"):  # The blocking part of the save is not step time.
      checkpointer.save(step, state, stream.get_state(), saved_config, progress.to_dict())

  stop = _StopFlag()
  bar = tqdm(
    total=total_steps,
    initial=start_step,
    unit="step",
    dynamic_ncols=True,
    disable=not (is_main and config.metrics.progress_bar),
    file=sys.stderr,
  )
  if is_main and start_step < total_steps:
    writer.write(
      start_step,
      {
        "compile_seconds": compile_seconds,
        "num_params": n_params,
        "tokens_per_step": tokens_per_step,
        # Where MFU's peak comes from; an unknown device kind says so here and gets no MFU.
        "peak_flops_source": peak_source,
        **({"peak_flops_per_device": peak_per_device} if math.isfinite(peak) else {}),
        **backend_row,
        **({"optimizer_reset": 1} if optimizer_reset else {}),
      },
    )
  step = start_step
  if is_main and start_step >= total_steps:
    print(f"{workdir} already holds the final step {start_step}; nothing to do.", file=sys.stderr)
  try:
    with stop.installed():
      while step < total_steps and not stop.reached(step) and step != stop_at_step:
        t_data = time.perf_counter()
        batch = sharding.make_global_batch(next(stream), mesh)
        data_wait = time.perf_counter() - t_data
        state, metrics = train_step(state, batch)
        step += 1
        progress.step(data_wait)
        pending.append((step, metrics))
        bar.update(1)
        if step % config.train.log_every == 0 or step == total_steps:
          last_row = flush(step)
          bar.set_postfix(
            loss=f"{last_row['loss']:.3f}",
            tok_s=f"{last_row['tokens_per_sec']:,.0f}",
            **({"mfu": f"{last_row['mfu']:.1%}"} if "mfu" in last_row else {}),
          )
        if inputs.evaluate and (step % config.eval.every_steps == 0 or step == total_steps):
          flush(step)
          with progress.timed("eval"):
            last_row.update(run_eval(step))
        if checkpointer.should_save(step) or step == total_steps:
          save(step)
      if step < total_steps:  # Stopped early by a signal or stop_at_step.
        save(step)
        if is_main and stop.signal:
          print(
            f"{stop.signal} received: saved a checkpoint at step {step}; exiting.", file=sys.stderr
          )
  finally:
    profiler.stop()
    cache.close()
    bar.close()
    checkpointer.close()
    writer.close()
  last_row["step"] = step
  return last_row


def define_flags() -> None:
  """CLI flags; defined only when run as a program so that modules importing this one stay free to."""
  config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/bert_tiny.py.", lock_config=True
  )
  flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, metrics.jsonl and TensorBoard files go: a folder or a gs:// URL.",
  )
  # A multi-process run (pretrain/distributed.py). Under SLURM and on Cloud TPU these are found on their own.
  flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, which runs the coordinator."
  )
  flags.DEFINE_integer("num_processes", None, "Processes in the run.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
  flags.DEFINE_list(
    "local_device_ids", None, "Local devices this process uses, e.g. 0,1 (default: all)."
  )
  flags.DEFINE_integer(
    "coordinator_port", None, "Coordinator port under SLURM (default: from SLURM_JOB_ID)."
  )
  flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for every process to join.")


def main(argv, job: Callable[[Any, str], dict] | None = None):
  """The CLI of a job function `job(config, workdir)` (default: train), e.g. pretrain.finetune's."""
  del argv
  cli.quiet_library_logs()
  f = flags.FLAGS
  config, workdir = f.config, f.workdir
  if config is None or not workdir:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)
  try:
    device_ids = [int(i) for i in f.local_device_ids] if f.local_device_ids else None
  except ValueError:
    print(
      f"error: --local_device_ids={','.join(f.local_device_ids)} must be integers", file=sys.stderr
    )
    sys.exit(2)
  try:
    launch = distributed.initialize(
      f.coordinator_address,
      f.num_processes,
      f.process_id,
      device_ids,
      coordinator_port=f.coordinator_port,
      timeout_s=f.distributed_timeout,
    )
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    os._exit(
      2
    )  # A jax.distributed.initialize still waiting in its thread would hold up a normal exit.
  code = 0
  try:
    row = (job or train)(config, workdir)
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    code = 2
  except Exception:  # pylint: disable=broad-except
    if launch.num_processes == 1:
      raise
    import traceback  # pylint: disable=g-import-not-at-top

    traceback.print_exc()
    code = 1
  if code and launch.num_processes > 1:
    # Leave at once: a normal exit waits for every process at jax's shutdown barrier, and the others may
    # be blocked in a collective waiting for this one. The launcher stops them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  if code:
    sys.exit(code)
  if jax.process_index() == 0 and row:
    print(json.dumps({k: v for k, v in row.items() if isinstance(v, (int, float))}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
