"""What every `python -m pretrain.<tool>` entry point shares."""

import logging

from absl import flags
from absl import logging as absl_logging


def quiet_library_logs() -> None:
  """Our INFO lines on stderr; libraries (orbax, grain, jax) only at WARNING unless --verbosity is given."""
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("pretrain").setLevel(logging.INFO)
