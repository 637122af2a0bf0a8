"""The Task interface: all that the train loop, the sampler and the converter ask of a model family.

A family's Task is built from a run's config and tokenizer
(`Task(config, tokenizer)`, through `families.get_task`) and checks there
what the family cannot train with. The train loop uses it as follows:

  data     examples(docs, seed)    random access to endless examples over a tokenized corpus
                                   (`ex[i]`, `ex.batch(indices)`; pretrain/data/sources.py)
           dummy_batch(batch_size) zeros of every batch field's shape and dtype
           tokens_per_example      tokens one example holds (throughput metrics)
           min_shard               (documents, tokens) a corpus shard needs to give examples
  model    build_model()           the flax module
           init_args(batch)        its positional inputs taken from a batch
  loss     denominators(batch)     normalisers over the whole (global) batch
           loss(model, params, batch, denominators, *, dropout_rng, deterministic)
                                   -> (objective, metric sums); objectives of microbatches add up
           finalize(sums)          metric values (a "loss" among them) from summed counts
  metrics  train_flops_per_example(), describe()
  resume   check_resume(config, saved)   refuses a checkpoint trained with other model or task fields;
                                   `resumable_fields` lists those that may change

The sampler (pretrain/sample.py) reads `sampling` and what goes with it
(`mask_logits` for FILL_MASKS; `generation_prompt`, `generation_options` for
the generating kinds); the converter (pretrain/convert) reads `layer_stacks`
and the family's `convert.py`; the step benchmark (pretrain/bench) builds its
batches with `examples` and times the HF torch model of the family's
`hf_reference.py` beside it.
"""

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np

from pretrain import config as config_lib
from pretrain.errors import PretrainError

# What pretrain.sample can do with a checkpoint of the family (Task.sampling).
FILL_MASKS = (
  "fill_masks"  # Masked LM: the distribution at each [MASK] of a prompt (Task.mask_logits).
)
DECODER_ONLY = (
  "decoder_only"  # Continues the prompt: model.apply(ids, decode=True) with a "cache" collection.
)
ENCODER_DECODER = (
  "encoder_decoder"  # Encodes the prompt, decodes from a start id: model methods encode/decode.
)
SAMPLING = (FILL_MASKS, DECODER_ONLY, ENCODER_DECODER)

# Fields of the task and model sections that say how the model is computed, not what it is (the
# compute dtype, remat, dropout, the attention kernel): a run may resume with other values.
RESUMABLE_FIELDS = frozenset(
  {
    "model.dtype",
    "model.remat_policy",
    "model.dropout_rate",
    "model.attention_dropout_rate",
    "model.attention.backend",
  }
)


def _flat(section: Any, prefix: str) -> dict:
  """{'model.attention.position': ..., ...} of a (nested) config section."""
  if hasattr(section, "to_dict"):
    section = section.to_dict()
  out = {}
  for k, v in (section or {}).items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _model_defaults(model_config: Any) -> dict:
  """{'model.<field>': default} of a model config dataclass whose fields all have defaults, else {}."""
  if not dataclasses.is_dataclass(model_config):
    return {}
  try:
    return _flat(config_lib.section(type(model_config)()), "model.")
  except TypeError:  # A field without a default.
    return {}


def tokenizer_vocab_size(
  config, tokenizer, fix: str = "set model.vocab_size=0 to follow the tokenizer"
) -> int:
  """config.model.vocab_size, 0 taking the tokenizer's; another must be the tokenizer's (`fix` ends that error)."""
  vocab = int(config.model.vocab_size) or tokenizer.vocab_size
  if vocab != tokenizer.vocab_size:
    raise PretrainError(
      f"model.vocab_size={vocab} but the tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces; {fix}"
    )
  return vocab


def model_config(config_cls, config, vocab_size: int, **defaults):
  """`config_cls` (a model config dataclass) of config.model with `vocab_size` (the family's resolution of
  model.vocab_size) and the keys config.model lacks from `defaults`."""
  model_fields = {k: v for k, v in config.model.to_dict().items() if k != "vocab_size"}
  for k, v in model_fields.items():
    if k.endswith("dropout_rate") and not (isinstance(v, (int, float)) and 0 <= v < 1):
      raise PretrainError(f"model.{k}={v!r} must be a number in [0, 1)")  # NaN fails too.
  return config_cls.from_dict(dict(defaults, **model_fields, vocab_size=vocab_size))


class Task(abc.ABC):
  """A model family's pretraining task (see the module docstring for who calls what)."""

  name: ClassVar[str]  # The family's registry name (config task.name).
  sampling: ClassVar[str | None] = (
    None  # One of SAMPLING, or None: pretrain.sample refuses the checkpoint.
  )
  resumable_fields: ClassVar[frozenset[str]] = RESUMABLE_FIELDS
  # Per-layer param subtrees `<prefix>_<i>` -> the name of the one subtree they stack into with
  # model.scan_layers (pretrain/convert/checkpoints.py moves params between the two layouts).
  layer_stacks: ClassVar[dict[str, str]] = {}
  num_sentinels: int = 0  # Ids right above the tokenizer's pieces that decode as <extra_id_k>.

  @abc.abstractmethod
  def __init__(self, config, tokenizer):
    """Builds the task for a run's config (ml_collections) and tokenizer; PretrainError for what does not fit."""

  # --- data ---------------------------------------------------------------

  @abc.abstractmethod
  def examples(self, docs, seed: int):
    """Examples over `docs` (pretrain.data.tokenized.Documents): `ex[i]` and `ex.batch(indices)`."""

  @abc.abstractmethod
  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros of every batch field's shape and dtype (for init and compilation)."""

  @property
  @abc.abstractmethod
  def tokens_per_example(self) -> int:
    """Tokens one example holds."""

  @property
  def min_shard(self) -> tuple[int, int]:
    """(documents, tokens) a shard needs for examples."""
    return 1, 1

  # --- model, loss, metrics -------------------------------------------------

  @abc.abstractmethod
  def build_model(self):
    """The flax module."""

  @abc.abstractmethod
  def init_args(self, batch) -> tuple:
    """The model's positional inputs, from a batch."""

  @abc.abstractmethod
  def denominators(self, batch) -> dict:
    """Normalisers over the whole (global) batch, so microbatch gradients sum to the batch gradient."""

  @abc.abstractmethod
  def loss(self, model, params, batch, denominators, *, dropout_rng=None, deterministic=True):
    """(objective, metric sums) for a (micro)batch; objectives of microbatches add up."""

  @staticmethod
  @abc.abstractmethod
  def finalize(sums) -> dict:
    """Metric values from summed counts (works on jax or numpy scalars); one of them is "loss"."""

  @abc.abstractmethod
  def train_flops_per_example(self) -> float:
    """Model FLOPs of forward + backward for one example."""

  @abc.abstractmethod
  def describe(self) -> dict:
    """The task's resolved settings, JSON-serialisable (logged with the run)."""

  # --- resume ---------------------------------------------------------------

  def check_resume(self, config, saved: dict) -> None:
    """PretrainError unless a checkpoint whose config was `saved` (a dict) can resume under `config`: the
    same task and model sections, up to `resumable_fields`."""
    # A checkpoint written before a model field existed ran with the field's default.
    defaults = _model_defaults(getattr(self, "model_config", None))
    for section in ("task", "model"):
      now, before = _flat(config[section], f"{section}."), _flat(saved.get(section), f"{section}.")
      before = {**{k: v for k, v in defaults.items() if k in now and section == "model"}, **before}
      changed = sorted(
        k
        for k in set(now) | set(before)
        if k not in self.resumable_fields and now.get(k) != before.get(k)
      )
      if "model.scan_layers" in changed:
        raise PretrainError(
          "model.scan_layers differs from the checkpoint's (the parameter layout differs)"
        )
      if changed:
        raise PretrainError(
          f"config {changed[0]} is {now.get(changed[0])!r} but the checkpoint was trained with "
          f"{before.get(changed[0])!r}; use a new workdir for a different model"
        )

  # --- sampling (pretrain/sample.py) ----------------------------------------

  def mask_logits(self, model, params, ids: np.ndarray):
    """FILL_MASKS: logits [masks, vocab] at each mask id of `ids` (a whole input, e.g. [CLS] ... [SEP])."""
    raise PretrainError(
      f"filling masks needs a masked-LM checkpoint; this one is task {self.name!r}"
    )

  def generation_prompt(self, ids: list[int]) -> list[int]:
    """DECODER_ONLY / ENCODER_DECODER: the ids generation starts from, for the tokenized prompt `ids`."""
    return list(ids)

  def generation_options(self) -> dict:
    """DECODER_ONLY / ENCODER_DECODER: keyword arguments of sample.generate_ids (lengths, special ids)."""
    return {}
