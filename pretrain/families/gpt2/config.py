"""GPT-2's config: pretrain.config.base_config() with GPT-2's task, data and model sections and its recipe."""

import ml_collections

from pretrain import config as config_lib
from pretrain.families.gpt2.examples import CausalExampleConfig
from pretrain.families.gpt2.model import Gpt2Config


def gpt2_config() -> ml_collections.ConfigDict:
  """GPT-2 small (124M) and its training recipe.

  model: Gpt2Config's fields (vocab_size 0 would follow the tokenizer); data:
  max_seq_length (the context, L) and packing, CausalExampleConfig's seq_len
  and packing (see pretrain/families/gpt2/examples.py).

  From the paper: vocabulary 50,257, context 1,024, batch 512 sequences. The
  paper leaves the optimizer out; AdamW with betas (0.9, 0.95), eps 1e-8,
  weight decay 0.1, clipping at 1.0 and a cosine decay to 10% of the peak
  after a warmup is the recipe of GPT-3 (Brown et al. 2020, whose 125M and
  350M models have GPT-2 small's and medium's shapes), with which nanoGPT
  reproduces GPT-2; the peak learning rate is GPT-3's for the nearest size. Dropout 0.1 on embeddings,
  residuals and attention, as GPT-1 (which GPT-2 says it follows) and HF's
  GPT2Config; nanoGPT pretrains with 0.
  """
  c = config_lib.base_config()
  c.task.name = "gpt2"
  c.model = config_lib.section(Gpt2Config(dtype="bfloat16"))
  # The tokenizer must have the model's 50,257 pieces: BPE, as GPT-2 (unigram cannot reach that
  # many pieces on a small corpus). Point data at a real corpus, or tokenizer.path at such a model.
  c.tokenizer.update(vocab_size=50257, model_type="bpe")
  examples = (
    CausalExampleConfig()
  )  # Chunks the document stream into windows (packing=False), as GPT-2.
  c.data.update(max_seq_length=examples.seq_len, packing=examples.packing)
  c.optimizer.update(
    name="adamw",
    learning_rate=6e-4,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    weight_decay=0.1,
    warmup_steps=2000,
    decay="cosine",
    end_learning_rate=6e-5,
    grad_clip_norm=1.0,
  )
  c.train.update(steps=600_000, batch_size=512, log_every=100)  # 600k x 512 x 1024 = 315B tokens.
  c.eval.update(every_steps=2000, batch_size=64, num_batches=20)
  c.checkpoint.update(every_steps=2000, keep=3)
  return c
