"""Each compile in a child process of its own, so that a compiler crash ends one plan, not the planner.

libtpu 0.0.42.1 dies of a segmentation fault inside compile() on some rematerialised steps
(BENCHMARKS.md, "Plan"). `plan(config, target_name)` runs pretrain.plan.compile.plan in a spawned
child; the child sends back what it knows before the compile (the settings, the state's bytes per
device) and then the plan, each as one JSON message over a pipe (nothing is unpickled from the
child). A child that dies instead gives the plan so far with `fits: False` and `crash`, e.g.
"compiler crashed (SIGSEGV) after 57 s"; a child's bad input comes back as the PretrainError it was.
Children that load libtpu side by side need ALLOW_MULTIPLE_LIBTPU_LOAD=1 (set for them here).
"""

import json
import multiprocessing
import os
import signal
import time

from pretrain.errors import PretrainError

# For the tests only: a child whose config has this remat policy ("*": any) kills itself with SIGSEGV
# right before it compiles, as libtpu does, so the parent's handling of a real crash can be tested.
CRASH_FOR_TEST_ENV = "PRETRAIN_PLAN_CRASH_FOR_TEST"


def _send(conn, kind: str, value) -> None:
  conn.send_bytes(json.dumps({kind: value}).encode())


def _child(config, target_name: str, hbm_limit_bytes, conn) -> None:
  """The child's work: the plan, or the bad input's message; a crash sends nothing more."""
  from pretrain.plan import compile as compile_lib  # pylint: disable=import-outside-toplevel
  from pretrain.plan import targets  # pylint: disable=import-outside-toplevel

  crash_at = os.environ.get(CRASH_FOR_TEST_ENV, "")

  def lowered(partial: dict) -> None:
    _send(conn, "lowered", partial)
    if crash_at in ("*", partial["settings"]["remat_policy"]):
      os.kill(os.getpid(), signal.SIGSEGV)

  try:
    result = compile_lib.plan(
      config, targets.parse(target_name), hbm_limit_bytes=hbm_limit_bytes, on_lowered=lowered
    )
  except PretrainError as e:
    _send(conn, "error", str(e))
  else:
    _send(conn, "plan", result)
  finally:
    conn.close()


def _death(exitcode: int | None) -> str:
  """How a child ended, in words: SIGSEGV, SIGKILL (the kernel's out-of-memory killer), exit status N."""
  if exitcode is not None and exitcode < 0:
    try:
      return signal.Signals(-exitcode).name
    except ValueError:
      return f"signal {-exitcode}"
  return f"exit status {exitcode}"


def plan(config, target_name: str, hbm_limit_bytes: float | None = None) -> dict:
  """pretrain.plan.compile.plan(config, target) in a child process; see the module's docstring."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # Inherited by the spawned child.
  context = multiprocessing.get_context("spawn")
  receive, send = context.Pipe(duplex=False)
  child = context.Process(
    target=_child,
    args=(config.copy_and_resolve_references(), target_name, hbm_limit_bytes, send),
    name=f"plan {target_name}",
  )
  t0 = time.perf_counter()
  child.start()
  send.close()  # The child holds the only writer: end of file once it exits.
  messages: dict = {}
  lowered_at = None
  try:
    while True:
      messages.update(json.loads(receive.recv_bytes()))
      if "lowered" in messages and lowered_at is None:
        lowered_at = time.perf_counter()
  except EOFError:
    pass
  finally:
    receive.close()
    child.join()
  if "plan" in messages:
    return messages["plan"]
  if "error" in messages:
    raise PretrainError(messages["error"])
  death = _death(child.exitcode)
  if lowered_at is None:
    raise PretrainError(
      f"the plan's process for {target_name} died ({death}) after "
      f"{time.perf_counter() - t0:.0f} s, before its step was lowered"
    )
  seconds = time.perf_counter() - lowered_at
  return dict(
    messages["lowered"],
    fits=False,
    compile_seconds=seconds,
    exit=death,
    crash=f"compiler crashed ({death}) after {seconds:.1f} s",
  )
