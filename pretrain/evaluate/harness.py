"""The lm-evaluation-harness model `pretrain`: harness tasks on this project's GPT-2 checkpoints.

  python -m pretrain.evaluate lm-eval --model pretrain \
      --model_args init_from=runs/gpt2_tiny,batch_size=8 --tasks lambada_openai

Importing this module registers the model in the harness's own registry
(`lm_eval.api.registry.register_model`), so `lm_eval.simple_evaluate(model="pretrain",
model_args=...)` works after `import pretrain.evaluate.harness`. lm-eval 0.4.13 discovers no
models of other packages, so a bare `lm_eval --model pretrain` cannot find it: `python -m
pretrain.evaluate lm-eval ARGS` imports this module, then runs the harness's own command line
(`lm_eval.__main__.cli_evaluate`) with ARGS, every flag of `lm_eval run` included
(`--include_path` for local task files).

model_args: init_from (a training workdir or a converted folder; required), step (a workdir's
checkpoint, default the newest), batch_size (8; given in model_args it wins over the harness's
`--batch_size`), max_length (default the model's positions),
max_gen_toks (256), dtype (float32). Requests are scored as the harness's HF model scores them:
an empty context becomes the end-of-text token, rolling loglikelihoods use
`lm_eval.utils.get_rolling_token_windows` with the end-of-text prefix, a context longer than the
model is cut from the left. generate_until decodes greedily (or samples at the request's
temperature) through pretrain.sample's key/value cache and stops at end-of-text, a stop string or
max_gen_toks.
"""

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models import utils as model_utils
import numpy as np

from pretrain import sample
from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.evaluate.scoring import load_scorer

NAME = "pretrain"


def _int(name: str, value, default: int | None, low: int) -> int | None:
  if value is None or value == "":
    return default
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise PretrainError(f"model_args {name}={value!r} must be an integer") from None
  if number < low:
    raise PretrainError(f"model_args {name}={number} must be >= {low}")
  return number


@register_model(NAME)
class PretrainLM(TemplateLM):
  """A decoder-only checkpoint of this project as an lm-eval LM."""

  def __init__(
    self,
    init_from: str = "",
    step=None,
    batch_size=8,
    max_length=None,
    max_gen_toks=256,
    dtype: str = "float32",
    max_batch_size=None,
    device=None,
  ):
    super().__init__()
    del max_batch_size, device  # The harness's torch settings; jax places the model itself.
    if not init_from:
      raise PretrainError("model_args init_from=RUN_OR_CONVERTED is required")
    if batch_size == "auto" or str(batch_size).startswith("auto"):
      batch_size = None  # No search for the largest batch: the default.
    self.scorer, self.tokenizer = load_scorer(
      init_from,
      batch_size=_int("batch_size", batch_size, 8, 1),
      step=_int("step", step, None, 0),
      dtype=dtype,
    )
    positions = self.scorer.max_length
    self._max_length = _int("max_length", max_length, positions, 2)
    if self._max_length > positions:
      raise PretrainError(f"model_args max_length={max_length} exceeds the model's {positions}")
    self.max_gen_toks = _int("max_gen_toks", max_gen_toks, 256, 1)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
    """The harness's constructor call, where model_args win over its own flags (`--batch_size`,
    which it always passes): a batch_size in both is no error."""
    extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
    return cls(**{**extra, **arg_dict})

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

  # --- what TemplateLM asks -----------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return self.scorer.eos

  @property
  def max_length(self) -> int:
    return self._max_length

  def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
    del add_special_tokens, kwargs  # The project's tokenizers add no special tokens to text.
    return self.tokenizer.encode([string])[0] if string else []

  def tok_decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  def _rows(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) of each (context ids, continuation ids): the last max_length tokens of
    context + continuation, as one shifted row."""
    rows = []
    for context, continuation in pairs:
      if not continuation:
        raise PretrainError("a loglikelihood request has an empty continuation")
      whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
      rows.append((whole[:-1], whole[1:]))
    return rows

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """(sum of the continuation's log-probabilities, whether every one was the argmax) per request."""
    del disable_tqdm, kwargs
    pairs = [(context, continuation) for _, context, continuation in requests]
    out = []
    for (_, continuation), (logp, greedy) in zip(pairs, self.scorer.score(self._rows(pairs))):
      n = len(continuation)
      out.append((float(logp[-n:].sum()), bool(greedy[-n:].all())))
      cache_key = requests[len(out) - 1][0]
      if cache_key is not None:
        self.cache_hook.add_partial("loglikelihood", cache_key, out[-1])
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """The log-likelihood of each whole text, in disjoint windows of max_length tokens."""
    del disable_tqdm
    windows, owner = [], []
    for i, (text,) in enumerate(request.args for request in requests):
      for window in lm_utils.get_rolling_token_windows(
        token_list=self.tok_encode(text),
        prefix_token=self.prefix_token_id,
        max_seq_len=self.max_length,
        context_len=1,
      ):
        windows.append(lm_utils.make_disjoint_window(window))
        owner.append(i)
    totals = np.zeros(len(requests))
    scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows])
    for i, (logp, _) in zip(owner, scores):
      totals[i] += logp
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), float(total))
    return [float(t) for t in totals]

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Each request's continuation up to its first stop string (not included)."""
    del disable_tqdm
    eos_text = self.tok_decode([self.eot_token_id])
    out = []
    for request in requests:
      context, gen_kwargs = request.args
      kwargs = model_utils.normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
      until = model_utils.handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
      max_new = int(kwargs.pop("max_gen_toks"))
      if max_new >= self.max_length:
        raise PretrainError(
          f"max_gen_toks={max_new} leaves no room for a context in max_length={self.max_length}"
        )
      prompt = [self.eot_token_id] + self.tok_encode(context)
      prompt = prompt[-(self.max_length - max_new) :]
      new, _ = sample.generate_ids(
        self.scorer.model,
        self.scorer.params,
        prompt,
        decoding=base.DECODER_ONLY,
        stop_id=self.eot_token_id,
        max_new_tokens=max_new,
        temperature=float(kwargs.get("temperature") or 0.0),
        top_k=int(kwargs.get("top_k") or 0),
        top_p=float(kwargs.get("top_p") or 1.0),
        seed=int(kwargs.get("seed") or 0),
      )
      new = [int(i) for i in new if int(i) != self.eot_token_id]
      text = self.tok_decode(new)
      for stop in until:
        if stop:
          text = text.split(stop)[0]
      out.append(text)
      self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
    return out
