"""Collectives of a compiled (SPMD-partitioned) program, from its HLO text: kind, executions, bytes moved.

The HLO of `compiled.as_text()` is the per-device program, so every shape in it is one device's share.
A collective inside a while loop (scanned layers, gradient-accumulation microbatches) runs once per
iteration: each computation's executions per step come from the call graph from ENTRY, a while body
counted `known_trip_count` times (XLA's GPU compiler writes it into the while's backend_config) or, where
that is absent (TPU), as many times as the loop condition's bound (`i < N`, the s32 constant in it).

Bytes each device sends for a collective of S result bytes over a group of n devices, as a ring does
it: all-reduce 2(n-1)/n S, all-gather (n-1)/n S, reduce-scatter (n-1) S, all-to-all (n-1)/n S,
collective-permute and -broadcast S. A group that spans k islands (TPU slices, GPU hosts) of m devices
each goes hierarchically: the ring within the island over the fast links (ICI, NVLink) and, for the
share of S that leaves it, a ring of k over the network (DCN, InfiniBand). A multi-slice TPU program
holds one slice's collectives; what crosses slices it hands to the DCN runtime as host `send`s marked
`_xla_megascale_transfer_type` (ALL_REDUCE, ...), each a ring over the slices on the bytes it sends.
"""

import collections
import dataclasses
import re
from typing import Callable

import numpy as np

KINDS = (
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
  "collective-broadcast",
  "ragged-all-to-all",
)
_START = {"all-reduce-start": "all-reduce", "all-gather-start": "all-gather"}
_START["collective-permute-start"] = "collective-permute"
_OPCODES = "|".join(sorted([*KINDS, *_START], key=len, reverse=True))
_INSTRUCTION = re.compile(
  rf"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+({_OPCODES})\((.*)$", re.MULTILINE
)
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(
  r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# Multi-slice TPU programs hand what crosses slices to the DCN runtime as host sends.
_MEGASCALE = re.compile(
  r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+send\(.*_xla_megascale_transfer_type="(\w+)"'
)
_BOUND = re.compile(r"=\s*s32\[\]\S*\s+constant\((\d+)\)")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


@dataclasses.dataclass
class Collective:
  kind: str
  executions: int  # Per step.
  result_bytes: int  # One execution's result on one device.
  group_size: int
  islands: int  # Slices (TPU) or hosts (GPU) one group spans.
  link_bytes: float = 0.0  # Sent per device per step over the fast links.
  network_bytes: float = 0.0  # Sent per device per step over the network between islands.


def _dtype_bytes(dtype: str) -> float:
  if dtype in _BYTES:
    return _BYTES[dtype]
  if dtype.startswith("f8"):
    return 1
  return int(re.sub(r"\D", "", dtype)) / 8


def array_bytes(type_text: str) -> int:
  """Bytes of every array in an HLO type (an array or a tuple of them)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(type_text):
    total += _dtype_bytes(dtype) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
  return int(total)


def _tuple_elements(type_text: str) -> list[str]:
  """Top-level elements of a tuple type '(a, (b, c), d)'; [type_text] for an array."""
  text = type_text.strip()
  if not text.startswith("("):
    return [text]
  out, depth, start = [], 0, 1
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth == 0:
        out.append(text[start:i])
    elif ch == "," and depth == 1:
      out.append(text[start:i])
      start = i + 1
  return [e for e in out if e.strip()]


def _iota(dims: list[int], perm: list[int] | None) -> np.ndarray:
  ids = np.arange(int(np.prod(dims))).reshape(dims)
  return ids.transpose(perm) if perm else ids


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def replica_groups(attrs: str, num_devices: int) -> np.ndarray:
  """[groups, group size] device ids of a collective's `replica_groups` (every format XLA prints)."""
  m = re.search(
    r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(([^)]*(?:\([^)]*\))?)\))?\s*\{([^}]*)\}",
    attrs,
  )
  if m:
    axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
    names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
    ids = np.arange(int(np.prod(sizes)))
    if m.group(2):
      d = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", m.group(2).strip())
      if d:
        ids = _iota(_ints(d.group(1)), _ints(d.group(2)) if d.group(2) else None).ravel()
    grouped = [names.index(a) for a in re.findall(r"'([^']+)'", m.group(3))]
    kept = [i for i in range(len(names)) if i not in grouped]
    ids = ids.reshape(sizes).transpose(kept + grouped)
    return ids.reshape(-1, int(np.prod([sizes[i] for i in grouped] or [1])))
  m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs)
  if m:
    shape = _ints(m.group(1))
    ids = _iota(_ints(m.group(2)), _ints(m.group(3)) if m.group(3) else None)
    return ids.reshape(shape[0], -1)
  m = re.search(r"replica_groups=\{(\{[\d,\s]*\}(?:\s*,\s*\{[\d,\s]*\})*)\}", attrs)
  if m:
    groups = [_ints(g) for g in re.findall(r"\{([\d,\s]*)\}", m.group(1))]
    if groups and all(len(g) == len(groups[0]) for g in groups):
      return np.array(groups)
  m = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
  if m:
    return np.array([_ints(p) for p in re.findall(r"\{([\d,\s]+)", m.group(1) + "}")])
  return np.arange(num_devices).reshape(1, -1)  # replica_groups={}: all devices.


def _executions(hlo: str) -> dict[str, int]:
  """Executions per step of every computation, from ENTRY down (a while body `known_trip_count` times)."""
  edges: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  loops: list[
    tuple[str, str, str]
  ] = []  # (caller, body, condition) of whiles without a known count.
  bounds: dict[str, int] = {}  # A computation's s32 constant: a loop condition's bound.
  entry, current = None, None
  for line in hlo.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      current = header.group(2)
      if header.group(1):
        entry = current
      continue
    if current is None or "=" not in line or re.search(r"\basync-(done|update)\(", line):
      continue  # An async pair names its computation twice; the start counts.
    bound = _BOUND.search(line)
    if bound:
      bounds[current] = int(bound.group(1))
    trips = _TRIP_COUNT.search(line)
    calls = dict((attr, callee) for attr, callee in _CALLS.findall(line))
    if "body" in calls and not trips:
      loops.append((current, calls.pop("body"), calls.get("condition", "")))
    for attr, callee in calls.items():
      edges[current].append((callee, int(trips.group(1)) if attr == "body" and trips else 1))
    for branches in _BRANCHES.findall(line):
      for callee in re.findall(r"%?([\w.\-]+)", branches):
        edges[current].append((callee, 1))
  # A while XLA did not annotate (TPU) runs as many times as its condition's bound: `i < N` from 0.
  for caller, body, condition in loops:
    edges[caller].append((body, bounds.get(condition, 1)))
  counts: dict[str, int] = collections.defaultdict(int)

  def visit(name: str, times: int, depth: int = 0) -> None:
    counts[name] += times
    if depth < 64:
      for callee, mult in edges.get(name, ()):
        visit(callee, times * mult, depth + 1)

  if entry is not None:
    visit(entry, 1)
  return counts


def _sent_bytes(kind: str, size: float, n: int) -> float:
  """Bytes one device sends for a ring collective of `size` result bytes over `n` devices."""
  if n <= 1:
    return 0.0
  return {
    "all-reduce": 2 * (n - 1) / n * size,
    "all-gather": (n - 1) / n * size,
    "reduce-scatter": (n - 1) * size,
    "all-to-all": (n - 1) / n * size,
    "ragged-all-to-all": (n - 1) / n * size,
  }.get(kind, size)


def parse(hlo: str, num_devices: int, island_of: Callable[[int], int]) -> list[Collective]:
  """Every collective of `hlo`, with its executions per step and the bytes each device sends for it.

  `island_of(device id)` is the slice (TPU) or host (GPU) of the program's device `id`.
  """
  executions = _executions(hlo)
  slices = len({island_of(i) for i in range(num_devices)})
  owner, found = None, []
  for line in hlo.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      owner = header.group(2)
      continue
    if owner is None:
      continue
    dcn = _MEGASCALE.match(line)
    if dcn:  # Multi-slice TPU: a transfer to the DCN runtime, a ring of the slices on its bytes.
      kind = dcn.group(2).lower().replace("_", "-")
      size = array_bytes(_tuple_elements(dcn.group(1))[0])
      times = executions.get(owner, 0)
      c = Collective(kind, times, size, slices, slices)
      c.network_bytes = times * _sent_bytes(kind, size, slices)
      found.append(c)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    _, type_text, opcode, rest = m.groups()
    kind = _START.get(opcode, opcode)
    if opcode in ("all-gather-start", "collective-permute-start"):
      elements = _tuple_elements(type_text)  # (operands, results, [contexts]): the results count.
      type_text = elements[1] if len(elements) > 1 else type_text
    size = array_bytes(type_text)
    groups = replica_groups(rest, num_devices)
    islands_per_group = [len({island_of(int(d)) for d in g}) for g in groups]
    k = max(islands_per_group)
    n = groups.shape[1] if kind != "collective-permute" else 2
    times = executions.get(owner, 0)
    c = Collective(kind, times, size, int(groups.shape[1]), k)
    if k <= 1:
      c.link_bytes = times * _sent_bytes(kind, size, n)
    elif kind in ("all-to-all", "ragged-all-to-all", "collective-permute", "collective-broadcast"):
      leaving = 1.0 if kind.startswith("collective") else (n - n // k) / n
      c.network_bytes = times * size * leaving
      c.link_bytes = times * _sent_bytes(kind, size, n // k) * (1 - leaving)
    else:
      m_ = max(1, n // k)
      c.link_bytes = times * _sent_bytes(kind, size, m_)
      shard = size / m_ if kind != "reduce-scatter" else size
      c.network_bytes = times * _sent_bytes(kind, shard, k)
    found.append(c)
  return found


def by_kind(found: list[Collective]) -> dict[str, dict]:
  """{kind: {ops, executions, bytes (result bytes x executions), link_bytes, network_bytes}} per device."""
  out: dict[str, dict] = {}
  for c in found:
    row = out.setdefault(
      c.kind,
      {"ops": 0, "executions": 0, "bytes": 0, "link_bytes": 0.0, "network_bytes": 0.0},
    )
    row["ops"] += 1
    row["executions"] += c.executions
    row["bytes"] += c.executions * c.result_bytes
    row["link_bytes"] += c.link_bytes
    row["network_bytes"] += c.network_bytes
    row["max_islands"] = max(row.get("max_islands", 1), c.islands)
  return dict(sorted(out.items(), key=lambda kv: -kv[1]["link_bytes"] - kv[1]["network_bytes"]))
