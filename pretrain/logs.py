"""Logging helpers shared by the package."""

import logging

_logged: set[tuple[str, str]] = set()


def log_once(logger: logging.Logger, message: str, level: int = logging.WARNING) -> None:
  """Logs message on logger the first time this process sees it there (e.g. a fallback hit at every trace)."""
  key = (logger.name, message)
  if key not in _logged:
    _logged.add(key)
    logger.log(level, message)
