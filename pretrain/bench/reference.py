"""The HF torch reference: the family's HF model of the identical shape, trained one step at a time.

What is particular to a family is its `hf_reference` module (pretrain/families/<name>/hf_reference.py,
found through the family registry), with these names:

  FULL_LENGTH_DATA              data options under which every example is full length (batches.py)
  tokenizer_vocab(config)       the tokenizer size the config implies (the task is built on a stand-in)
  describe(task, batch_size)    the one-line model description heading the results
  ffn_dims(task)                (hidden, ffn): the FFN's matmul sizes the matmul peak is measured at
  build(transformers, task, batch)  (the HF torch model, randomly initialised from a config object, and
                                its keyword inputs with labels, from a batch of the task)
  flops_per_example(task)       model FLOPs of HF's training step per example
  notes(task)                   how HF's step's work differs from the project's
"""

import importlib
import os

import numpy as np

from pretrain import metrics as metrics_lib
from pretrain.bench import batches
from pretrain.bench.timing import Case, throughput
from pretrain.errors import PretrainError

HF_DTYPES = ("float32", "bf16-autocast")
INTERFACE = (
  "FULL_LENGTH_DATA",
  "tokenizer_vocab",
  "describe",
  "ffn_dims",
  "build",
  "flops_per_example",
  "notes",
)


def hf_available() -> bool:
  """Whether torch and transformers import."""
  try:
    for name in ("torch", "transformers"):
      importlib.import_module(name)
  except ImportError:
    return False
  return True


def long_tensor(x: np.ndarray):
  """int64 torch tensor of an array (HF's ids and labels)."""
  import torch  # pylint: disable=g-import-not-at-top

  return torch.from_numpy(np.ascontiguousarray(x).astype(np.int64))


# Shared by the families whose model config has BERT's field names.


def tokenizer_vocab(config) -> int:
  """`model.vocab_size`, or the tokenizer's when 0: for a family whose model vocabulary is the tokenizer's."""
  return int(config.model.vocab_size) or int(config.tokenizer.vocab_size)


def layers_shape(m, batch_size: int, seq_len: int) -> str:
  """A model config's num_layers, hidden_size, num_heads, intermediate_size and vocab_size, and the batch."""
  return (
    f"L{m.num_layers} H{m.hidden_size} A{m.num_heads} I{m.intermediate_size} vocab {m.vocab_size}, "
    f"batch {batch_size} x seq {seq_len}"
  )


def ffn_dims(task) -> tuple[int, int]:
  """(hidden_size, intermediate_size) of the task's model config."""
  return task.model_config.hidden_size, task.model_config.intermediate_size


def hf_flops_per_example(task) -> float:
  """Model FLOPs of HF's training step per example (an MLM head projects every position)."""
  return batches.family_reference(task.name).flops_per_example(task)


def reference_notes(config) -> list[str]:
  """How the HF reference step's work differs from the project's."""
  task = batches.bench_task(config)
  notes = list(batches.family_reference(task.name).notes(task))
  name = config.optimizer.name
  if name != "adamw":
    notes.append(
      f"the project's step updates with its config's optimizer ({name}); HF's with torch AdamW."
    )
  return notes


def hf_case(config, autocast: bool, *, steps: int = 5, max_seconds: float = float("inf")) -> Case:
  """The HF torch model of the task's family + torch AdamW, identical shape: one training step."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  task = batches.bench_task(config)
  batch_size = int(config.train.batch_size)
  ref = batches.family_reference(task.name)
  model, inputs = ref.build(transformers, task, batches.task_batch(task, batch_size))
  model.train()
  opt_cfg = config.optimizer
  optimizer = torch.optim.AdamW(
    model.parameters(),
    lr=opt_cfg.learning_rate,
    betas=(opt_cfg.b1, opt_cfg.b2),
    eps=opt_cfg.eps,
    weight_decay=opt_cfg.weight_decay,
  )
  clip = float(opt_cfg.grad_clip_norm or 0.0)

  def run(n):
    for _ in range(n):
      optimizer.zero_grad(set_to_none=True)
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**inputs).loss
      loss.backward()
      if clip > 0:  # The project's step clips too.
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
      optimizer.step()

  dtype = "bf16-autocast" if autocast else "float32"

  def report(timing):
    flops = ref.flops_per_example(task) * batch_size
    peak = metrics_lib.peak_flops_per_device(config.metrics)
    row = throughput("hf_torch", dtype, timing, batch_size * task.tokens_per_example, flops, peak)
    row.update(
      model=type(model).__name__,
      flops_per_example=ref.flops_per_example(task),
      num_params=sum(p.numel() for p in model.parameters()),
      attn_implementation=getattr(model.config, "_attn_implementation", None),
    )
    return row

  # No compilation to warm up: one step allocates the optimizer state.
  return Case(f"HF torch {dtype}", run, report, steps=steps, warmup=1, max_seconds=max_seconds)


def check_dtypes(reference_dtypes) -> None:
  for hf_dtype in reference_dtypes:
    if hf_dtype not in HF_DTYPES:
      raise PretrainError(f"reference dtype {hf_dtype!r}: expected one of {', '.join(HF_DTYPES)}")
