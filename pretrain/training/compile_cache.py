"""jax's persistent compilation cache for a run, and what it saved.

`train.compilation_cache_dir` (a local folder or gs://) makes jax keep every
compiled executable there, so a restarted or preempted job loads its train and
eval steps instead of compiling them again. Programs that compiled faster than
`train.compilation_cache_min_compile_seconds` are not written (jax's default,
1 s; 0 caches every program, small CPU ones too).

The cache is trusted code: a process loads executables from it, so only point
it at a folder that nobody else can write to.

`CacheWatch` counts jax's cache events while it is open: hits, misses, and the
compile seconds the hits saved (jax stores each entry's compile time with it
and reports that time, less the read, on a hit).
"""

import dataclasses
import logging

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from pretrain.errors import PretrainError

_logger = logging.getLogger("pretrain.train")

HIT_EVENT = "/jax/compilation_cache/cache_hits"
MISS_EVENT = "/jax/compilation_cache/cache_misses"
SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"

_OPTIONS = {
  "cache_dir": "jax_compilation_cache_dir",
  "min_compile_seconds": "jax_persistent_cache_min_compile_time_secs",
  # -1: no size floor, and jax keeps it (0 lets jax pick a floor for the filesystem).
  "min_entry_bytes": "jax_persistent_cache_min_entry_size_bytes",
}


def check(train_cfg) -> None:
  """PretrainError for a cache key outside its domain."""
  cache_dir = train_cfg.get("compilation_cache_dir", "")
  seconds = train_cfg.get("compilation_cache_min_compile_seconds", 1.0)
  if not isinstance(cache_dir, str):
    raise PretrainError(
      f"train.compilation_cache_dir={cache_dir!r} must be a path or '' (no cache)"
    )
  if not isinstance(seconds, (int, float)) or not seconds >= 0:
    raise PretrainError(
      f"train.compilation_cache_min_compile_seconds={seconds!r} must be a number >= 0"
    )


@dataclasses.dataclass
class CacheWatch:
  """jax's compilation-cache events since `configure`; `close` ends the watch and restores jax's settings."""

  cache_dir: str
  hits: int = 0
  misses: int = 0
  saved_seconds: float = 0.0
  _previous: dict = dataclasses.field(default_factory=dict, repr=False)

  def _on_event(self, event: str, **_) -> None:
    if event == HIT_EVENT:
      self.hits += 1
    elif event == MISS_EVENT:
      self.misses += 1

  def _on_duration(self, event: str, seconds: float, **_) -> None:
    if event == SAVED_EVENT:
      self.saved_seconds += max(float(seconds), 0.0)

  def row(self) -> dict:
    """The cache's fields of a metrics row: this life's hits and misses."""
    return {"compile_cache_hits": self.hits, "compile_cache_misses": self.misses}

  def close(self) -> None:
    if not self.cache_dir:
      return
    jax.monitoring.unregister_event_listener(self._on_event)
    jax.monitoring.unregister_event_duration_listener(self._on_duration)
    for option, value in self._previous.items():
      jax.config.update(option, value)
    jax_cache.reset_cache()  # The next compile reads the restored settings.


def configure(train_cfg) -> CacheWatch:
  """Points jax's persistent cache at train.compilation_cache_dir ('' leaves jax as it is) and watches it."""
  check(train_cfg)
  cache_dir = train_cfg.get("compilation_cache_dir", "")
  watch = CacheWatch(cache_dir)
  if not cache_dir:
    return watch
  seconds = float(train_cfg.get("compilation_cache_min_compile_seconds", 1.0))
  settings = {"cache_dir": cache_dir, "min_compile_seconds": seconds}
  if seconds == 0:
    settings["min_entry_bytes"] = -1
  for key, value in settings.items():
    option = _OPTIONS[key]
    watch._previous[option] = getattr(jax.config, option)  # pylint: disable=protected-access
    jax.config.update(option, value)
  # jax decides once per process whether it uses a cache; a process that compiled before (tests, a
  # second run in one process) has decided already: reset makes the next compile open this one.
  jax_cache.reset_cache()
  jax.monitoring.register_event_listener(watch._on_event)  # pylint: disable=protected-access
  jax.monitoring.register_event_duration_secs_listener(watch._on_duration)  # pylint: disable=protected-access
  _logger.info("persistent compilation cache: %s", cache_dir)
  return watch
