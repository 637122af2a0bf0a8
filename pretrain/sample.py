"""Look at what a checkpoint learned.

  python -m pretrain.sample --workdir=runs/bert_tiny --prompt="The [MASK] statement exits a loop."

Masked-LM checkpoints (bert, roberta): prints the top-k candidates for every
`[MASK]` in the prompt. The run's own config and tokenizer are read from the
checkpoint, so a sample always uses the vocabulary the model was trained with.
"""
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from pretrain import checkpoint as ckpt_lib
from pretrain import cli
from pretrain import tasks
from pretrain.data import tokenizer as tokenizer_lib
from pretrain.errors import PretrainError

MASK_TEXT = "[MASK]"
MLM_TASKS = ("bert", "roberta")


def load_run(workdir: str, step: int | None = None):
  """(config, tokenizer, task, params, step) of a workdir's checkpoint (the latest by default)."""
  checkpointer = ckpt_lib.Checkpointer(workdir, every_steps=0, keep=1)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise PretrainError(f"no checkpoint in {checkpointer.directory}")
    saved = checkpointer.restore_config(step)
    tok = saved.pop("_tokenizer", {})
    config = ml_collections.ConfigDict(saved)
    tokenizer = tokenizer_lib.Tokenizer(tok.get("path", ""))
    if tok.get("fingerprint") not in (None, tokenizer.fingerprint):
      raise PretrainError(f"the tokenizer at {tokenizer.path} changed since the checkpoint was written")
    task = tasks.get_task(config, tokenizer)
    # Restored without a target: plain host arrays, whatever mesh wrote them.
    restored = checkpointer._manager.restore(  # pylint: disable=protected-access
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    checkpointer.close()
  return config, tokenizer, task, restored["state"]["params"], step


def encode_masked(prompt: str, tokenizer) -> np.ndarray:
  """`[CLS] prompt [SEP]` with each `[MASK]` as the mask id -> int32 [length]."""
  if MASK_TEXT not in prompt:
    raise PretrainError(f"the prompt has no {MASK_TEXT} to fill")
  ids = [tokenizer_lib.CLS_ID]
  for i, part in enumerate(prompt.split(MASK_TEXT)):
    if i:
      ids.append(tokenizer_lib.MASK_ID)
    if part.strip():
      ids.extend(tokenizer.encode([part.strip()])[0])
  return np.asarray(ids + [tokenizer_lib.SEP_ID], np.int32)


def fill_masks(task, params, tokenizer, prompt: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
  """For each `[MASK]` in order: the top_k (piece, probability) the model predicts."""
  probs = mask_probabilities(task, params, encode_masked(prompt, tokenizer))
  return [[(tokenizer.id_to_piece(i), float(row[i])) for i in np.argsort(-row)[:top_k]] for row in probs]


def mask_probabilities(task, params, ids: np.ndarray) -> np.ndarray:
  """float32 [masks, vocab]: the model's distribution at each mask id of `ids` (with [CLS] ... [SEP])."""
  if task.name not in MLM_TASKS:
    raise PretrainError(f"filling masks needs a masked-LM checkpoint; this one is task {task.name!r}")
  if len(ids) > task.seq_len:
    raise PretrainError(f"the prompt is {len(ids)} tokens; the model was trained on at most {task.seq_len}")
  positions = np.flatnonzero(ids == tokenizer_lib.MASK_ID).astype(np.int32)
  batch = {k: np.asarray(v) for k, v in task.dummy_batch(1).items()}
  batch["input_ids"][0, :len(ids)] = ids
  batch["input_mask"][0, :len(ids)] = 1
  batch["masked_lm_positions"][0, :len(positions)] = positions
  logits = task.build_model().apply({"params": params}, *task.init_args(batch), deterministic=True)[0]
  return np.asarray(jax.nn.softmax(jnp.asarray(logits[0, :len(positions)], jnp.float32), axis=-1))


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  flags.DEFINE_string("workdir", None, "A training run's directory (its latest checkpoint is used).")
  flags.DEFINE_string("prompt", None, "Text; for masked-LM checkpoints with [MASK] where to predict.")
  flags.DEFINE_integer("top_k", 5, "Candidates shown per [MASK].")
  flags.DEFINE_integer("step", None, "A checkpoint step instead of the latest.")


def main(argv):
  del argv
  cli.quiet_library_logs()
  fl = flags.FLAGS
  if not fl.workdir or fl.prompt is None:
    print("error: --workdir and --prompt are required", file=sys.stderr)
    sys.exit(2)
  try:
    _, tokenizer, task, params, step = load_run(fl.workdir, fl.step)
    candidates = fill_masks(task, params, tokenizer, fl.prompt, fl.top_k)
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"step {step}: {fl.prompt}")
  for i, options in enumerate(candidates):
    print(f"  [MASK] {i + 1}: " + ", ".join(f"{piece} {p:.3f}" for piece, p in options))


if __name__ == "__main__":
  define_flags()
  app.run(main)
