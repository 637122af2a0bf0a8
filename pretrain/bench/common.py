"""What every benchmark CLI shares: the environment a result was measured in, and `main`'s shape."""

import datetime
import json
import os
import platform
import sys
from typing import Callable

from pretrain import cli
from pretrain import host_allocator
from pretrain.bench import capability
from pretrain.errors import PretrainError


def versions(*, jaxlib: bool = False, hf: bool = False) -> dict:
  """Versions of what the figures depend on: jax and python; jaxlib and torch/transformers when asked."""
  import jax  # pylint: disable=g-import-not-at-top  (bench.data's children time their own imports)

  v = {"jax": jax.__version__}
  if jaxlib:
    v["jaxlib"] = jax.lib.__version__
  v["python"] = platform.python_version()
  if hf:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      import transformers  # pylint: disable=g-import-not-at-top

      v.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
      pass
  return v


def environment(device: str, **version_options) -> dict:
  """The date, device, CPU and its bf16 capability, versions, XLA_FLAGS and host malloc of a result."""
  return {
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "device": device,
    **capability.describe_cpu(),
    "versions": versions(**version_options),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "host_allocator": host_allocator.state,
  }


def environment_line(results: dict) -> str:
  """`environment`'s device, CPU, versions, XLA_FLAGS and host malloc as a table's first line."""
  cpu = (
    f"CPU {results['cpu']}, bf16 capability {results['bf16_capability']}; "
    if "bf16_capability" in results
    else ""
  )
  return (
    f"{results['device']}; {cpu}"
    + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    + (f"; XLA_FLAGS={results['xla_flags']}" if results["xla_flags"] else "")
    + (f"; host malloc {results['host_allocator']}" if "host_allocator" in results else "")
  )


def log(line: str) -> None:
  """Progress, on stderr."""
  print(line, file=sys.stderr, flush=True)


def run_main(
  measure: Callable[[], dict], format_table: Callable[[dict], str], json_out: str = ""
) -> None:
  """Runs `measure`, prints its table, and writes its results as JSON to `json_out` ('-': stdout).

  A PretrainError is a one-line error and exit status 2.
  """
  cli.quiet_library_logs()
  try:
    results = measure()
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(results))
  if json_out == "-":
    print(json.dumps(results))
  elif json_out:
    with open(json_out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
