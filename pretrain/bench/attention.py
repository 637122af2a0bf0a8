"""Forward+backward time and memory of each attention backend, alone and inside a BERT-base layer.

  python -m pretrain.bench.attention
  python -m pretrain.bench.attention --seq_lens=128,512 --dtype=bfloat16 --json_out=attention.json
  python -m pretrain.bench.attention --interpret --seq_lens=128 --backends=pallas_gpu,splash_tpu --iters=1

For every requested backend of pretrain/models/attention/ and every sequence
length, two cases are compiled and timed:

* attention: `dot_product_attention` alone on q, k, v of `[batch, length,
  heads, head_dim]` (BERT-base: 12 x 64) in the compute dtype, with BERT's
  padding mask (all tokens real), gradients for q, k and v;
* layer: `BertLayer` of families/bert/model.py (hidden heads * head_dim, intermediate
  4 * hidden, dropout off) on float32 activations, gradients for its
  parameters and its input.

A timed call is one jitted forward + backward (`jax.vjp` with a fixed
cotangent). Compilation (trace + lower + compile) is timed apart; then come
`--warmup` untimed calls and `--iters` timed ones, each ended by
`jax.block_until_ready`; the median is reported.

Peak memory is the compiled executable's `memory_analysis()` (temp +
argument + output bytes): a per-case figure on every platform. A device's
`memory_stats()['peak_bytes_in_use']` cannot be reset between cases, so it is
only recorded alongside (`device_peak_bytes_in_use`, the process's high-water
mark so far) where the platform has it.

A backend the platform cannot run at a shape (the Pallas kernels off their
hardware, unless --interpret runs them in the Pallas interpreter, which is slow
and for checking only) would silently fall back to 'xla'; it is listed as
skipped with `resolve_backend`'s reason instead. So is 'auto' when it resolves
to a backend that is timed in its own row. Every timed row records the backend
that ran and why (recorded at trace time, `attention.recording()`).

TFLOP/s counts matmul FLOPs: attention 4 * B * H * L^2 * D forward and twice
that backward; the layer adds its q/k/v/out and FFN projections (BERT's count,
`bert.forward_flops_per_sequence`), also x3 for forward + backward.
"""

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.bench import common
from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.families.bert import model as bert_model
from pretrain.models import layers

CASES = ("attention", "layer")
DEFAULT_SEQ_LENS = (128, 256, 512, 1024, 2048)
MEMORY_SOURCE = "compiled memory_analysis(): temp + argument + output bytes"
_MIB = 2.0**20


@dataclasses.dataclass(frozen=True)
class Shape:
  """The sizes every case shares; defaults are BERT-base's attention."""

  batch: int = 1
  num_heads: int = 12
  head_dim: int = 64
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("batch", "num_heads", "head_dim"):
      if getattr(self, name) < 1:
        raise PretrainError(f"{name}={getattr(self, name)} must be positive")
    layers.check_dtype_and_remat(self.dtype, "none")

  @property
  def hidden_size(self) -> int:
    return self.num_heads * self.head_dim


@dataclasses.dataclass
class Case:
  """One jitted forward + backward to time: `fn(*args)` -> (forward output, gradients)."""

  kind: str  # One of CASES.
  backend: str  # As requested.
  seq_len: int
  shape: Shape
  fn: Callable[..., Any]
  args: tuple
  flops: float  # Matmul FLOPs of one forward + backward.


def default_batch(platform_name: str) -> int:
  """1 on CPU (a BERT-base layer at 2048 tokens takes seconds there), 8 on accelerators."""
  return 1 if platform_name == "cpu" else 8


def attention_flops(shape: Shape, seq_len: int) -> float:
  """Forward + backward: 4 * B * H * L^2 * D forward (q k^T and probs v), twice that backward."""
  return 3.0 * 4 * shape.batch * shape.num_heads * seq_len**2 * shape.head_dim


def _features(shape: Shape, seq_len: int) -> attention.AttentionFeatures:
  """What both cases ask of a backend: padded self-attention, as BertEncoder calls it."""
  return attention.AttentionFeatures(
    padding=True, self_attention=True, dtype=shape.dtype, q_length=seq_len, kv_length=seq_len
  )


def skip_reason(
  backend: str, seq_len: int, shape: Shape, *, interpret: bool = False, timed: tuple[str, ...] = ()
) -> str | None:
  """Why (backend, seq_len) is not timed on this platform; None when it is.

  A backend that would fall back to 'xla' is skipped with the fallback's
  reason; 'auto' is skipped when it resolves to a backend in `timed`.
  """
  platform_name = jax.default_backend()
  resolved, reason = attention.resolve_backend(
    backend, _features(shape, seq_len), platform_name, interpret=interpret
  )
  if backend == "auto":
    if resolved in timed:
      return f"auto resolves to {resolved} ({reason}); timed in the {resolved} row"
    return None
  if resolved != backend:
    return reason
  return None


def attention_case(
  backend: str, seq_len: int, shape: Shape, *, interpret: bool = False, seed: int = 0
) -> Case:
  """`dot_product_attention` alone, q/k/v in the compute dtype, gradients for q, k and v."""
  dtype = jnp.dtype(shape.dtype)
  rng = np.random.default_rng(seed)
  qkv_shape = (shape.batch, seq_len, shape.num_heads, shape.head_dim)
  query, key, value = (jnp.asarray(rng.standard_normal(qkv_shape), dtype) for _ in range(3))
  cotangent = jnp.asarray(rng.standard_normal(qkv_shape), jnp.float32)  # The output is float32.
  input_mask = jnp.ones((shape.batch, seq_len), jnp.int32)

  def fwd_bwd(query, key, value, input_mask, cotangent):
    mask = attention.AttentionMask(input_mask=input_mask)

    def attend(q, k, v):
      return attention.dot_product_attention(
        q, k, v, mask=mask, backend=backend, dtype=dtype, self_attention=True, interpret=interpret
      )

    out, vjp = jax.vjp(attend, query, key, value)  # [batch, length, heads, head_dim]
    return out, vjp(cotangent)

  return Case(
    "attention",
    backend,
    seq_len,
    shape,
    fwd_bwd,
    (query, key, value, input_mask, cotangent),
    attention_flops(shape, seq_len),
  )


def layer_config(backend: str, shape: Shape, *, interpret: bool = False) -> bert_model.BertConfig:
  """A one-layer BERT of the shape (intermediate 4 x hidden), dropout off, no heads."""
  return bert_model.BertConfig(
    vocab_size=30522,
    hidden_size=shape.hidden_size,
    num_layers=1,
    num_heads=shape.num_heads,
    intermediate_size=4 * shape.hidden_size,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype=shape.dtype,
    pooler=False,
    nsp_head=False,
    attention=attention.AttentionConfig(backend=backend, position="learned", interpret=interpret),
  )


def layer_case(
  backend: str, seq_len: int, shape: Shape, *, interpret: bool = False, seed: int = 0
) -> Case:
  """One `BertLayer`, gradients for its parameters and its input."""
  config = layer_config(backend, shape, interpret=interpret)
  layer = bert_model.BertLayer(config)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((shape.batch, seq_len, shape.hidden_size)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  input_mask = jnp.ones((shape.batch, seq_len), jnp.int32)
  mask = attention.AttentionMask(input_mask=input_mask)
  # Initialization traces the attention too: the benchmark resets the record before compiling.
  params = nn.unbox(
    jax.jit(layer.init, static_argnums=(4,))(jax.random.key(seed), x, mask, None, True)
  )["params"]

  def fwd_bwd(params, x, input_mask, cotangent):
    mask = attention.AttentionMask(input_mask=input_mask)
    apply = lambda p, x: layer.apply({"params": p}, x, mask, None, True)
    out, vjp = jax.vjp(apply, params, x)  # [batch, length, hidden]
    return out, vjp(cotangent)

  # Without pooler, NSP head or predictions, the model's count is exactly one layer's.
  flops = 3.0 * bert_model.forward_flops_per_sequence(config, seq_len, 0) * shape.batch
  return Case("layer", backend, seq_len, shape, fwd_bwd, (params, x, input_mask, cotangent), flops)


def build_case(
  kind: str, backend: str, seq_len: int, shape: Shape, *, interpret: bool = False
) -> Case:
  if kind not in CASES:
    raise PretrainError(f"unknown case {kind!r}; valid: {', '.join(CASES)}")
  attention.check_backend(backend)
  build = attention_case if kind == "attention" else layer_case
  return build(backend, seq_len, shape, interpret=interpret)


def _record(case: Case) -> dict:
  return {
    "case": case.kind,
    "backend": case.backend,
    "seq_len": case.seq_len,
    "batch": case.shape.batch,
    "num_heads": case.shape.num_heads,
    "head_dim": case.shape.head_dim,
    "dtype": case.shape.dtype,
  }


def measure(case: Case, *, iters: int = 10, warmup: int = 2) -> tuple[dict, Any]:
  """Compiles and times one case: (its record, the executable's last (output, gradients))."""
  if iters < 1 or warmup < 0:
    raise PretrainError(f"iters={iters} must be positive and warmup={warmup} non-negative")
  with (
    attention.recording() as resolutions
  ):  # Each attention call resolves its backend while tracing.
    t0 = time.perf_counter()
    compiled = jax.jit(case.fn).lower(*case.args).compile()
    compile_seconds = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  peak_bytes = (
    memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
  )

  outputs = None
  for _ in range(warmup):
    outputs = jax.block_until_ready(compiled(*case.args))
  seconds = []
  for _ in range(iters):
    t0 = time.perf_counter()
    outputs = jax.block_until_ready(compiled(*case.args))
    seconds.append(time.perf_counter() - t0)

  step = statistics.median(seconds)
  tokens = case.shape.batch * case.seq_len
  record = _record(case)
  record.update(
    ran=", ".join(sorted({r.backend for r in resolutions})),
    reason="; ".join(r.reason for r in resolutions),
    seconds=seconds,
    step_seconds=step,
    tokens_per_sec=tokens / step,
    flops=case.flops,
    tflops_per_sec=case.flops / step / 1e12,
    peak_bytes=int(peak_bytes),
    temp_bytes=int(memory.temp_size_in_bytes),
    argument_bytes=int(memory.argument_size_in_bytes),
    output_bytes=int(memory.output_size_in_bytes),
    compile_seconds=compile_seconds,
  )
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    record["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return record, outputs


def run_benchmark(
  *,
  seq_lens=DEFAULT_SEQ_LENS,
  backends=attention.BACKENDS,
  cases=CASES,
  shape: Shape = Shape(),
  iters: int = 10,
  warmup: int = 2,
  interpret: bool = False,
  log: Callable[[str], None] = lambda s: None,
) -> dict:
  """Every (case, backend, seq_len) timed or skipped with its reason, as one JSON-able dict."""
  seq_lens = tuple(int(n) for n in seq_lens)
  if not seq_lens or min(seq_lens) < 1:
    raise PretrainError(f"seq_lens {list(seq_lens)} must be positive lengths (at least one)")
  for backend in backends:
    attention.check_backend(backend)
  for kind in cases:
    if kind not in CASES:
      raise PretrainError(f"unknown case {kind!r}; valid: {', '.join(CASES)}")
  if iters < 1 or warmup < 0:
    raise PretrainError(f"iters={iters} must be positive and warmup={warmup} non-negative")
  device = jax.devices()[0]
  results: dict[str, Any] = {
    **common.environment(
      f"{device.device_kind} ({device.platform}), {os.cpu_count()} CPU cores", jaxlib=True
    ),
    "platform": jax.default_backend(),
    "shape": dataclasses.asdict(shape),
    "iters": iters,
    "warmup": warmup,
    "interpret": interpret,
    "memory_source": MEMORY_SOURCE,
    "records": [],
  }
  timed = tuple(b for b in backends if b != "auto")
  for kind in cases:
    for backend in backends:
      for seq_len in seq_lens:
        probe = Case(kind, backend, seq_len, shape, None, (), 0.0)
        reason = skip_reason(backend, seq_len, shape, interpret=interpret, timed=timed)
        if reason is not None:
          results["records"].append(dict(_record(probe), skipped=reason))
          continue
        log(f"{kind} {backend} seq {seq_len} ...")
        record, _ = measure(
          build_case(kind, backend, seq_len, shape, interpret=interpret), iters=iters, warmup=warmup
        )
        results["records"].append(record)
  return results


def format_table(results: dict) -> str:
  """The records as a readable plain-text table; consecutive skips of one reason share a line."""
  s = results["shape"]
  lines = [
    common.environment_line(results),
    f"batch {s['batch']}, {s['num_heads']} heads x {s['head_dim']}, {s['dtype']}; median of "
    f"{results['iters']} fwd+bwd after {results['warmup']} warmup"
    + ("; Pallas interpreter on" if results["interpret"] else ""),
    "",
  ]
  header = (
    f"{'case':10}{'backend':23}{'seq':>6}{'fwd+bwd ms':>12}{'tokens/s':>11}{'TFLOP/s':>9}"
    f"{'peak MiB':>10}{'compile s':>10}"
  )
  lines += [header, "-" * len(header)]
  notes: dict[str, None] = {}
  records = results["records"]
  i = 0
  while i < len(records):
    r = records[i]
    if "skipped" in r:
      j = i
      while (
        j + 1 < len(records)
        and records[j + 1].get("skipped") == r["skipped"]
        and (records[j + 1]["case"], records[j + 1]["backend"]) == (r["case"], r["backend"])
      ):
        j += 1
      lengths = ",".join(str(records[k]["seq_len"]) for k in range(i, j + 1))
      lines.append(f"{r['case']:10}{r['backend']:23}  skipped at seq {lengths}: {r['skipped']}")
      i = j + 1
      continue
    name = r["backend"] if r["ran"] == r["backend"] else f"{r['backend']}->{r['ran']}"
    lines.append(
      f"{r['case']:10}{name:23}{r['seq_len']:>6}{r['step_seconds'] * 1e3:>12.2f}"
      f"{r['tokens_per_sec']:>11,.0f}{r['tflops_per_sec']:>9.4f}{r['peak_bytes'] / _MIB:>10.2f}"
      f"{r['compile_seconds']:>10.2f}"
    )
    if r["reason"] != "requested":
      notes[f"{r['backend']}: {r['reason']}"] = None
    i += 1
  lines += [
    "",
    f"peak memory: {results['memory_source']}",
    "TFLOP/s: attention 12*B*H*L^2*D per fwd+bwd; layer adds its projections and FFN (x3)",
  ]
  device_peaks = [r["device_peak_bytes_in_use"] for r in records if "device_peak_bytes_in_use" in r]
  if device_peaks:
    lines.append(
      f"device peak_bytes_in_use (the process's high-water mark, not per case): "
      f"{max(device_peaks) / _MIB:,.1f} MiB"
    )
  lines += [f"backend {note}" for note in notes]
  return "\n".join(lines)


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  flags.DEFINE_list("seq_lens", [str(n) for n in DEFAULT_SEQ_LENS], "Sequence lengths.")
  flags.DEFINE_list(
    "backends", list(attention.BACKENDS), "Attention backends to time (or list as skipped)."
  )
  flags.DEFINE_list(
    "cases", list(CASES), "attention (the op alone) and/or layer (a BERT encoder layer)."
  )
  flags.DEFINE_enum("dtype", "float32", list(layers.DTYPES), "Matmul compute dtype.")
  flags.DEFINE_integer("batch", 0, "Batch size; 0: 1 on CPU, 8 on GPU/TPU.")
  flags.DEFINE_integer(
    "num_heads", 12, "Attention heads (the layer's hidden size is heads * head_dim)."
  )
  flags.DEFINE_integer("head_dim", 64, "Size of each head.")
  flags.DEFINE_integer("iters", 10, "Timed calls per case; the median is reported.")
  flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
  flags.DEFINE_bool(
    "interpret",
    attention.interpret_default(),
    f"Run the Pallas kernels in the Pallas interpreter (slow; for checking); default from "
    f"{attention.INTERPRET_ENV}.",
  )
  flags.DEFINE_string("json_out", "", "Also write the results here as JSON.")


def _measure() -> dict:
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  try:
    seq_lens = tuple(int(n) for n in FLAGS.seq_lens)
  except ValueError as e:
    raise PretrainError(f"--seq_lens={','.join(FLAGS.seq_lens)}: lengths must be integers") from e
  shape = Shape(
    batch=FLAGS.batch or default_batch(jax.default_backend()),
    num_heads=FLAGS.num_heads,
    head_dim=FLAGS.head_dim,
    dtype=FLAGS.dtype,
  )
  return run_benchmark(
    seq_lens=seq_lens,
    backends=tuple(FLAGS.backends),
    cases=tuple(FLAGS.cases),
    shape=shape,
    iters=FLAGS.iters,
    warmup=FLAGS.warmup,
    interpret=FLAGS.interpret,
    log=common.log,
  )


def main(argv):
  del argv
  common.run_main(_measure, format_table, flags.FLAGS.json_out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
