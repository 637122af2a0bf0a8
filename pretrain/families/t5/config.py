"""T5's config: pretrain.config.base_config() with T5 v1.1's task, data and model sections and its recipe."""

import ml_collections

from pretrain import config as config_lib
from pretrain.families.t5.model import T5Config
from pretrain.families.t5.task import T5ExampleConfig


def t5_config() -> ml_collections.ConfigDict:
  """The config every T5 run starts from: T5 v1.1 small and its pretraining recipe.

  task: extra_ids and z_loss (see pretrain/families/t5/task.py); data:
  T5ExampleConfig's fields; model: T5Config's (vocab_size 0: tokenizer pieces
  + task.extra_ids, rounded up to a multiple of 128).

  Sources. Architecture and vocabulary (32,128): google/t5-v1_1-* on the HF hub
  and t5x's examples/t5/t5_1_1/*.gin. Pretraining: the paper (section 3.1.2)
  trains 2**19 steps of batch 128 x 512 with Adafactor and lr
  1/sqrt(max(step, 10**4)); its final models (section 3.7) 1M steps of batch
  2048. t5x's T5.1.1 configs add z-loss 1e-4, dropout 0 for pretraining
  (the v1.1 model card: "Dropout was turned off in pre-training"), inputs
  512 / targets 114; their C4 example uses batch 256 for 100k steps, and the
  released v1.1 checkpoints are at step 1,000,000 (t5x's t5_1_1_*/checkpoint_1000000).
  Here: the paper's 2**19 steps x 128.
  """
  c = config_lib.base_config()
  c.task.update(
    name="t5",
    extra_ids=100,  # Sentinel ids above the tokenizer's pieces.
    z_loss=1e-4,
  )
  c.data.update(
    config_lib.section(T5ExampleConfig())
  )  # targets_length 0: as span corruption gives.
  c.tokenizer.vocab_size = 32000
  c.model = config_lib.section(
    T5Config(dtype="bfloat16")
  )  # Dropout 0: v1.1 pretrains without (0.1 to fine-tune).
  c.model.vocab_size = 0  # 0: tokenizer pieces + task.extra_ids, rounded up to a multiple of 128.
  c.optimizer.update(
    name="adafactor",
    learning_rate=1e-2,
    warmup_steps=10_000,
    decay="rsqrt",
    weight_decay=0.0,
    grad_clip_norm=0.0,
  )
  c.train.update(
    steps=524_288, batch_size=128
  )  # The paper's pretraining: 2**19 steps of 128 x 512 inputs.
  return c
