"""The vocabulary head and its cross entropy: plain against chunked, speed and compiled memory.

  python -m pretrain.bench.loss                       # GPT-2 small's head: 768 -> 50,257, 8 x 128 tokens
  python -m pretrain.bench.loss --tokens=4096 --chunk_sizes=256,1024 --dtypes=bfloat16

Times forward+backward of sum(cross entropy) over `tokens` tokens through a tied [vocab, hidden]
projection (GPT-2's head, `layers.Embed.attend`), the plain way (`losses.cross_entropy` of the
whole batch's logits) and with `losses.chunked_cross_entropy` at each chunk size, interleaved
round robin (timing.py), and reads each compiled program's temporary memory
(`memory_analysis().temp_size_in_bytes`): the plain program holds the [tokens, vocab] float32
logits and their gradient, the chunked one a chunk's.
"""

import os
from typing import Callable

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.bench import common
from pretrain.bench.timing import Case, run_cases
from pretrain.errors import PretrainError
from pretrain.models import layers
from pretrain.objectives import losses


def head_case(vocab: int, hidden: int, tokens: int, dtype: str, chunk_size: int) -> Case:
  """Forward+backward of the head's summed cross entropy; chunk_size 0 is the plain loss."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((tokens, hidden), np.float32))
  table = jnp.asarray(rng.normal(0.0, 0.02, (vocab, hidden)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, vocab, tokens), jnp.int32)

  def objective(x, table):
    if chunk_size:
      nll = losses.chunked_cross_entropy(x, table, labels, chunk_size=chunk_size, dtype=dtype)[0]
    else:
      nll = losses.cross_entropy(layers.matmul(x, table, (1, 1), dtype), labels)[0]
    return jnp.mean(nll)

  compiled = jax.jit(jax.grad(objective, (0, 1))).lower(x, table).compile()
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes

  def run(n):
    for _ in range(n):
      r = compiled(x, table)
    jax.block_until_ready(r)

  def report(t):
    return {
      "loss": f"chunked {chunk_size}" if chunk_size else "plain",
      "dtype": dtype,
      "step_ms": t.step_seconds * 1e3,
      "window_ms": [w * 1e3 for w in t.window_step_seconds],
      "tokens_per_sec": tokens / t.step_seconds,
      "gflops_per_sec": 3 * 2 * tokens * hidden * vocab / t.step_seconds / 1e9,
      "temp_mib": temp_bytes / 2**20,
    }

  label = f"head {dtype} {'chunked %d' % chunk_size if chunk_size else 'plain'}"
  return Case(label, run, report, steps=2, warmup=1)


def run_benchmark(
  *,
  vocab: int = 50257,
  hidden: int = 768,
  tokens: int = 1024,
  chunk_sizes=(128, 256),
  dtypes=("float32", "bfloat16"),
  windows: int = 3,
  log: Callable[[str], None] = lambda s: None,
) -> dict:
  """Every (dtype, plain or chunk size) case timed, with its compiled temporary memory."""
  if min(vocab, hidden, tokens) < 1 or any(c < 1 for c in chunk_sizes):
    raise PretrainError("vocab, hidden, tokens and every chunk size must be positive")
  for dtype in dtypes:
    layers.check_dtype_and_remat(dtype, "none")
  device = jax.devices()[0]
  results = {
    **common.environment(f"{device.device_kind} ({device.platform}), {os.cpu_count()} CPU cores"),
    "shape": {"vocab": vocab, "hidden": hidden, "tokens": tokens},
    "logits_mib": tokens * vocab * 4 / 2**20,
  }
  cases = []
  for dtype in dtypes:
    for chunk_size in (0, *chunk_sizes):
      log(f"compiling the {dtype} head, chunk size {chunk_size or 'none'} ...")
      cases.append(head_case(vocab, hidden, tokens, dtype, chunk_size))
  log(f"timing {len(cases)} cases, {windows} windows each, round robin ...")
  results["rows"] = run_cases(cases, windows)
  return results


def format_table(results: dict) -> str:
  s = results["shape"]
  lines = [
    f"vocabulary head [{s['tokens']} x {s['hidden']}] x [{s['hidden']} x {s['vocab']}], "
    f"forward+backward of the cross entropy; one batch's float32 logits: "
    f"{results['logits_mib']:,.0f} MiB",
    common.environment_line(results),
    "",
    f"{'':24}{'step ms':>9}{'windows min-max':>17}{'tokens/s':>10}{'GFLOP/s':>9}{'temp MiB':>10}",
  ]
  for r in results["rows"]:
    spread = f"{min(r['window_ms']):.0f}-{max(r['window_ms']):.0f}"
    lines.append(
      f"{r['dtype'] + ' ' + r['loss']:24}{r['step_ms']:>9.1f}{spread:>17}{r['tokens_per_sec']:>10,.0f}"
      f"{r['gflops_per_sec']:>9.1f}{r['temp_mib']:>10,.1f}"
    )
  return "\n".join(lines)


def define_flags() -> None:
  flags.DEFINE_integer("vocab", 50257, "Vocabulary size (GPT-2's).")
  flags.DEFINE_integer("hidden", 768, "Hidden size (GPT-2 small's).")
  flags.DEFINE_integer("tokens", 1024, "Tokens per step (batch x sequence length).")
  flags.DEFINE_list("chunk_sizes", ["128", "256"], "Chunk sizes of the chunked loss.")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of the projection.")
  flags.DEFINE_integer("windows", 3, "Timing windows; the median window is reported.")
  flags.DEFINE_string("json_out", "", "Also write the results here as JSON.")


def main(argv):
  del argv
  f = flags.FLAGS
  common.run_main(
    lambda: run_benchmark(
      vocab=f.vocab,
      hidden=f.hidden,
      tokens=f.tokens,
      chunk_sizes=tuple(int(c) for c in f.chunk_sizes),
      dtypes=tuple(f.dtypes),
      windows=f.windows,
      log=common.log,
    ),
    format_table,
    f.json_out,
  )


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  define_flags()
  app.run(main)
