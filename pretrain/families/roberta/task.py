"""RoBERTa pretraining: masked LM only, on FULL-SENTENCES inputs (Liu et al. 2019).

The network is BERT's (pretrain/families/bert/model.py) with RoBERTa's options: no
pooler and no next-sentence head, one token type (all zeros), and positions
counted from 2 as HF's RoBERTa does. Masks are dynamic (new ones on every draw
of a block). Model, loss and metrics are BertTask's with the NSP parts off.
"""

import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.families.bert import task as bert_task
from pretrain.families.roberta.examples import RobertaExampleConfig, RobertaExamples

# RoBERTa's options of BERT's network: in roberta_config()'s model section, and the defaults of a model
# section that lacks them.
MODEL_DEFAULTS = dict(pooler=False, nsp_head=False, position_offset=2)


class RobertaTask(bert_task.BertTask):
  """MLM on `[CLS] sentences [SEP] sentences of the next document [SEP]` blocks."""

  name = "roberta"
  example_config_class = RobertaExampleConfig
  examples_class = RobertaExamples

  def _model_config(self, config, tokenizer):
    return bert_task.model_config(config, tokenizer, **MODEL_DEFAULTS)

  def _check_options(self, data) -> None:
    if self.model_config.nsp_head:
      raise PretrainError("RoBERTa has no next-sentence head: set model.nsp_head=False")
    if data.get("next_sentence_prediction", False):
      raise PretrainError(
        "RoBERTa has no next-sentence prediction: set data.next_sentence_prediction=False"
      )

  @property
  def min_shard(self) -> tuple[int, int]:
    """(documents, tokens) a shard needs for examples."""
    return 1, 1

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """BERT's batch fields but the segment ids and the next-sentence labels."""
    batch = super().dummy_batch(batch_size)
    del batch["segment_ids"], batch["next_sentence_labels"]
    return batch

  def init_args(self, batch):
    segment_ids = jnp.zeros_like(batch["input_ids"])  # One token type.
    return (batch["input_ids"], segment_ids, batch["input_mask"], batch["masked_lm_positions"])
