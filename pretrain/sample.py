"""Look at what a checkpoint learned.

  python -m pretrain.sample --workdir=runs/bert_tiny --prompt="The [MASK] statement exits a loop."
  python -m pretrain.sample --workdir=runs/gpt2_tiny --prompt="The for statement" \
      --max_new_tokens=32 --temperature=0.8 --top_k=40 --top_p=0.95 --seed=0

What a checkpoint can do is its task's `sampling` (pretrain/families/base.py).
Masked-LM checkpoints (FILL_MASKS: bert, roberta): prints the top-k candidates
for every `[MASK]` in the prompt. Decoder-only (gpt2) and encoder-decoder (t5)
checkpoints: prints the prompt's continuation, greedy at temperature 0, else sampled from
the temperature-scaled distribution cut to its top_k tokens and its top_p
nucleus. Decoding runs through the models' key/value cache: the prompt is
read once, then each new token is one jitted step. It stops at end-of-text
(the tokenizer's `special.eos`, [SEP] for the project's: it ends every GPT-2
document and every T5 target), at
max_new_tokens, or where the model's positions end. The run's own config and
tokenizer are read from the checkpoint, so a sample always uses the
vocabulary the model was trained with.
"""

import functools
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from pretrain import checkpoint as ckpt_lib
from pretrain import cli
from pretrain import families
from pretrain.convert import checkpoints as params_io
from pretrain.data import tokenizer_files
from pretrain.errors import PretrainError
from pretrain.families import base

MASK_TEXT = "[MASK]"


def load_run(workdir: str, step: int | None = None):
  """(config, tokenizer, task, params, step) of a workdir's checkpoint (the latest by default), or of a
  converted folder (`python -m pretrain.convert from-hf`; step None)."""
  if not epath.Path(workdir).is_dir():  # Before orbax, which would create it.
    raise PretrainError(
      f"no checkpoint in {workdir}: it is not a directory (a training workdir or a converted folder)"
    )
  if (epath.Path(workdir) / params_io.PARAMS).is_dir():
    return _load_converted(workdir, step)
  checkpointer = ckpt_lib.Checkpointer(workdir, every_steps=0, keep=1)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise PretrainError(f"no checkpoint in {checkpointer.directory}")
    saved = checkpointer.restore_config(step)
    tok = saved.pop("_tokenizer", {})
    config = ml_collections.ConfigDict(saved)
    tokenizer = tokenizer_files.open_tokenizer(tok.get("path", ""))
    if tok.get("fingerprint") not in (None, tokenizer.fingerprint):
      raise PretrainError(
        f"the tokenizer at {tokenizer.path} changed since the checkpoint was written"
      )
    task = families.get_task(config, tokenizer)
    # Restored without a target: plain host arrays, whatever mesh wrote them.
    restored = checkpointer._manager.restore(  # pylint: disable=protected-access
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
  finally:
    checkpointer.close()
  return config, tokenizer, task, restored["state"]["params"], step


def _load_converted(folder: str, step: int | None):
  """load_run of a converted folder: its config, the tokenizer copied into it, its params (numpy)."""
  from pretrain import convert  # pylint: disable=import-outside-toplevel

  if step is not None:
    raise PretrainError(f"{folder} is a converted folder (one set of params): it takes no step")
  config = convert.load_config(folder)
  if not config.tokenizer.get("path"):
    raise PretrainError(
      f"{folder} holds no tokenizer (its HF folder had no tokenizer.json or vocab.txt): copy the "
      "model's tokenizer files in and set tokenizer.path in its config.json"
    )
  tokenizer = tokenizer_files.open_tokenizer(config.tokenizer.path)
  task = families.get_task(config, tokenizer)
  return config, tokenizer, task, params_io.load_params(folder), None


def encode_masked(prompt: str, tokenizer) -> np.ndarray:
  """`[CLS] prompt [SEP]` with each `[MASK]` as the mask id -> int32 [length]."""
  if MASK_TEXT not in prompt:
    raise PretrainError(f"the prompt has no {MASK_TEXT} to fill")
  special = tokenizer.special
  special.require("mask filling", "cls", "sep", "mask")
  ids = [special.cls]
  for i, part in enumerate(prompt.split(MASK_TEXT)):
    if i:
      ids.append(special.mask)
    if part.strip():
      ids.extend(tokenizer.encode([part.strip()])[0])
  return np.asarray(ids + [special.sep], np.int32)


def fill_masks(
  task, params, tokenizer, prompt: str, top_k: int = 5
) -> list[list[tuple[str, float]]]:
  """For each `[MASK]` in order: the top_k (piece, probability) the model predicts."""
  probs = mask_probabilities(task, params, encode_masked(prompt, tokenizer))
  return [
    [(tokenizer.id_to_piece(i), float(row[i])) for i in np.argsort(-row)[:top_k]] for row in probs
  ]


def mask_probabilities(task, params, ids: np.ndarray) -> np.ndarray:
  """float32 [masks, vocab]: the model's distribution at each mask id of `ids` (with [CLS] ... [SEP])."""
  if task.sampling != base.FILL_MASKS:
    raise PretrainError(
      f"filling masks needs a masked-LM checkpoint; this one is task {task.name!r}"
    )
  logits = task.mask_logits(task.build_model(), params, np.asarray(ids, np.int32))
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))


# Generation.


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
  """Raises PretrainError for a setting generation cannot use."""
  if max_new_tokens < 1:
    raise PretrainError(f"max_new_tokens={max_new_tokens} must be >= 1")
  if temperature < 0:
    raise PretrainError(f"temperature={temperature} must be >= 0 (0 is greedy)")
  if top_k < 0:
    raise PretrainError(f"top_k={top_k} must be >= 0 (0 keeps every token)")
  if not 0.0 < top_p <= 1.0:
    raise PretrainError(f"top_p={top_p} must be in (0, 1] (1 keeps every token)")


def filter_logits(
  logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
  """float32 `[..., vocab]`: logits / temperature, -inf outside the top_k and outside the top_p nucleus.

  The nucleus is the smallest set of most likely tokens whose probability
  (after temperature and top_k) reaches top_p; tokens tied with its least
  likely one stay in.
  """
  logits = jnp.asarray(logits, jnp.float32) / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # [..., 1]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p < 1.0:
    ranked = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)  # [..., vocab], most likely first
    probs = jax.nn.softmax(ranked, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Mass of the tokens ranked above each one.
    least = jnp.min(jnp.where(before < top_p, ranked, jnp.inf), axis=-1, keepdims=True)  # [..., 1]
    logits = jnp.where(logits >= least, logits, -jnp.inf)
  return logits


def sample_token(
  logits: jax.Array, rng: jax.Array, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
  """int32 `[...]` from logits `[..., vocab]`: the argmax at temperature 0, else a draw from filter_logits."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, temperature, top_k, top_p)).astype(
    jnp.int32
  )


def _decoder_only(model, params, prompt_ids: np.ndarray, max_new_tokens: int, **unused):
  """(forward, cache length, first ids, steps) of a model whose __call__(ids, decode=True) uses a "cache"
  collection, within its config's max_position_embeddings."""
  del unused
  limit = model.config.max_position_embeddings
  if len(prompt_ids) > limit:
    raise PretrainError(f"the prompt is {len(prompt_ids)} tokens; the model has {limit} positions")
  # The last new token is returned, never fed back: it may take position `limit`.
  steps = min(max_new_tokens, limit - len(prompt_ids) + 1)

  def forward(params, cache, ids):  # ids [1, length] -> logits [1, length, vocab]
    return model.apply({"params": params, **cache}, ids, decode=True, mutable=["cache"])

  return forward, len(prompt_ids) + steps - 1, prompt_ids[None], steps


def _encoder_decoder(
  model,
  params,
  prompt_ids: np.ndarray,
  max_new_tokens: int,
  *,
  max_input_length: int | None,
  max_target_length: int | None,
  eos_id: int | None,
  decoder_start_id: int | None,
):
  """(forward, cache length, first ids, steps) of a model with methods encode(inputs, mask) and
  decode(encoded, mask, ids, decode=True): the prompt + eos_id is encoded once, decoding starts from
  decoder_start_id."""
  if eos_id is None or decoder_start_id is None:
    raise PretrainError("an encoder-decoder needs eos_id and decoder_start_id (its tokenizer's)")
  inputs = np.append(prompt_ids, eos_id).astype(np.int32)[None]  # [1, enc_length]: the prompt, EOS
  if max_input_length is not None and inputs.shape[1] > max_input_length:
    raise PretrainError(
      f"the prompt is {inputs.shape[1]} tokens with EOS; the model was trained on inputs of "
      f"at most {max_input_length}"
    )
  steps = min(max_new_tokens, max_target_length or max_new_tokens)
  input_mask = np.ones_like(inputs)
  encoded = jax.jit(functools.partial(model.apply, method="encode"))(
    {"params": params}, inputs, input_mask
  )  # [1, enc_length, embed], once

  def forward(params, cache, ids):  # ids [1, length] -> logits [1, length, vocab]
    return model.apply(
      {"params": params, **cache},
      encoded,
      input_mask,
      ids,
      decode=True,
      mutable=["cache"],
      method="decode",
    )

  return forward, steps, np.full([1, 1], decoder_start_id, np.int32), steps


_DECODERS = {base.DECODER_ONLY: _decoder_only, base.ENCODER_DECODER: _encoder_decoder}


def generate_ids(
  model,
  params,
  prompt_ids,
  *,
  decoding: str,
  stop_id: int | None,
  max_new_tokens: int = 32,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  seed: int = 0,
  max_input_length: int | None = None,
  max_target_length: int | None = None,
  eos_id: int | None = None,
  decoder_start_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(new ids int32 [n], the logits float32 [n, vocab] each was chosen from) after prompt_ids.

  `decoding` is the task's sampling kind: DECODER_ONLY continues prompt_ids;
  ENCODER_DECODER encodes prompt_ids + eos_id and decodes from
  decoder_start_id (T5's pad id). Stops after stop_id (included; the
  tokenizer's end-of-text, or None), max_new_tokens, or the positions left:
  a decoder-only model's max_position_embeddings, max_target_length (None: no limit).
  """
  if decoding not in _DECODERS:
    raise PretrainError(
      f"generation needs a decoder-only or encoder-decoder model, not decoding={decoding!r}"
    )
  check_sampling(max_new_tokens, temperature, top_k, top_p)
  prompt_ids = np.asarray(prompt_ids, np.int32).reshape(-1)
  params = jax.device_put(params)
  forward, cache_length, ids, steps = _DECODERS[decoding](
    model,
    params,
    prompt_ids,
    max_new_tokens,
    max_input_length=max_input_length,
    max_target_length=max_target_length,
    eos_id=eos_id,
    decoder_start_id=decoder_start_id,
  )
  # A decode call on inputs of the cache's length creates the empty cache.
  _, cache = jax.jit(forward)(params, {}, np.zeros([1, cache_length], np.int32))
  ids = ids.astype(np.int32)

  @jax.jit
  def step(params, cache, ids, rng):  # One compiled call per token (and one for the prompt).
    logits, cache = forward(params, cache, ids)
    last = logits[:, -1]  # [1, vocab]
    return sample_token(last, rng, temperature, top_k, top_p), last, cache

  rng = jax.random.key(seed)
  tokens, step_logits = [], []
  for i in range(steps):
    token, last, cache = step(params, cache, ids, jax.random.fold_in(rng, i))
    tokens.append(int(token[0]))
    step_logits.append(np.asarray(last[0]))
    if tokens[-1] == stop_id:
      break
    ids = np.asarray(token, np.int32)[:, None]  # [1, 1]
  return np.asarray(tokens, np.int32), np.stack(step_logits)


def _detokenize(ids: np.ndarray, tokenizer, num_sentinels: int) -> str:
  """Text of ids; ids above the tokenizer's pieces (T5's sentinels) as <extra_id_k>."""
  parts, run = [], []
  for i in ids.tolist():
    if i < tokenizer.vocab_size:
      run.append(i)
      continue
    parts += [tokenizer.decode(run)] if run else []
    run = []
    k = tokenizer.vocab_size + num_sentinels - 1 - i
    parts.append(f"<extra_id_{k}>" if 0 <= k < num_sentinels else f"<id_{i}>")
  parts += [tokenizer.decode(run)] if run else []
  return " ".join(p for p in parts if p)


def generate(
  task,
  params,
  tokenizer,
  prompt: str,
  *,
  max_new_tokens: int = 32,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  seed: int = 0,
) -> str:
  """The text a generating checkpoint (gpt2, t5) writes after (decoder-only) or for (encoder-decoder) prompt,
  up to end-of-text."""
  if task.sampling not in _DECODERS:
    raise PretrainError(
      f"generation needs a decoder-only or encoder-decoder checkpoint; this one is task "
      f"{task.name!r}"
    )
  ids = task.generation_prompt(tokenizer.encode([prompt])[0] if prompt.strip() else [])
  eos = tokenizer.special.eos
  new, _ = generate_ids(
    task.build_model(),
    params,
    ids,
    decoding=task.sampling,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    seed=seed,
    stop_id=eos,
    **task.generation_options(),
  )
  if len(new) and new[-1] == eos:
    new = new[:-1]
  return _detokenize(new, tokenizer, task.num_sentinels)


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  flags.DEFINE_string(
    "workdir",
    None,
    "A training run's directory (its latest checkpoint is used), or a converted folder (from-hf).",
  )
  flags.DEFINE_string(
    "prompt", None, "Text; for masked-LM checkpoints with [MASK] where to predict."
  )
  flags.DEFINE_integer(
    "top_k",
    None,
    "Masked LM: candidates shown per [MASK] (default 5). Generation: sample "
    "from the top_k most likely tokens (default 0: all).",
  )
  flags.DEFINE_integer("step", None, "A checkpoint step instead of the latest.")
  flags.DEFINE_integer("max_new_tokens", 32, "Generation: at most this many new tokens.")
  flags.DEFINE_float(
    "temperature", 0.0, "Generation: 0 is greedy; otherwise logits are divided by it."
  )
  flags.DEFINE_float(
    "top_p", 1.0, "Generation: sample from the smallest set of tokens with this much mass."
  )
  flags.DEFINE_integer("seed", 0, "Generation: the sampling seed.")


def main(argv):
  del argv
  cli.quiet_library_logs()
  fl = flags.FLAGS
  if not fl.workdir or fl.prompt is None:
    print("error: --workdir and --prompt are required", file=sys.stderr)
    sys.exit(2)
  try:
    _, tokenizer, task, params, step = load_run(fl.workdir, fl.step)
    if task.sampling == base.FILL_MASKS:
      candidates = fill_masks(
        task, params, tokenizer, fl.prompt, 5 if fl.top_k is None else fl.top_k
      )
    else:
      text = generate(
        task,
        params,
        tokenizer,
        fl.prompt,
        max_new_tokens=fl.max_new_tokens,
        temperature=fl.temperature,
        top_k=fl.top_k or 0,
        top_p=fl.top_p,
        seed=fl.seed,
      )
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{'step ' + str(step) if step is not None else fl.workdir}: {fl.prompt}")
  if task.sampling != base.FILL_MASKS:
    print(f"  -> {text}")
    return
  for i, options in enumerate(candidates):
    print(f"  [MASK] {i + 1}: " + ", ".join(f"{piece} {p:.3f}" for piece, p in options))


if __name__ == "__main__":
  define_flags()
  app.run(main)
