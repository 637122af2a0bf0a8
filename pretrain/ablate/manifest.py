"""The sweep manifest, DIR/sweep.json: what the jobs in a sweep directory were trained with.

The first run writes it; every later run (another machine's `--variant`, a
rerun, `--report_only`) compares its own sweep with it and refuses a
different base config, budget, seeds, seed keys, probe, or a changed variant,
so one report never mixes jobs of two sweeps. A sweep may add variants: they
join the manifest.
"""

import json
import os
from typing import Any

from etils import epath

from pretrain.ablate import sweep as sweep_lib
from pretrain.errors import PretrainError

MANIFEST = "sweep.json"
# Compared as a whole; `variants` and `plans` per variant, so that new variants can join.
SHARED = ("base_config", "budget", "seeds", "seed_keys", "probe")


def _plain(value: Any) -> Any:
  """JSON's view of a value (tuples become lists), as the manifest file holds it."""
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def build(
  base_config, budget: dict, settings, configs: dict, plans: dict, probe: dict | None
) -> dict:
  return _plain(
    {
      "base_config": base_config.to_dict(),
      "budget": budget,
      "seeds": settings.seeds,
      "seed_keys": list(settings.seed_keys),
      "probe": probe,
      "variants": {name: c.to_dict() for name, c in configs.items()},
      "plans": {name: vars(p) for name, p in plans.items()},
    }
  )


def read(workdir: str) -> dict | None:
  path = epath.Path(workdir) / MANIFEST
  return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _differences(old: Any, new: Any, limit: int = 3) -> str:
  """'train.steps: 4 in the directory, 8 now; ...' for the first `limit` differing keys."""
  flat_old = sweep_lib.flatten(old) if isinstance(old, dict) else {"": old}
  flat_new = sweep_lib.flatten(new) if isinstance(new, dict) else {"": new}
  keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
  parts = [
    f"{k + ': ' if k else ''}{flat_old.get(k, '(absent)')!r} in the directory, "
    f"{flat_new.get(k, '(absent)')!r} now"
    for k in keys[:limit]
  ]
  return "; ".join(parts) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _mismatch(workdir: str, what: str, old: Any, new: Any) -> PretrainError:
  return PretrainError(
    f"{workdir} holds a sweep with another {what} ({_differences(old, new)}); its jobs would mix "
    "with this sweep's: use a new --workdir, or the sweep config that made it"
  )


def check(workdir: str, existing: dict, new: dict) -> dict:
  """The manifest after this run (existing plus new variants); PretrainError where they disagree."""
  for key in SHARED:
    if existing.get(key) != new[key]:
      what = {
        "base_config": "base config",
        "seeds": "number of seeds",
        "seed_keys": "set of seed keys",
      }.get(key, key)
      raise _mismatch(workdir, what, existing.get(key), new[key])
  merged = {**existing, "variants": dict(existing["variants"]), "plans": dict(existing["plans"])}
  for name, config in new["variants"].items():
    if name in existing["variants"] and existing["variants"][name] != config:
      raise _mismatch(workdir, f"config for variant {name}", existing["variants"][name], config)
    if name in existing["plans"] and existing["plans"][name] != new["plans"][name]:
      raise _mismatch(
        workdir, f"budget plan for variant {name}", existing["plans"][name], new["plans"][name]
      )
    merged["variants"][name] = config
    merged["plans"][name] = new["plans"][name]
  return merged


def unrecorded_jobs(workdir: str) -> list[str]:
  """Job folders in a directory that has no manifest (an older runner's DIR/<variant>/result.json)."""
  root = epath.Path(workdir)
  if not root.is_dir():
    return []
  return sorted(
    os.path.join(p.parent.name, p.name)
    for pattern in ("*/result.json", "*/seed_*")
    for p in root.glob(pattern)
  )


def checked(workdir: str, new: dict) -> dict:
  """The manifest this sweep leaves in `workdir`; PretrainError for a directory of another sweep."""
  existing = read(workdir)
  found = unrecorded_jobs(workdir) if existing is None else []
  if found:  # Another machine of the same sweep may have written it since: read it once more.
    existing = read(workdir)
  if existing is not None:
    return check(workdir, existing, new)
  if found:
    raise PretrainError(
      f"{workdir} holds jobs ({', '.join(found[:3])}) but no {MANIFEST} saying which sweep made "
      "them; refusing to mix them with this sweep's: use a new --workdir"
    )
  return new


def write(workdir: str, recorded: dict) -> None:
  if recorded != read(workdir):
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    (epath.Path(workdir) / MANIFEST).write_text(
      json.dumps(recorded, indent=1, sort_keys=True), encoding="utf-8"
    )
