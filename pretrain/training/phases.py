"""Training in phases: one run whose data section changes at configured steps (BERT's 128 then 512 tokens).

`train.phases` names each phase with the step it starts at and what it overrides:

  c.train.phases = ml_collections.ConfigDict({
    "seq128": dict(start_step=0, data=dict(max_seq_length=128, max_predictions_per_seq=20)),
    "seq512": dict(start_step=c.train.get_ref("steps") * 9 // 10,
                   data=dict(max_seq_length=512, max_predictions_per_seq=80)),
  })

`data` overrides keys of the data section; `train` may override train.batch_size and
train.grad_accum_steps. The first phase starts at step 0, each runs until the next one's start
(the last one until train.steps), and the optimizer, its learning-rate schedule and the step
counter run on across phases: `train()` runs the loop once per phase on that phase's config
(`phase_config`: the overrides applied, `train.phase` set to its name), the first invocation of a
phase resuming the previous one's checkpoint at the boundary. Each checkpoint's config records the
phase its data position belongs to (`train.phase`), so a resume mid-phase continues that phase's
example stream where it stopped, and the phase after a boundary starts its own stream at example 0
(`restore_stream`). A phase change is the only change of the data section a resume allows
silently (pretrain/training/resume.py checks the others, `changed_by_phase` names the keys).
"""

import dataclasses
import logging

import ml_collections

from pretrain import checkpoint as ckpt_lib
from pretrain.errors import PretrainError

_logger = logging.getLogger("pretrain.train")
PHASE_TRAIN_KEYS = ("batch_size", "grad_accum_steps")  # What a phase may set in the train section.


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  start_step: int
  end_step: int  # The next phase's start, or train.steps.
  data: dict
  train: dict


def at_fractions(config, *phases: tuple[str, float, dict]) -> ml_collections.ConfigDict:
  """train.phases of (name, fraction of train.steps it starts at, data overrides), in a config file:
  the start steps follow a command-line --config.train.steps."""
  steps = config.train.get_ref("steps")
  return ml_collections.ConfigDict(
    {
      name: dict(start_step=steps * round(fraction * 1000) // 1000, data=dict(data))
      for name, fraction, data in phases
    }
  )


def has_phases(config) -> bool:
  """Whether `config` is a run in phases (and not already one phase's config)."""
  return bool(config.train.get("phases")) and not config.train.get("phase")


def phases_of(config) -> list[Phase]:
  """The phases of config.train.phases in step order; PretrainError for one train() cannot run."""
  total = int(config.train.steps)
  spec = config.train.get("phases") or {}
  raw = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
  if not isinstance(raw, dict) or not raw:
    raise PretrainError("train.phases must name each phase: {name: {start_step, data, train}}")
  entries = []
  for name, phase in raw.items():
    where = f"train.phases.{name}"
    if not isinstance(phase, dict):
      raise PretrainError(f"{where} must be a section with start_step, data and train")
    unknown = sorted(set(phase) - {"start_step", "data", "train"})
    if unknown:
      raise PretrainError(f"{where}.{unknown[0]} is not a phase field (start_step, data, train)")
    start = phase.get("start_step")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < total:
      raise PretrainError(
        f"{where}.start_step={start!r} must be an integer in [0, train.steps={total})"
      )
    data, train = dict(phase.get("data") or {}), dict(phase.get("train") or {})
    for key in data:
      if key not in config.data:
        raise PretrainError(f"{where}.data.{key} is not a key of the data section")
    for key in train:
      if key not in PHASE_TRAIN_KEYS:
        raise PretrainError(
          f"{where}.train.{key}: a phase may set only train.{' and train.'.join(PHASE_TRAIN_KEYS)}"
        )
    entries.append((start, name, data, train))
  entries.sort(key=lambda e: e[0])
  if entries[0][0] != 0:
    raise PretrainError(
      f"the first phase (train.phases.{entries[0][1]}) starts at step {entries[0][0]}; one must "
      "start at 0"
    )
  for (a, name_a, *_), (b, name_b, *_) in zip(entries, entries[1:]):
    if a == b:
      raise PretrainError(f"train.phases.{name_a} and train.phases.{name_b} both start at {a}")
  ends = [e[0] for e in entries[1:]] + [total]
  return [Phase(n, s, end, d, t) for (s, n, d, t), end in zip(entries, ends)]


def phase_config(config, phase: Phase) -> ml_collections.ConfigDict:
  """`config` with the phase's overrides and train.phase = its name."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.data.update(phase.data)
  out.train.update(phase.train)
  out.train.phase = phase.name
  return out


def _latest_step(workdir: str) -> int | None:
  checkpointer = ckpt_lib.Checkpointer(workdir, every_steps=0, keep=1, async_save=False)
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()


def run(config, workdir: str, train_phase, *, stop_at_step: int | None = None) -> dict:
  """Runs the phases from the one the workdir's newest checkpoint is in, each with
  `train_phase(phase_config, workdir, stop_at_step=...)` (the train loop) stopping at the phase's
  end; returns the last phase's row. A stop (a signal, `stop_at_step`) ends it within its phase."""
  config = config.copy_and_resolve_references()
  phases = phases_of(config)
  latest = _latest_step(workdir) or 0
  first = max(i for i, p in enumerate(phases) if p.start_step <= latest)
  row: dict = {}
  for i, phase in enumerate(phases[first:], first):
    last = i == len(phases) - 1
    stop = None if last else phase.end_step
    if (
      stop_at_step is not None and phase.start_step < stop_at_step and (last or stop_at_step < stop)
    ):
      stop = stop_at_step
    _logger.info(
      "phase %s: steps %d..%d with %s",
      phase.name,
      phase.start_step,
      phase.end_step,
      ", ".join(
        f"{s}.{k}={v}"
        for s, o in (("data", phase.data), ("train", phase.train))
        for k, v in o.items()
      )
      or "the config's data",
    )
    row = train_phase(phase_config(config, phase), workdir, stop_at_step=stop)
    if last or row.get("step", phase.end_step) < phase.end_step or stop_at_step == phase.end_step:
      return row
  return row


def changed_by_phase(saved: dict, config) -> frozenset[str]:
  """The data keys (`data.<key>`) a resume may change silently: those that the checkpoint's phase or
  this run's phase sets, when the two differ; none within one phase or without phases."""
  before = (saved.get("train") or {}).get("phase")
  now = config.train.get("phase")
  if not before or not now or before == now:
    return frozenset()
  keys = set()
  for phases, name in (((saved.get("train") or {}).get("phases") or {}, before),
                       (config.train.get("phases") or {}, now)):  # fmt: skip
    phase = phases.get(name) or {}
    keys.update(f"data.{k}" for k in (phase.get("data") or {}))
  return frozenset(keys)


def restore_stream(stream, restored, config) -> None:
  """Puts `stream` (this phase's) at the checkpoint's data position when the position is of this
  phase; leaves it at example 0 when the checkpoint ends the previous phase."""
  saved_phase = ((restored.config or {}).get("train") or {}).get("phase")
  phase = config.train.get("phase")
  if saved_phase == phase:
    stream.set_state(restored.data)
    return
  start = (config.train.phases.get(phase) or {}).get("start_step")
  if restored.step != start:
    raise PretrainError(
      f"the checkpoint of step {restored.step} is of phase {saved_phase!r}, but phase {phase!r} "
      f"starts at step {start}: the newest checkpoint was unreadable (moved aside), so run the "
      f"command again to go on with phase {saved_phase!r} from step {restored.step}"
    )
  _logger.info("phase %s starts its example stream at 0 (step %d)", phase, restored.step)
