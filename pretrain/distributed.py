"""Joining a multi-process run: `jax.distributed.initialize` from flags, SLURM or Cloud TPU.

Every process of a multi-host run calls `initialize()` once, before anything
touches a device. Where the process learns its place, in order:

  1. explicit arguments (the train flags --coordinator_address,
     --num_processes, --process_id; launch/local.py passes them);
  2. SLURM (SLURM_NTASKS > 1): process id SLURM_PROCID, coordinator the first
     host of the step's node list;
  3. a Cloud TPU VM: `jax.distributed.initialize()` with no arguments, which
     reads the slice's workers from the TPU metadata (one worker: one process);
  4. otherwise a single process, and nothing to do.

jax 0.10.2 does not raise when the coordinator cannot be reached or when fewer
processes than announced join: it retries until its own timeout and then
aborts the process with a C++ stack trace. So the checks that can be made
beforehand (the address resolves, process 0 can bind it, the ids are in range)
are made first, and the call itself runs in a thread that is given up on after
`timeout_s` with a `PretrainError` saying what was missing. The blocked call
cannot be cancelled: a caller that gets that error should exit the process
(the train CLI does).
"""

import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import threading
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300
# jax gets this much longer than our own bound, so that ours always fires first.
_JAX_TIMEOUT_MARGIN_S = 60


@dataclasses.dataclass(frozen=True)
class Launch:
  """This process's place in the run, and where that was learned ('flags', 'slurm', 'tpu', 'single')."""

  source: str
  coordinator_address: str | None = None
  num_processes: int = 1
  process_id: int = 0
  local_device_ids: tuple[int, ...] | None = None


def first_slurm_host(nodelist: str) -> str:
  """The first host of a SLURM node list, as `scontrol show hostnames` would list it.

  'gpu-a[003-010,012],gpu-b7' -> 'gpu-a003'; 'node7,node9' -> 'node7'.
  """
  m = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist.strip())
  if not m or not (m.group(1) or m.group(2)):
    raise PretrainError(f"cannot read a host from the SLURM node list {nodelist!r}")
  prefix, ranges = m.group(1), m.group(2)
  if ranges is None:
    return prefix
  first = ranges.split(",")[0].split("-")[0]  # Zero padding is part of the name: keep it.
  return prefix + first


def slurm_port(environ: Mapping[str, str]) -> int:
  """A port that the job's processes agree on; two jobs sharing a first node rarely collide."""
  return 20000 + int(environ.get("SLURM_JOB_ID", "0") or 0) % 10000


def _int_env(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ[name])
  except ValueError:
    raise PretrainError(f"{name}={environ[name]!r} is not an integer") from None


def _slurm_tasks_per_node(environ: Mapping[str, str], ntasks: int) -> float:
  nodes = (
    environ.get("SLURM_STEP_NUM_NODES")
    or environ.get("SLURM_JOB_NUM_NODES")
    or environ.get("SLURM_NNODES")
  )
  return ntasks / max(int(nodes), 1) if nodes and nodes.isdigit() else 1.0


def on_cloud_tpu_vm(environ: Mapping[str, str] = os.environ) -> bool:
  """A TPU VM: libtpu is installed and TPU chips are attached (found without initializing jax)."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms.split(","):
    return False
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def detect(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | None = None,
  *,
  coordinator_port: int | None = None,
  environ: Mapping[str, str] = os.environ,
) -> Launch:
  """Where this process belongs, from the arguments, then SLURM, then Cloud TPU (see module doc)."""
  ids = tuple(int(i) for i in local_device_ids) if local_device_ids else None
  explicit = (coordinator_address, num_processes, process_id)
  in_slurm = "SLURM_NTASKS" in environ and "SLURM_PROCID" in environ
  slurm_ntasks = _int_env(environ, "SLURM_NTASKS") if in_slurm else None
  if any(v is not None for v in explicit):
    if num_processes is not None and slurm_ntasks not in (None, 1, num_processes):
      raise PretrainError(
        f"--num_processes={num_processes} but SLURM started SLURM_NTASKS={slurm_ntasks} tasks; "
        "drop --num_processes (SLURM's count is used) or launch that many tasks"
      )
    if in_slurm and slurm_ntasks > 1:
      num_processes = slurm_ntasks if num_processes is None else num_processes
      process_id = _int_env(environ, "SLURM_PROCID") if process_id is None else process_id
    missing = [
      f"--{name}"
      for name, v in zip(
        ("coordinator_address", "num_processes", "process_id"),
        (coordinator_address, num_processes, process_id),
      )
      if v is None
    ]
    if missing:
      raise PretrainError(
        f"{', '.join(missing)} missing: a multi-process run outside SLURM and Cloud TPU needs "
        "--coordinator_address, --num_processes and --process_id on every process"
      )
    return Launch("flags", coordinator_address, int(num_processes), int(process_id), ids)
  if in_slurm and slurm_ntasks > 1:
    nodelist = (
      environ.get("SLURM_STEP_NODELIST")
      or environ.get("SLURM_JOB_NODELIST")
      or environ.get("SLURM_NODELIST")
    )
    if not nodelist:
      raise PretrainError(
        "SLURM_NTASKS > 1 but no SLURM_STEP_NODELIST/SLURM_JOB_NODELIST/SLURM_NODELIST is set"
      )
    port = coordinator_port or slurm_port(environ)
    if (
      ids is None
      and _slurm_tasks_per_node(environ, slurm_ntasks) > 1
      and "SLURM_LOCALID" in environ
    ):
      # One task per GPU: each takes the GPU of its local rank, unless SLURM already gave it just one.
      visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
      if len(visible) != 1:
        ids = (_int_env(environ, "SLURM_LOCALID"),)
    return Launch(
      "slurm",
      f"{first_slurm_host(nodelist)}:{port}",
      slurm_ntasks,
      _int_env(environ, "SLURM_PROCID"),
      ids,
    )
  if on_cloud_tpu_vm(environ):
    return Launch("tpu", local_device_ids=ids)
  return Launch("single", local_device_ids=ids)


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise PretrainError(f"coordinator address {address!r} is not HOST:PORT (e.g. 10.0.0.1:8476)")
  return host, int(port)


def _resolve(host: str, deadline: float) -> list[tuple]:
  """getaddrinfo, retried until `deadline` (a pod's DNS names may appear after the process starts)."""
  while True:
    try:
      return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
      if time.monotonic() >= deadline:
        raise PretrainError(f"coordinator host {host!r} does not resolve ({e.strerror})") from None
      time.sleep(1.0)


def _check_coordinator_can_start(host: str, port: int, deadline: float) -> None:
  """Process 0 runs the coordinator: `host` must be this machine and `port` free on it."""
  infos = _resolve(host, deadline)
  family, _, _, _, sockaddr = infos[0]
  with socket.socket(family, socket.SOCK_STREAM) as s:
    try:
      s.bind((sockaddr[0], 0))
    except OSError:
      raise PretrainError(
        f"coordinator address {host}:{port} is not an address of this machine, but process 0 runs the "
        "coordinator; give process 0's own host name or IP"
      ) from None
  try:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
  except OSError:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  with s:
    try:
      s.bind(("", port))  # jax binds the port on all interfaces.
    except OSError as e:
      raise PretrainError(
        f"coordinator port {port} is in use on this machine ({e.strerror}); choose another port"
      ) from None


def _reachable(host: str, port: int) -> bool:
  try:
    with socket.create_connection((host, port), timeout=2.0):
      return True
  except OSError:
    return False


def _call_with_deadline(fn, timeout_s: float) -> None:
  """Runs `fn` in a thread; returns when it does, re-raises what it raised, or raises TimeoutError."""
  outcome: list[BaseException | None] = []

  def target():
    try:
      fn()
      outcome.append(None)
    except BaseException as e:  # pylint: disable=broad-except
      outcome.append(e)

  thread = threading.Thread(target=target, name="jax.distributed.initialize", daemon=True)
  thread.start()
  thread.join(timeout_s)
  if not outcome:
    raise TimeoutError
  if outcome[0] is not None:
    raise outcome[0]


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | None = None,
  *,
  coordinator_port: int | None = None,
  timeout_s: int = DEFAULT_TIMEOUT_S,
  heartbeat_timeout_s: int = 100,
  environ: Mapping[str, str] = os.environ,
) -> Launch:
  """Joins the run this process belongs to (see the module doc); a no-op for a single process.

  Args:
    coordinator_address: HOST:PORT of process 0, which runs the coordinator.
    num_processes: processes in the run.
    process_id: this process's index, 0 .. num_processes - 1.
    local_device_ids: the local devices this process uses (default: all, or
      under SLURM with one task per GPU, the GPU of its local rank).
    coordinator_port: the port for a SLURM-derived coordinator (default:
      derived from SLURM_JOB_ID).
    timeout_s: how long to wait for every process to join before giving up.
    heartbeat_timeout_s: a process silent this long is taken for dead and the
      run stops.
    environ: the environment to read SLURM and JAX_PLATFORMS from.

  Returns:
    The Launch that was joined.

  Raises:
    PretrainError: the arguments disagree with each other or the launch, the
      coordinator cannot be started or reached, or not every process joined
      within `timeout_s`.
  """
  launch = detect(
    coordinator_address,
    num_processes,
    process_id,
    local_device_ids,
    coordinator_port=coordinator_port,
    environ=environ,
  )
  if launch.source == "single":
    return launch
  jax_kwargs = dict(
    initialization_timeout=int(timeout_s) + _JAX_TIMEOUT_MARGIN_S,
    heartbeat_timeout_seconds=int(heartbeat_timeout_s),
  )
  if launch.source == "tpu":
    what = "the Cloud TPU slice's workers (from the TPU metadata)"
    call = lambda: jax.distributed.initialize(
      local_device_ids=launch.local_device_ids, **jax_kwargs
    )
  else:
    n, pid = launch.num_processes, launch.process_id
    if n < 1:
      raise PretrainError(f"the number of processes must be at least 1, got {n}")
    if not 0 <= pid < n:
      raise PretrainError(f"process id {pid} is out of range for {n} processes (0 .. {n - 1})")
    if n == 1:
      return Launch("single", local_device_ids=launch.local_device_ids)
    host, port = _split_address(launch.coordinator_address)
    deadline = time.monotonic() + timeout_s
    if pid == 0:
      _check_coordinator_can_start(host, port, deadline)
    else:
      _resolve(host, deadline)
    if not on_cloud_tpu_vm(environ):
      # CPU processes need a collectives backend to talk to each other; GPUs use NCCL regardless.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    what = f"{n} processes at coordinator {launch.coordinator_address}"
    call = lambda: jax.distributed.initialize(
      launch.coordinator_address, n, pid, launch.local_device_ids, **jax_kwargs
    )

  _logger.info(
    "joining %s (from %s) as process %s",
    what,
    launch.source,
    launch.process_id if launch.source != "tpu" else "?",
  )
  start = time.monotonic()
  try:
    _call_with_deadline(call, max(timeout_s - (time.monotonic() - start), 1))
  except TimeoutError:
    raise PretrainError(_timeout_message(launch, timeout_s)) from None
  except (RuntimeError, ValueError, TypeError) as e:
    raise PretrainError(f"jax.distributed.initialize failed for {what}: {e}") from None
  if launch.source != "tpu" and (jax.process_count(), jax.process_index()) != (
    launch.num_processes,
    launch.process_id,
  ):
    raise PretrainError(
      f"this process was started as process {launch.process_id} of {launch.num_processes}, but the "
      f"coordinator at {launch.coordinator_address} formed a run of {jax.process_count()} processes "
      f"with this one as {jax.process_index()}; every process must be given the same --num_processes"
    )
  _logger.info(
    "process %d of %d: %d local devices, %d in all (%.1f s to join)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    time.monotonic() - start,
  )
  return Launch(
    launch.source,
    launch.coordinator_address,
    jax.process_count(),
    jax.process_index(),
    launch.local_device_ids,
  )


def _timeout_message(launch: Launch, timeout_s: float) -> str:
  if launch.source == "tpu":
    return (
      f"the Cloud TPU slice's workers did not all join within {timeout_s} s; the same command "
      "must run on every worker (gcloud ... ssh --worker=all)"
    )
  n, pid, address = launch.num_processes, launch.process_id, launch.coordinator_address
  if pid == 0:
    return (
      f"process 0 started the coordinator at {address}, but not all {n} processes joined within "
      f"{timeout_s} s; check that the launch started {n} processes (ids 0 .. {n - 1}) and that "
      f"they can reach {address}"
    )
  if not _reachable(*_split_address(address)):
    return (
      f"process {pid} of {n} could not reach the coordinator at {address} within {timeout_s} s: "
      "nothing accepts connections there (wrong address or port, or process 0 is not running)"
    )
  return (
    f"process {pid} reached the coordinator at {address}, but not all {n} processes joined within "
    f"{timeout_s} s; check that the launch started {n} processes with distinct ids 0 .. {n - 1}"
  )


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
  """{'section.key': the value as JSON} of a nested config dict."""
  out = {}
  for k, v in config.items():
    if isinstance(v, Mapping) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
  return out


def _facts(config: Mapping[str, Any], tokenizer: str, corpus: str) -> dict[str, Any]:
  return {"config": _flatten(config), "tokenizer": tokenizer, "corpus": corpus}


def _digests(facts: dict[str, Any]) -> np.ndarray:
  """One sha256 per fact, as int32 words: (3, 8)."""
  rows = [
    np.frombuffer(hashlib.sha256(json.dumps(facts[k], sort_keys=True).encode()).digest(), np.int32)
    for k in ("config", "tokenizer", "corpus")
  ]
  return np.stack(rows)


def disagreement(facts: Sequence[dict[str, Any]], limit: int = 3) -> str | None:
  """What the processes' facts (index = process id) differ in from process 0's; None if nothing.

  The same text on every process, so that all of them stop with the same error.
  """
  ref = facts[0]
  found = []
  for pid, f in enumerate(facts[1:], start=1):
    diffs = []
    for key in sorted(set(ref["config"]) | set(f["config"])):
      mine, theirs = f["config"].get(key, "(unset)"), ref["config"].get(key, "(unset)")
      if mine != theirs:
        diffs.append(f"config {key} is {mine} on process {pid} but {theirs} on process 0")
    for what in ("tokenizer", "corpus"):
      if f[what] != ref[what]:
        diffs.append(
          f"{what} fingerprint is {f[what][:12]} on process {pid} but {ref[what][:12]} on process 0"
        )
    if diffs:
      more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
      found.append(f"process {pid}: " + "; ".join(diffs[:limit]) + more)
  if not found:
    return None
  others = f"; {len(found) - limit} more processes differ" if len(found) > limit else ""
  return (
    f"the processes do not run the same thing: {' | '.join(found[:limit])}{others}. Every process "
    "must be given the same config, tokenizer and corpus"
  )


def check_processes_agree(config: Mapping[str, Any], tokenizer: str, corpus: str) -> None:
  """Raises the same PretrainError on every process when any process's config (the resolved dict),
  tokenizer fingerprint or corpus fingerprint differs from process 0's; a no-op for one process.

  Every process must call it at the same point. First the three hashes are gathered; only when they
  differ is every process's full config gathered too, so each can name the fields in one message.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  facts = _facts(config, tokenizer, corpus)
  digests = np.asarray(multihost_utils.process_allgather(_digests(facts)))
  if (digests == digests[0]).all():
    return
  payload = np.frombuffer(json.dumps(facts, sort_keys=True).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(payload.size))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.int32)  # int32: collectives of every backend carry it.
  padded[: payload.size] = payload
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  everyone = [
    json.loads(bytes(row[:n].astype(np.uint8)).decode()) for row, n in zip(gathered, lengths)
  ]
  message = disagreement(everyone) or (
    "the processes' config, tokenizer or corpus hashes differ, but not their contents"
  )
  raise PretrainError(message)
