"""The HF torch side of the learning comparison (pretrain/bench/learning.py).

The family's HF model (BERT: `BertForPreTraining`, GPT-2: `GPT2LMHeadModel`) of the config's shape,
its weights either converted from the project's init (pretrain/convert's `params_to_hf`, so both sides
start from the same point) or HF's own init, trained with torch's AdamW on the batches the project's
step saw: the same learning rate at every step (the project's schedule, read per step), betas, eps,
weight decay on every tensor but LayerNorms and biases (the 1-D ones, BERT's rule), clipping at the
global norm. The objective and the metric sums are the project task's, from HF's logits:

  BERT   HF's loss (MLM cross-entropy over the labelled positions, mean, + NSP, mean): the masked
         positions whose weight is 1 (as labels to `BertForPreTraining`, -100 elsewhere, or with
         the head on those positions only: `objective_and_sums`)
  GPT-2  cross-entropy of the logits at every position against the batch's target_ids, weighted
         by loss_weights and normalised by their sum (HF's `labels=` would shift the inputs and
         drop each window's last target)
"""

import dataclasses

import numpy as np

from pretrain import convert
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.families.bert import hf_reference as bert_reference

HF_MODELS = {"bert": "BertForPreTraining", "gpt2": "GPT2LMHeadModel"}
SUPPORTED = tuple(HF_MODELS)


def _torch():
  import torch  # pylint: disable=g-import-not-at-top

  return torch


def hf_state(task, params) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, HF tensors) of the project's `params` (a numpy tree) for the task's HF model."""
  if task.name not in SUPPORTED:
    raise PretrainError(
      f"the learning comparison supports {', '.join(SUPPORTED)}, not {task.name!r}"
    )
  module = convert.family(task.name, "task.name")
  if checkpoints.is_scanned(params, task.layer_stacks):
    params = checkpoints.unstack_layers(params, task.layer_stacks)
  model = dict(dataclasses.asdict(task.model_config), scan_layers=False, remat_policy="none")
  sp = task.special.ids()
  special = {
    "pad_token_id": sp.get("pad"),
    "bos_token_id": sp.get("cls", sp.get("eos")),
    "eos_token_id": sp.get("eos", sp.get("sep")),
  }
  return module.params_to_hf(params, module.complete_model(model), special, None)


def build_model(task, params, *, own_init_seed: int | None = None):
  """The HF torch model of `task` holding `params` (own_init_seed: HF's own init under that seed)."""
  import transformers  # pylint: disable=g-import-not-at-top

  torch = _torch()
  hf_config, tensors = hf_state(task, params)
  arch = hf_config["architectures"][0]
  cls = getattr(transformers, arch)
  config_cls = transformers.BertConfig if task.name == "bert" else transformers.GPT2Config
  cfg = config_cls(**{k: v for k, v in hf_config.items() if k not in ("architectures", "dtype")})
  if own_init_seed is not None:
    torch.manual_seed(own_init_seed)
    return cls(cfg)
  model = cls(cfg)
  state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in tensors.items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  tied = {n for n in missing if n.endswith(("decoder.weight", "decoder.bias", "lm_head.weight"))}
  if set(missing) - tied or unexpected:
    raise PretrainError(
      f"{arch}: tensors missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
    )
  return model


def _long(x):
  return _torch().from_numpy(np.ascontiguousarray(x).astype(np.int64))


def _cross_entropy_sums(logits, targets, weights):
  """(weighted nll sum, weighted correct sum, weight sum) as torch scalars."""
  torch = _torch()
  nll = torch.nn.functional.cross_entropy(
    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
  )
  correct = (logits.argmax(-1).reshape(-1) == targets.reshape(-1)).float()
  w = weights.reshape(-1)
  return (nll * w).sum(), (correct * w).sum(), w.sum()


def objective_and_sums(task, model, batch: dict, *, hf_head: bool = False):
  """(the training objective as a torch scalar, the task's metric sums as floats) of one batch.

  BERT: by default the MLM head (HF's `cls.predictions`) runs on the masked positions only, as the
  project's does (the dense head over every position is most of a tiny model's step on CPU);
  hf_head=True runs `BertForPreTraining.forward` with labels instead: the same objective.
  """
  torch = _torch()
  if task.name == "bert":
    pos = _long(batch["masked_lm_positions"])
    nsp_labels = _long(batch["next_sentence_labels"])
    inputs = dict(
      input_ids=_long(batch["input_ids"]),
      token_type_ids=_long(batch["segment_ids"]),
      attention_mask=_long(batch["input_mask"]),
    )
    if hf_head:
      out = model(
        **inputs, labels=_long(bert_reference.mlm_labels(batch)), next_sentence_label=nsp_labels
      )
      mlm_logits = torch.take_along_dim(out.prediction_logits, pos[:, :, None], dim=1)
      nsp_logits = out.seq_relationship_logits
    else:
      out = model.bert(**inputs)
      hidden = torch.take_along_dim(out.last_hidden_state, pos[:, :, None], dim=1)
      mlm_logits = model.cls.predictions(hidden)
      nsp_logits = model.cls.seq_relationship(out.pooler_output)
    weights = torch.from_numpy(batch["masked_lm_weights"].astype(np.float32))
    mlm = _cross_entropy_sums(mlm_logits, _long(batch["masked_lm_ids"]), weights)
    nsp = _cross_entropy_sums(nsp_logits, nsp_labels, torch.ones(nsp_labels.shape))
    sums = dict(
      mlm_loss=mlm[0], mlm_correct=mlm[1], mlm_weight=mlm[2], nsp_loss=nsp[0], nsp_correct=nsp[1]
    )
    sums["nsp_count"] = nsp[2]
    # HF's loss: mean over the labelled positions + mean over the pairs.
    objective = out.loss if hf_head else mlm[0] / mlm[2] + nsp[0] / nsp[2]
  else:
    if float(np.min(batch["segment_ids"])) < 1 or np.any(np.diff(batch["segment_ids"], axis=1)):
      raise PretrainError(
        "GPT2LMHeadModel has no segment masking: compare chunked examples (data.packing=False)"
      )
    out = model(input_ids=_long(batch["input_ids"]), position_ids=_long(batch["positions"]))
    weights = torch.from_numpy(batch["loss_weights"].astype(np.float32))
    loss_sum, correct, weight = _cross_entropy_sums(out.logits, _long(batch["target_ids"]), weights)
    sums = dict(loss_sum=loss_sum, correct_sum=correct, weight_sum=weight)
    objective = loss_sum / torch.clamp(weight, min=1.0)
  return objective, {k: float(v.detach()) for k, v in sums.items()}


class TorchTrainer:
  """torch AdamW on `model` with the config's recipe; `step(batch, lr)` is one update."""

  def __init__(self, model, opt_cfg, *, threads: int = 1):
    torch = _torch()
    torch.set_num_threads(threads)
    self.model = model
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    self.optimizer = torch.optim.AdamW(
      [
        {"params": decay, "weight_decay": float(opt_cfg.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
      ],
      lr=float(opt_cfg.learning_rate),
      betas=(float(opt_cfg.b1), float(opt_cfg.b2)),
      eps=float(opt_cfg.eps),
    )
    self.clip = float(opt_cfg.grad_clip_norm or 0.0)

  def step(self, task, batch: dict, lr: float) -> dict:
    """One update at learning rate `lr`; returns the task's metrics of the batch (before the update)."""
    torch = _torch()
    self.model.train()
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    self.optimizer.zero_grad(set_to_none=True)
    objective, sums = objective_and_sums(task, self.model, batch)
    objective.backward()
    if self.clip > 0:
      norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    else:
      norm = torch.sqrt(sum((p.grad**2).sum() for p in self.model.parameters()))
    self.optimizer.step()
    metrics = {k: float(v) for k, v in task.finalize(sums).items()}
    metrics["grad_norm"] = float(norm)
    return metrics

  def evaluate(self, task, batches: list[dict]) -> dict:
    """The task's metrics summed over `batches` (dropout off), finalized."""
    torch = _torch()
    self.model.eval()
    total: dict = {}
    with torch.no_grad():
      for b in batches:
        for k, v in objective_and_sums(task, self.model, b)[1].items():
          total[k] = total.get(k, 0.0) + v
    return {k: float(v) for k, v in task.finalize(total).items()}


def gradients(task, model, batch: dict, *, hf_head: bool = True) -> tuple[float, dict]:
  """(objective, {HF tensor name: gradient}) of one batch with dropout off (for the parity check)."""
  model.eval()
  model.zero_grad(set_to_none=True)
  objective, _ = objective_and_sums(task, model, batch, hf_head=hf_head)
  objective.backward()
  grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
  return float(objective.detach()), grads
