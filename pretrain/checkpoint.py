"""Orbax checkpoints holding the train state, the data iterator's state, the config and the run's progress.

Saves are asynchronous (training continues while the arrays are written), the
last `keep` are kept, and a run restarted on the same workdir resumes from the
newest readable one. A checkpoint whose own files are broken (missing, truncated,
unparsable) is moved aside to `<step>.unreadable-<time>` (never deleted) with a
warning naming the step, and the one before it is used. A checkpoint that reads
but holds another state tree than the run builds (another optimizer, clipping
toggled, another model) is a config error and is left as it is; a transient
storage error is retried with backoff and, if it persists, reported as such,
leaving the checkpoint as it is. Restoring onto a different mesh works
because the state is read into the shardings of the new run's abstract state.
The workdir may be a gs:// URL: orbax writes it with tensorstore's GCS driver.
"""

import errno
import logging
import os
import re
import time
from typing import Callable, NamedTuple

from etils import epath
import jax
import orbax.checkpoint as ocp

from pretrain import paths
from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)
ITEMS = ("state", "data", "config", "progress")
RESTORE_TRIES = (
  5  # Reads of a step after a transient storage error: waits of 1 + 2 + 4 + 8 s at most.
)
RETRY_DELAY_S = 1.0


class CheckpointMismatch(PretrainError):
  """The checkpoint reads back but holds another state tree than the run's: an error of the config."""


class TransientStorageError(PretrainError):
  """The storage kept failing with errors that pass (timeouts, resets, HTTP 5xx/429) while reading."""


class Restored(NamedTuple):
  step: int
  state: object  # The abstract state's type, or {"step", "params"} when optimizer_reset.
  data: dict
  progress: dict
  optimizer_reset: bool
  config: dict | None = None  # The saved config (its train.phase says whose data position this is).


_TRANSIENT_ERRNOS = frozenset(
  {
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
  }
)
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# How tensorstore (the array reads, also on GCS) words a failure that passes, after its own retries.
_TRANSIENT_STATUS = re.compile(
  r"\b(UNAVAILABLE|DEADLINE_EXCEEDED)\b|HTTP response code: (408|429|5\d\d)\b"
)


_ORBAX_MISMATCH = re.compile(
  r"tree structures do not match|is not compatible with the stored shape"
)


def _chain(e: BaseException):
  """`e` and the exceptions it was raised from or during (orbax wraps the storage's errors)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    yield from (x for x in getattr(e, "exceptions", ()) if isinstance(x, BaseException))
    e = e.__cause__ or e.__context__


def _transient(e: BaseException) -> bool:
  if isinstance(e, (TimeoutError, ConnectionError)):
    return True
  if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
    return True
  code = getattr(e, "code", None)  # gcsfs.retry.HttpError, google.api_core exceptions
  if (
    isinstance(code, int)
    and code in _TRANSIENT_HTTP
    and type(e).__module__.startswith(("gcsfs", "google"))
  ):
    return True
  if type(e).__module__.startswith(("gcsfs", "requests", "aiohttp", "google")):
    try:
      from gcsfs.retry import is_retriable  # pylint: disable=import-outside-toplevel
    except ImportError:
      return False
    return is_retriable(e)
  return isinstance(e, ValueError) and bool(_TRANSIENT_STATUS.search(str(e)))


def is_transient(e: BaseException) -> bool:
  """Whether `e` (or what it wraps) is a storage error that passes: a timeout, a connection reset,
  EAGAIN, an HTTP 408/429/5xx from GCS (gcsfs, or tensorstore's words for them)."""
  return any(_transient(x) for x in _chain(e))


def _cause(e: BaseException) -> str:
  first = next((x for x in _chain(e) if _transient(x)), e)
  return f"{type(first).__name__}: {str(first)[:200]}"


def _not_the_checkpoint(e: BaseException) -> str | None:
  """What other than the checkpoint's files made a read fail (then it is not moved aside), or None."""
  for x in _chain(e):
    if isinstance(x, MemoryError) or re.search(r"RESOURCE_EXHAUSTED.*memory", str(x), re.I | re.S):
      return "out of memory"
    if isinstance(x, (ImportError, NameError, NotImplementedError, RecursionError)):
      return "an error of the program"
  return None


def _field(tree, name: str):
  return tree[name] if isinstance(tree, dict) else getattr(tree, name)


def _describe(leaf) -> str:
  return f"shape {tuple(leaf.shape)}" if hasattr(leaf, "shape") else type(leaf).__name__


def _check_tree(step: int, saved: dict, abstract_state, only: tuple[str, ...] = ()) -> None:
  """CheckpointMismatch naming the first path where the saved state tree (`saved_tree`) and
  `abstract_state` (its fields `only`, if given) differ in structure or shape."""
  target = {k: _field(abstract_state, k) for k in only} if only else abstract_state
  run = ocp.tree.to_flat_dict(
    target, keep_empty_nodes=True
  )  # Optimizers differ in empty states too.
  if only:
    saved = {k: v for k, v in saved.items() if k[0] in only}
  path, problem = None, None
  for path, leaf in run.items():
    name = ".".join(path)
    if path not in saved:
      problem = f"this run's state has {name} ({_describe(leaf)}), the checkpoint has not"
    elif hasattr(saved[path], "shape") and tuple(saved[path].shape) != tuple(leaf.shape):
      problem = f"{name} is {_describe(saved[path])} in the checkpoint but {_describe(leaf)} here"
    if problem:
      break
  if problem is None:
    path = next((p for p in saved if p not in run), None)
    if path is None:
      return
    problem = f"the checkpoint has {'.'.join(path)}, this run's state has not"
  if path[0] == "opt_state":
    hint = (
      "the optimizer's state differs (another optimizer.name, or clipping toggled): set "
      "checkpoint.reset_optimizer=True to keep the params with a new optimizer state, or use a "
      "new workdir"
    )
  else:
    hint = "a config field that shapes the model differs from the checkpoint's; use a new workdir"
  raise CheckpointMismatch(
    f"the checkpoint of step {step} holds another train state than this config builds: {problem}; "
    f"{hint}"
  )


class Checkpointer:
  """One workdir's checkpoints: `<workdir>/checkpoints/<step>/{state,data,config}`."""

  def __init__(
    self,
    workdir: str,
    every_steps: int,
    keep: int,
    async_save: bool = True,
    *,
    restore_tries: int = RESTORE_TRIES,
    retry_delay_s: float = RETRY_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
  ):
    if paths.is_remote(workdir):
      self.directory = os.fspath(epath.Path(workdir) / "checkpoints")
    else:  # Orbax wants an absolute local path.
      self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every_steps = int(every_steps)
    self._saving = None  # The step of the latest save started.
    self.restore_tries, self.retry_delay_s, self._sleep = (
      max(int(restore_tries), 1),
      retry_delay_s,
      sleep,
    )
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,  # Half-written saves of a killed run.
    )
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    except OSError as e:
      raise PretrainError(f"cannot use checkpoint directory {self.directory}: {e}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(
    self, step: int, state, data_state: dict, config: dict, progress: dict | None = None
  ) -> None:
    """Starts an async save of `step` (a step saved already is left as it is).

    A failed write (disk full, unwritable directory) raises PretrainError naming
    the step whose write failed: here, or at the next save or `wait` when it
    failed in the background. The checkpoints written before it are untouched
    (orbax writes into a temporary folder and renames it only when complete).
    """
    if step in self._manager.all_steps():
      return
    # The previous save's background write may have failed: report it as that step's failure, not
    # this one's (orbax's save would raise it from inside the new save).
    self.wait()
    self._saving = step
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(config),
          progress=ocp.args.JsonSave(progress or {}),
        ),
        force=True,
      )
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, e: Exception) -> PretrainError:
    good = [s for s in self._manager.all_steps() if s != step]
    return PretrainError(
      f"saving the checkpoint of step {step} in {self.directory} failed ({type(e).__name__}: {e}); "
      f"the earlier checkpoints ({', '.join(map(str, good)) or 'none'}) are intact"
    )

  def restore_config(self, step: int) -> dict:
    out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out["config"]

  def restore(
    self, step: int, abstract_state, only: tuple[str, ...] = ()
  ) -> tuple[object, dict, dict]:
    """Reads `step` into the shardings of `abstract_state` (ShapeDtypeStructs with .sharding).

    With `only` (names of top-level fields of the state, e.g. ("step", "params")) just those are read,
    as a dict, and the rest of the saved state is skipped.
    """
    if only:
      target = {k: _field(abstract_state, k) for k in only}
      state = ocp.PyTreeCheckpointer().restore(
        self._step_path(step) / "state",
        args=ocp.args.PyTreeRestore(
          item=target,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True,
        ),
      )
      data = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
      out = {"state": state, "data": data["data"]}
    else:
      items = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
      )
      out = self._manager.restore(step, args=items)
    progress = {}  # Checkpoints written before progress was recorded have none.
    if (self._step_path(step) / "progress").exists():
      progress = self._manager.restore(
        step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())
      )["progress"]
    _logger.info("restored step %d from %s", step, self.directory)
    return out["state"], out["data"], progress or {}

  def saved_tree(self, step: int) -> dict:
    """{path tuple: saved array metadata (.shape, .dtype)} of the state of `step`, read from its
    _METADATA alone (no array is read)."""
    handler = ocp.StandardCheckpointHandler()
    try:
      tree = handler.metadata(self._step_path(step) / "state").tree
      return ocp.tree.to_flat_dict(tree, keep_empty_nodes=True)
    finally:
      handler.close()

  def resume(self, abstract_state, check_config: Callable[[dict], None], reset_optimizer=False):
    """The newest checkpoint that reads back, as a Restored, or None if there is none.

    Each failure is classified before anything is moved:
      - `check_config(saved_config)` raising PretrainError (another model, tokenizer or optimizer),
        or a saved state tree that differs from `abstract_state` (CheckpointMismatch), is an error of
        the run's config: it propagates and nothing is touched;
      - a transient storage error (timeouts, connection resets, HTTP 5xx/429) is retried with
        exponential backoff, then raised as TransientStorageError; nothing is touched;
      - a checkpoint whose own files are broken (missing, truncated, unparsable) is moved aside (never
        deleted), a warning names it, and the next older one is tried.
    `reset_optimizer` (a bool, or a function of the saved config) reads only the step and params of
    the state: the run then starts a new optimizer state (Restored.state is {"step", "params"}).
    """
    bad = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self._read_step(step, abstract_state, check_config, reset_optimizer)
      except PretrainError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        not_broken = _not_the_checkpoint(e)
        if not_broken:
          raise PretrainError(
            f"reading the checkpoint of step {step} in {self.directory} failed with {not_broken} "
            f"({type(e).__name__}: {str(e)[:300]}); the checkpoint was left as it is"
          ) from e
        moved = self._quarantine(step)
        bad.append(f"{step} ({type(e).__name__})")
        _logger.warning(
          "checkpoint step %d in %s is unreadable: its files are broken (%s: %s); moved it to %s "
          "and trying the previous one",
          step,
          self.directory,
          type(e).__name__,
          str(e)[:300],
          moved,
        )
    if bad:
      raise PretrainError(
        f"no readable checkpoint in {self.directory}: steps {', '.join(bad)} are unreadable "
        "(moved aside, not deleted); use a new workdir or restore them by hand"
      )
    return None

  def restore_newest_readable(self, abstract_state, check_config: Callable[[dict], None]):
    """(step, state, data, progress) of `resume` without an optimizer reset, or None."""
    restored = self.resume(abstract_state, check_config)
    return None if restored is None else tuple(restored[:4])

  def _read_step(self, step, abstract_state, check_config, reset_optimizer) -> "Restored":
    saved_config = self._retrying(step, lambda: self.restore_config(step))
    check_config(saved_config)
    reset = bool(reset_optimizer(saved_config) if callable(reset_optimizer) else reset_optimizer)
    only = ("step", "params") if reset else ()
    saved = self._retrying(step, lambda: self.saved_tree(step))
    _check_tree(step, saved, abstract_state, only)
    try:
      state, data, progress = self._retrying(step, lambda: self.restore(step, abstract_state, only))
    except ValueError as e:
      # The tree read from the checkpoint's own _METADATA above, orbax's words for a tree or shape
      # that is not the target's name a difference of configs (a check above missed), not broken bytes.
      if _ORBAX_MISMATCH.search(str(e)):
        raise CheckpointMismatch(
          f"the checkpoint of step {step} holds another train state than this config builds "
          f"({str(e)[:400]}); a config field that shapes the state (optimizer, model) differs from "
          "the checkpoint's: use the checkpoint's config, set checkpoint.reset_optimizer=True for "
          "another optimizer, or use a new workdir"
        ) from e
      raise
    return Restored(step, state, data, progress, reset, saved_config)

  def _retrying(self, step: int, read: Callable):
    """read(), tried again after a transient storage error, with exponential backoff."""
    delay = self.retry_delay_s
    for attempt in range(1, self.restore_tries + 1):
      try:
        return read()
      except Exception as e:  # pylint: disable=broad-except
        if not is_transient(e):
          raise
        if attempt == self.restore_tries:
          raise TransientStorageError(
            f"reading the checkpoint of step {step} in {self.directory} failed {attempt} times with "
            f"a transient storage error ({_cause(e)}); the storage is failing, not the checkpoint, "
            "which was left as it is: run again when the storage recovers"
          ) from e
        _logger.warning(
          "reading checkpoint step %d: transient storage error (%s); try %d of %d in %.1f s",
          step,
          _cause(e),
          attempt + 1,
          self.restore_tries,
          delay,
        )
        self._sleep(delay)
        delay *= 2

  def _step_path(self, step: int) -> epath.Path:
    return epath.Path(self.directory) / str(step)

  def _quarantine(self, step: int) -> str:
    source = epath.Path(self.directory) / str(step)
    target = source.parent / f"{source.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0 and source.is_dir():
      source.rename(
        target
      )  # On GCS a copy of every object, then a delete: not atomic, but nothing is lost.
    self._manager.reload()
    return os.fspath(target)

  def wait(self):
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._saving, e) from e

  def close(self):
    try:
      self.wait()
    finally:
      self._manager.close()
