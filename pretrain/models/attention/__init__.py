"""Multi-head attention, the one attention module every model family uses.

  masks.py       `AttentionMask`: causal, sliding window, prefix-LM, packed segment
                 ids, padding and any dense boolean mask, ANDed together.
  config.py      `AttentionConfig`: the variant (heads, positions, stabilizers,
                 backend), checked once; `model_config_from_dict` for families.
  backends.py    which backend can run a call on this platform and why (a pure
                 function), and `recording()` of the decisions made while tracing.
  kernels.py     the implementations behind the backends.
  functional.py  `dot_product_attention`, the functional API.
  module.py      `MultiHeadAttention` with its decode cache.

Backends (`resolve_backend` picks one per call, at trace time, for the platform
compiled for: that of the mesh in context, see `target_platform`):

  'xla'                    einsums written out; softmax in float32; runs
                           anywhere and supports every variant and dropout.
  'dot_product_attention'  `jax.nn.dot_product_attention`: cuDNN's fused kernel
                           on GPU with bfloat16/float16 compute, that API's XLA
                           implementation elsewhere. No dropout, no soft-cap.
  'pallas_gpu'             Pallas flash attention for GPUs (Triton); causal,
                           packed segments and padding of self-attention.
  'splash_tpu'             Pallas splash attention for TPUs; causal, sliding
                           window, segments, padding and soft-cap.
  'auto'                   the first of a chain that supports the call on the
                           platform: TPU splash_tpu -> xla; GPU cuDNN ->
                           pallas_gpu -> xla; xla elsewhere.

A backend that cannot express the call (dropout, an additive bias, ALiBi, a
dense mask, prefix-LM, an unsupported length, the wrong platform) falls back to
'xla'; a kernel that refuses the call while it is traced (cuDNN missing on the
host, or a shape it lacks) hands it to the next in line. Under a mesh of several
devices the Pallas kernels run per shard (`kernels.per_shard`: XLA cannot
partition them itself). Each fallback is
logged once and recorded with its reason (`recording()`). Compiled for real
targets from a CPU host, every backend x mask kind is checked in
tests/models/attention/test_targets.py. The Pallas kernels also
run on CPU through the Pallas interpreter when `interpret` is on (the config
field, or the environment variable PRETRAIN_ATTENTION_INTERPRET=1); that is for
tests, and slow.

Layout: queries/keys/values are `[batch, length, heads, head_dim]`, the layout
of `jax.nn.dot_product_attention` and a free reshape of the projections.
A dense `mask` is boolean (True = may attend), `bias` is added to the logits;
both broadcast to `[batch, heads, q_length, kv_length]`. A query row that may
attend to nothing has an unspecified (finite) output, and so has a padding
query's row under the Pallas kernels (they let padding see padding); losses
must ignore both.
"""

from pretrain.models.attention.backends import AttentionFeatures
from pretrain.models.attention.backends import BACKENDS
from pretrain.models.attention.backends import INTERPRET_ENV
from pretrain.models.attention.backends import Resolution
from pretrain.models.attention.backends import check_backend
from pretrain.models.attention.backends import interpret_default
from pretrain.models.attention.backends import recording
from pretrain.models.attention.backends import resolve_backend
from pretrain.models.attention.backends import target_platform
from pretrain.models.attention.config import AttentionConfig
from pretrain.models.attention.config import QK_NORMS
from pretrain.models.attention.config import check_heads
from pretrain.models.attention.config import model_config_from_dict
from pretrain.models.attention.functional import dot_product_attention
from pretrain.models.attention.masks import AttentionMask
from pretrain.models.attention.masks import as_attention_mask
from pretrain.models.attention.masks import dense_mask
from pretrain.models.attention.masks import padding_mask
from pretrain.models.attention.module import MultiHeadAttention
from pretrain.models.attention.module import decode_positions

__all__ = [
  "AttentionConfig",
  "AttentionFeatures",
  "AttentionMask",
  "BACKENDS",
  "INTERPRET_ENV",
  "MultiHeadAttention",
  "QK_NORMS",
  "Resolution",
  "as_attention_mask",
  "check_backend",
  "check_heads",
  "decode_positions",
  "dense_mask",
  "dot_product_attention",
  "interpret_default",
  "model_config_from_dict",
  "padding_mask",
  "recording",
  "resolve_backend",
  "target_platform",
]
