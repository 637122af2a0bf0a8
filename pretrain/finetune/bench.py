"""Fine-tuning step speed: the project's jitted classifier step next to HF torch BertForSequenceClassification.

  python -m pretrain.finetune.bench --config=configs/bert_tiny.py [--batch_size=32 --seq_len=128]

Both train the same shape: the config's BERT encoder with a 2-class pooled head,
AdamW, float32 (the project's step also in the config's compute dtype when
that is not float32), on the same random batch, timed window by window, round
robin (pretrain/bench/timing.py) in one process on this machine's devices.
Prints steps/s and examples/s of each.
"""

import json
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from pretrain import sharding
from pretrain.bench import common
from pretrain.bench import timing
from pretrain.data.special_tokens import StandInTokenizer
from pretrain.finetune import config as config_lib
from pretrain.finetune import heads
from pretrain.finetune import task as task_lib
from pretrain.training import step as step_lib
from pretrain.training.optimizer import make_optimizer

_NUM_LABELS = 2


def _run_config(pretraining, dtype: str, seq_len: int, batch: int, steps: int):
  c = config_lib.finetune_config("embedded")
  with c.unlocked():
    c.model = pretraining.model.copy_and_resolve_references()
    c.model.update(dtype=dtype, nsp_head=False, pooler=True)
    c.finetune.update(max_seq_length=seq_len, kind="classification")
    c.finetune.head = heads.POOLED
    c.finetune.num_outputs = _NUM_LABELS
  c.train.update(steps=steps, batch_size=batch)
  c.optimizer.warmup_steps = 1
  return c


def _batch(vocab: int, batch: int, seq_len: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
    "input_ids": rng.integers(5, vocab, (batch, seq_len)).astype(np.int32),
    "input_mask": np.ones((batch, seq_len), np.int32),
    "segment_ids": (np.arange(seq_len)[None] >= seq_len // 2).repeat(batch, 0).astype(np.int32),
    "labels": rng.integers(0, _NUM_LABELS, batch).astype(np.int32),
    "weights": np.ones(batch, np.float32),
  }


def project_case(pretraining, dtype: str, seq_len: int, batch: int) -> timing.Case:
  vocab = int(pretraining.model.vocab_size) or int(pretraining.tokenizer.vocab_size)
  c = _run_config(pretraining, dtype, seq_len, batch, 1000)
  task = task_lib.ClassifierTask(c, StandInTokenizer(vocab))
  mesh = sharding.make_mesh(c.mesh)
  tx, schedule = make_optimizer(c.optimizer, 1000)
  fns = step_lib.build(task, task.build_model(), tx, schedule, mesh, batch)
  step, _ = fns.compile_train_step()
  holder = {"state": fns.init_state(0)}
  data = sharding.make_global_batch(_batch(vocab, batch, seq_len), mesh)

  def run(n):
    for _ in range(n):
      holder["state"], metrics = step(holder["state"], data)
    jax.block_until_ready(metrics["loss"])

  return timing.Case(f"project ({dtype})", run, lambda t: _row(f"project {dtype}", t, batch))


def hf_case(pretraining, seq_len: int, batch: int) -> timing.Case:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  m = pretraining.model
  vocab = int(m.vocab_size) or int(pretraining.tokenizer.vocab_size)
  model = transformers.BertForSequenceClassification(
    transformers.BertConfig(
      vocab_size=vocab,
      hidden_size=m.hidden_size,
      num_hidden_layers=m.num_layers,
      num_attention_heads=m.num_heads,
      intermediate_size=m.intermediate_size,
      max_position_embeddings=m.max_position_embeddings,
      num_labels=_NUM_LABELS,
    )
  ).train()
  opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
  b = _batch(vocab, batch, seq_len)
  inputs = {
    "input_ids": torch.tensor(b["input_ids"], dtype=torch.long),
    "attention_mask": torch.tensor(b["input_mask"], dtype=torch.long),
    "token_type_ids": torch.tensor(b["segment_ids"], dtype=torch.long),
    "labels": torch.tensor(b["labels"], dtype=torch.long),
  }

  def run(n):
    for _ in range(n):
      opt.zero_grad()
      model(**inputs).loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()

  return timing.Case("HF torch (float32)", run, lambda t: _row("HF torch float32", t, batch))


def _row(name: str, t: timing.Timing, batch: int) -> dict:
  return {
    "name": name,
    "step_seconds": t.step_seconds,
    "steps_per_sec": 1 / t.step_seconds,
    "examples_per_sec": batch / t.step_seconds,
    "window_step_seconds": list(t.window_step_seconds),
  }


def main(argv):
  del argv
  f = flags.FLAGS
  pretraining = f.config
  dtypes = ["float32"] + ([pretraining.model.dtype] if pretraining.model.dtype != "float32" else [])
  common.log(f"compiling the project step ({', '.join(dtypes)}) ...")
  cases = [project_case(pretraining, d, f.seq_len, f.batch_size) for d in dtypes]
  cases.append(hf_case(pretraining, f.seq_len, f.batch_size))
  for c in cases:
    c.steps = f.steps
  rows = [c.report(t) for c, t in zip(cases, timing.measure(cases, f.windows))]
  env = common.environment(str(jax.devices()[0].device_kind), hf=True)
  print(common.environment_line(env))
  print(f"BERT classifier fine-tuning step, batch {f.batch_size} x {f.seq_len} tokens")
  print("| implementation | steps/s | examples/s |")
  print("|---|---|---|")
  for r in rows:
    print(f"| {r['name']} | {r['steps_per_sec']:.2f} | {r['examples_per_sec']:.1f} |")
  if f.json:
    json.dump({"environment": env, "rows": rows}, sys.stdout)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/bert_tiny.py", "A BERT pretraining config.")
  flags.DEFINE_integer("batch_size", 32, "Global batch.")
  flags.DEFINE_integer("seq_len", 128, "Tokens per example.")
  flags.DEFINE_integer("steps", 5, "Steps per timing window.")
  flags.DEFINE_integer("windows", 3, "Timing windows.")
  flags.DEFINE_bool("json", False, "Also print the results as JSON.")
  app.run(main)
