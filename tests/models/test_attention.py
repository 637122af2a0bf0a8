"""Attention: every variant x backend against a naive reference, heads, masks, stabilizers, backend choice, config."""
import dataclasses
import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.models import positions

BATCH, HEADS, HEAD_DIM, EMBED = 2, 4, 8, 32
# Tiny graphs compile ~3x faster unoptimized; numerics are compared with tolerances anyway.
fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


# The reference: explicit loops for the mask, repeated key/value heads, plain einsums.


def reference_mask(batch, q_length, kv_length, *, causal=False, window=None, prefix=None, segment_ids=None,
                   kv_segment_ids=None, input_mask=None, dense=None):
  """bool [batch, q_length, kv_length], one element at a time."""
  if segment_ids is not None and kv_segment_ids is None:
    kv_segment_ids = segment_ids
  m = np.ones((batch, q_length, kv_length), bool)
  for b in range(batch):
    for i in range(q_length):
      for j in range(kv_length):
        ok = True
        if causal:
          ok &= j <= i or (prefix is not None and j < prefix[b])
        if window is not None:
          ok &= abs(i - j) < window
        if segment_ids is not None:
          ok &= segment_ids[b, i] == kv_segment_ids[b, j]
        if input_mask is not None:
          ok &= bool(input_mask[b, j])
        if dense is not None:
          ok &= bool(dense[b, i, j])
        m[b, i, j] = ok
  return m


def reference_attention(q, k, v, mask, *, bias=None, scale=None, soft_cap=None):
  """q [b, q, h, d], k/v [b, kv, kv_heads, d], mask bool [b, q, kv] -> [b, q, h, d]."""
  groups = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  scale = q.shape[-1]**-0.5 if scale is None else scale
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision='highest') * scale
  if soft_cap is not None:
    logits = soft_cap * jnp.tanh(logits / soft_cap)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask[:, None], logits, -1e30)
  return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), v, precision='highest')


def qkv(seed, q_length, kv_length, heads=HEADS, kv_heads=HEADS, head_dim=HEAD_DIM):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(BATCH, n, h, head_dim)).astype(np.float32)
               for n, h in ((q_length, heads), (kv_length, kv_heads), (kv_length, kv_heads)))


def packed(lengths, total):
  """Segment ids 1, 2, ... for consecutive sequences of `lengths`, padding (0) after."""
  ids = np.zeros(total, np.int32)
  start = 0
  for n, length in enumerate(lengths):
    ids[start:start + length] = n + 1
    start += length
  return ids


def outputs_and_grads(fn, q, k, v, rows):
  """fn(q, k, v) and d/d(q, k, v) of a random projection of the rows that count (bool [batch, q_length])."""
  weights = np.random.default_rng(99).normal(size=q.shape).astype(np.float32) * rows[:, :, None, None]

  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out * weights), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


def run(fn, q, k, v, rows):
  return fast_jit(lambda q, k, v: outputs_and_grads(fn, q, k, v, rows))(q, k, v)


def assert_match(got, want, rows, atol=2e-5):
  """(out, grads) pairs agree: outputs on the rows that count, gradients everywhere; all finite."""
  (out, grads), (ref, ref_grads) = got, want
  assert all(np.isfinite(np.asarray(x)).all() for x in (out, *grads))
  np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], atol=atol, rtol=1e-4)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=atol, rtol=1e-4)


# Every variant x backend.

L = 16
PAD = np.array([[1] * L, [1] * 11 + [0] * 5], np.int32)
SEGMENTS = np.stack([packed([5, 7, 4], L), packed([6, 6], L)])  # Second row: 4 padding tokens (id 0).
PREFIX = np.array([4, 9], np.int32)
_rng = np.random.default_rng(0)
DENSE = _rng.random((BATCH, L, L)) < 0.7
DENSE[:, np.arange(L), np.arange(L)] = True
BIAS = _rng.normal(size=(BATCH, HEADS, L, L)).astype(np.float32)

# name: (AttentionMask fields, reference_mask kwargs, kv_heads, extra dot_product_attention kwargs)
CASES = {
    'padding': (dict(input_mask=PAD), dict(input_mask=PAD), HEADS, {}),
    'causal_padding_mqa': (dict(causal=True, input_mask=PAD), dict(causal=True, input_mask=PAD), 1, {}),
    'packed_causal_gqa': (dict(causal=True, segment_ids=SEGMENTS), dict(causal=True, segment_ids=SEGMENTS), 2, {}),
    'window_padding': (dict(sliding_window=3, input_mask=PAD), dict(window=3, input_mask=PAD), HEADS, {}),
    'causal_window_gqa': (dict(causal=True, sliding_window=4), dict(causal=True, window=4), 2, {}),
    'prefix_lm_padding': (dict(causal=True, prefix_length=PREFIX, input_mask=PAD),
                          dict(causal=True, prefix=PREFIX, input_mask=PAD), HEADS, {}),
    'dense_and_causal': (dict(causal=True, dense=DENSE[:, None]), dict(causal=True, dense=DENSE), HEADS, {}),
    'bias_soft_cap_gqa': (dict(input_mask=PAD), dict(input_mask=PAD), 2, dict(bias=BIAS, logits_soft_cap=2.0)),
    'alibi_packed': (dict(causal=True, segment_ids=SEGMENTS), dict(causal=True, segment_ids=SEGMENTS), HEADS,
                     dict(alibi_slopes=positions.alibi_slopes(HEADS))),
}


def alibi_reference_bias(segment_ids):
  """-slope * |i - j| with i, j counted from each segment's start, in numpy."""
  pos = np.zeros(segment_ids.shape, np.int64)
  for b, row in enumerate(segment_ids):
    for i in range(1, len(row)):
      pos[b, i] = pos[b, i - 1] + 1 if row[i] == row[i - 1] else 0
  distance = np.abs(pos[:, :, None] - pos[:, None, :])  # [batch, q, kv]
  return (-positions.alibi_slopes(HEADS)[None, :, None, None] * distance[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=None)
def reference_case(name):
  """((out, grads), rows) of the reference for CASES[name]."""
  _, ref_kwargs, kv_heads, extra = CASES[name]
  ref_mask = reference_mask(BATCH, L, L, **ref_kwargs)
  bias = alibi_reference_bias(SEGMENTS) if 'alibi_slopes' in extra else extra.get('bias')
  fn = lambda q, k, v: reference_attention(q, k, v, ref_mask, bias=bias, soft_cap=extra.get('logits_soft_cap'))
  rows = ref_mask.any(-1)
  return run(fn, *qkv(1, L, L, kv_heads=kv_heads), rows), rows


@pytest.mark.parametrize('backend', ['xla', 'dot_product_attention'])
def test_every_variant_matches_reference(backend):
  for name, (mask_fields, _, kv_heads, extra) in CASES.items():
    mask = attention.AttentionMask(**mask_fields)
    fn = lambda q, k, v, mask=mask, extra=extra: attention.dot_product_attention(
        q, k, v, mask=mask, backend=backend, self_attention=True, **extra)
    want, rows = reference_case(name)
    try:
      assert_match(run(fn, *qkv(1, L, L, kv_heads=kv_heads), rows), want, rows)
    except AssertionError as e:
      raise AssertionError(f'case {name}, backend {backend}') from e


def test_cross_attention_with_kv_segments_and_padding():
  q, k, v = qkv(2, 8, 12, kv_heads=2)
  q_seg = np.stack([packed([3, 5], 8), packed([8], 8)])
  kv_seg = np.stack([packed([7, 5], 12), packed([10], 12)])
  kv_pad = np.array([[1] * 12, [1] * 9 + [0] * 3])
  mask = attention.AttentionMask(segment_ids=q_seg, kv_segment_ids=kv_seg, input_mask=kv_pad)
  ref_mask = reference_mask(BATCH, 8, 12, segment_ids=q_seg, kv_segment_ids=kv_seg, input_mask=kv_pad)
  rows = ref_mask.any(-1)
  want = run(lambda q, k, v: reference_attention(q, k, v, ref_mask), q, k, v, rows)
  for backend in ('xla', 'dot_product_attention'):
    assert_match(run(lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask, backend=backend),
                     q, k, v, rows), want, rows)


def test_auto_on_cpu_is_xla_bit_for_bit():
  attention.clear_resolved_backends()
  q, k, v = qkv(7, L, L, kv_heads=2)
  mask = attention.AttentionMask(causal=True, segment_ids=SEGMENTS)
  outs = [attention.dot_product_attention(q, k, v, mask=mask, backend=b, self_attention=True)
          for b in ('xla', 'auto')]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert attention.resolved_backends()[-1] == ('auto', 'xla', 'auto on cpu: no fused kernel on cpu')


# Pallas kernels, in the interpreter on CPU.


def test_pallas_gpu_kernel_in_interpreter():
  attention.clear_resolved_backends()
  q, k, v = qkv(3, L, L, kv_heads=2)
  pad = (SEGMENTS > 0).astype(np.int32)
  mask = attention.AttentionMask(causal=True, segment_ids=SEGMENTS, input_mask=pad)
  ref_mask = reference_mask(BATCH, L, L, causal=True, segment_ids=SEGMENTS, input_mask=pad)
  fn = lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask, backend='pallas_gpu', scale=0.3,
                                                       self_attention=True, interpret=True)
  # Padding queries are rows nothing reads (the kernel lets them see the padding); the rest must match.
  rows = pad > 0
  assert_match(run(fn, q, k, v, rows), run(lambda q, k, v: reference_attention(q, k, v, ref_mask, scale=0.3),
                                            q, k, v, rows), rows)
  assert attention.resolved_backends() == [('pallas_gpu', 'pallas_gpu', 'requested')]

  # Bidirectional with padding only, multi-query; forward.
  q, k, v = qkv(4, L, L, kv_heads=1)
  out = fast_jit(lambda q, k, v: attention.dot_product_attention(
      q, k, v, mask=attention.AttentionMask(input_mask=PAD), backend='pallas_gpu', self_attention=True,
      interpret=True))(q, k, v)
  ref = reference_attention(q, k, v, reference_mask(BATCH, L, L, input_mask=PAD))
  np.testing.assert_allclose(np.asarray(out)[PAD > 0], np.asarray(ref)[PAD > 0], atol=2e-5)


def test_splash_tpu_kernel_in_interpreter():
  attention.clear_resolved_backends()
  length = 128
  q, k, v = qkv(5, length, length, kv_heads=2)
  segments = np.stack([packed([50, 60], length), packed([128], length)])
  pad = (segments > 0).astype(np.int32)
  mask = attention.AttentionMask(causal=True, sliding_window=40, segment_ids=segments, input_mask=pad)
  ref_mask = reference_mask(BATCH, length, length, causal=True, window=40, segment_ids=segments, input_mask=pad)
  fn = lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask, backend='splash_tpu', logits_soft_cap=3.0,
                                                       self_attention=True, interpret=True)
  rows = pad > 0
  assert_match(run(fn, q, k, v, rows), run(lambda q, k, v: reference_attention(q, k, v, ref_mask, soft_cap=3.0),
                                            q, k, v, rows), rows)
  assert attention.resolved_backends() == [('splash_tpu', 'splash_tpu', 'requested')]
  jax.jit(fn).lower(q, k, v)  # The cached kernel serves another trace (its arrays are concrete).

  # A two-sided window with padding of the keys only (exact on every row), multi-query; forward.
  q, k, v = qkv(6, length, length, kv_heads=1)
  pad = np.array([[1] * length, [1] * 100 + [0] * 28])
  out = fast_jit(lambda q, k, v: attention.dot_product_attention(
      q, k, v, mask=attention.AttentionMask(sliding_window=50, input_mask=pad), backend='splash_tpu',
      interpret=True))(q, k, v)
  ref_mask = reference_mask(BATCH, length, length, window=50, input_mask=pad)
  np.testing.assert_allclose(out, reference_attention(q, k, v, ref_mask), atol=2e-5)


def test_kernel_backends_fall_back_to_xla_exactly():
  q, k, v = qkv(8, L, L)
  key = jax.random.key(3)
  xla = attention.dot_product_attention(q, k, v, dropout_rng=key, dropout_rate=0.5, deterministic=False)
  for backend in ('pallas_gpu', 'splash_tpu', 'dot_product_attention', 'auto'):
    out = attention.dot_product_attention(q, k, v, dropout_rng=key, dropout_rate=0.5, deterministic=False,
                                          backend=backend, interpret=True)
    np.testing.assert_array_equal(out, xla)
  # Without the interpreter a kernel on CPU is plain xla as well.
  mask = attention.AttentionMask(causal=True)
  np.testing.assert_array_equal(attention.dot_product_attention(q, k, v, mask=mask, backend='splash_tpu'),
                                attention.dot_product_attention(q, k, v, mask=mask))


# Masks.


@pytest.mark.parametrize('name', list(CASES))
def test_dense_mask_matches_reference_loops(name):
  mask_fields, ref_kwargs, _, _ = CASES[name]
  dense = attention.dense_mask(attention.AttentionMask(**mask_fields), L, L)
  assert dense.ndim == 4 and dense.shape[1] == 1
  want = reference_mask(BATCH, L, L, **ref_kwargs)
  np.testing.assert_array_equal(np.broadcast_to(dense, (BATCH, 1, L, L))[:, 0], want)


def test_dense_mask_combines_everything():
  dense = attention.dense_mask(
      attention.AttentionMask(causal=True, sliding_window=5, prefix_length=PREFIX, segment_ids=SEGMENTS,
                              input_mask=PAD, dense=DENSE[:, None]), L, L)
  want = reference_mask(BATCH, L, L, causal=True, window=5, prefix=PREFIX, segment_ids=SEGMENTS, input_mask=PAD,
                        dense=DENSE)
  np.testing.assert_array_equal(dense[:, 0], want)
  assert attention.dense_mask(None, 4, 4) is None and attention.dense_mask(attention.AttentionMask(), 4, 4) is None
  plain = attention.padding_mask(PAD)
  assert attention.dense_mask(plain, L, L) is not None
  np.testing.assert_array_equal(attention.dense_mask(plain, L, L), plain)


def test_mask_rejects_bad_input():
  with pytest.raises(PretrainError, match='causal'):
    attention.AttentionMask(prefix_length=PREFIX)
  with pytest.raises(PretrainError, match='segment_ids'):
    attention.AttentionMask(kv_segment_ids=SEGMENTS)
  with pytest.raises(PretrainError, match='sliding_window'):
    attention.AttentionMask(sliding_window=0)
  q, k, v = qkv(0, L, L)
  with pytest.raises(PretrainError, match=r'input_mask has shape \(2, 8\)'):
    attention.dot_product_attention(q, k, v, mask=attention.AttentionMask(input_mask=PAD[:, :8]))
  with pytest.raises(PretrainError, match='kv_segment_ids'):
    attention.dot_product_attention(q, k[:, :8], v[:, :8], mask=attention.AttentionMask(segment_ids=SEGMENTS))
  with pytest.raises(PretrainError, match='evenly'):
    attention.dot_product_attention(q, k[:, :, :3], v[:, :, :3])


def test_mask_passes_through_jit_as_a_pytree():
  mask = attention.AttentionMask(causal=True, sliding_window=3, segment_ids=SEGMENTS)
  leaves, treedef = jax.tree.flatten(mask)
  assert len(leaves) == 1
  again = jax.tree.unflatten(treedef, leaves)
  assert again.causal and again.sliding_window == 3
  dense = jax.jit(lambda m: attention.dense_mask(m, L, L))(mask)
  np.testing.assert_array_equal(dense[:, 0], reference_mask(BATCH, L, L, causal=True, window=3,
                                                            segment_ids=SEGMENTS))


# The module: heads, positions, stabilizers, parameters.


def module_params(module, x, **kwargs):
  return nn.unbox(module.init(jax.random.key(1), x, **kwargs)['params'])


def shapes(params):
  return {'/'.join(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


X = np.random.default_rng(3).normal(size=(BATCH, L, EMBED)).astype(np.float32)


def test_parameter_tree_changes_only_where_the_variant_needs():
  default = shapes(jax.eval_shape(lambda: module_params(attention.MultiHeadAttention(HEADS, HEAD_DIM), X)))
  assert default == {f'{n}/{p}': s for n in ('query', 'key', 'value') for p, s in
                     (('kernel', (EMBED, HEADS * HEAD_DIM)), ('bias', (HEADS * HEAD_DIM,)))} | {
                         'out/kernel': (HEADS * HEAD_DIM, EMBED), 'out/bias': (EMBED,)}

  def variant(**kw):
    return shapes(jax.eval_shape(lambda: module_params(attention.MultiHeadAttention(HEADS, HEAD_DIM, **kw), X)))

  for kw in (dict(position='rope', rotary_fraction=0.5), dict(position='alibi'), dict(logits_soft_cap=30.0),
             dict(sliding_window=4), dict(num_kv_heads=HEADS), dict(backend='auto')):
    assert variant(**kw) == default, kw
  gqa = dict(default) | {'key/kernel': (EMBED, 2 * HEAD_DIM), 'key/bias': (2 * HEAD_DIM,),
                         'value/kernel': (EMBED, 2 * HEAD_DIM), 'value/bias': (2 * HEAD_DIM,)}
  assert variant(num_kv_heads=2) == gqa
  assert variant(qk_norm='layernorm') == default | {
      'query_norm/scale': (HEAD_DIM,), 'query_norm/bias': (HEAD_DIM,),
      'key_norm/scale': (HEAD_DIM,), 'key_norm/bias': (HEAD_DIM,)}
  assert variant(qk_norm='rmsnorm', num_kv_heads=1) == default | {
      'key/kernel': (EMBED, HEAD_DIM), 'key/bias': (HEAD_DIM,), 'value/kernel': (EMBED, HEAD_DIM),
      'value/bias': (HEAD_DIM,), 'query_norm/scale': (HEAD_DIM,), 'key_norm/scale': (HEAD_DIM,)}


def test_kv_heads_equal_to_heads_is_mha_exactly():
  mask = attention.padding_mask(PAD)
  mha = attention.MultiHeadAttention(HEADS, HEAD_DIM)
  params = module_params(mha, X, mask=mask)
  same = attention.MultiHeadAttention(HEADS, HEAD_DIM, num_kv_heads=HEADS)
  apply = lambda m: jax.jit(lambda p: m.apply({'params': p}, X, mask=mask))(params)
  np.testing.assert_array_equal(apply(mha), apply(same))


@pytest.mark.parametrize('kv_heads', [1, 2])
def test_grouped_heads_match_repeated_head_reference(kv_heads):
  mha = attention.MultiHeadAttention(HEADS, HEAD_DIM, num_kv_heads=kv_heads)
  mask = attention.AttentionMask(causal=True, input_mask=PAD)
  params = module_params(mha, X, mask=mask)
  out = fast_jit(lambda p: mha.apply({'params': p}, X, mask=mask))(params)

  def project(name, heads):
    y = X @ np.asarray(params[name]['kernel']) + np.asarray(params[name]['bias'])
    return y.reshape(BATCH, L, heads, HEAD_DIM)

  ref = reference_attention(project('query', HEADS), project('key', kv_heads), project('value', kv_heads),
                            reference_mask(BATCH, L, L, causal=True, input_mask=PAD))
  ref = ref.reshape(BATCH, L, -1) @ np.asarray(params['out']['kernel']) + np.asarray(params['out']['bias'])
  np.testing.assert_allclose(out, ref, atol=2e-5)


@pytest.mark.parametrize('position', ['rope', 'alibi'])
def test_packing_is_invisible_with_positions_inside_attention(position):
  """A sequence packed after another (with per-segment positions) gives what it gives alone."""
  mha = attention.MultiHeadAttention(HEADS, HEAD_DIM, position=position, rotary_fraction=0.5,
                                     initializer_range=0.3)  # Sharp attention, so positions show.
  params = module_params(mha, X, mask=attention.AttentionMask(causal=True))
  segments = packed([6, 7], L)[None]  # Then 3 padding tokens (id 0).
  both = fast_jit(lambda x: mha.apply({'params': params}, x, mask=attention.AttentionMask(
      causal=True, segment_ids=segments)))(X[:1])
  alone = fast_jit(lambda x: mha.apply({'params': params}, x, mask=attention.AttentionMask(causal=True)))(
      X[:1, 6:13])
  np.testing.assert_allclose(both[:, 6:13], alone, rtol=1e-5, atol=1e-5)
  # Both schemes are relative, so the ids matter only through their differences: doubled ids change them.
  stretched = fast_jit(lambda x: mha.apply({'params': params}, x, mask=attention.AttentionMask(causal=True),
                                           positions=2 * np.arange(7)[None]))(X[:1, 6:13])
  assert np.abs(stretched[:, 1:] - alone[:, 1:]).max() > 0.05 * np.abs(alone).max()


def test_soft_cap_bounds_the_logits():
  # Values are one-hot per key, so the output is the attention distribution itself.
  q, k, _ = qkv(9, 4, HEAD_DIM)
  q, k = 50 * q, 50 * k
  v = np.broadcast_to(np.eye(HEAD_DIM, dtype=np.float32)[None, :, None, :], k.shape)
  cap = 2.0
  probs = np.asarray(attention.dot_product_attention(q, k, v, logits_soft_cap=cap))  # [b, q, h, kv]
  log_ratio = np.log(probs.max(-1)) - np.log(probs.min(-1))
  assert log_ratio.max() <= 2 * cap + 1e-4
  assert log_ratio.max() > 1.5 * cap  # The cap binds: these logits are far beyond it.
  uncapped = np.asarray(attention.dot_product_attention(q, k, v))
  assert (np.log(uncapped.max(-1)) - np.log(np.maximum(uncapped.min(-1), 1e-38))).max() > 10 * cap
  with pytest.raises(PretrainError, match='logits_soft_cap'):
    attention.dot_product_attention(q, k, v, logits_soft_cap=0.0)


@pytest.mark.parametrize('kind', ['layernorm', 'rmsnorm'])
def test_qk_norm_params_and_scale_invariance(kind):
  mha = attention.MultiHeadAttention(HEADS, HEAD_DIM, qk_norm=kind)
  params = module_params(mha, X)
  names = {'scale', 'bias'} if kind == 'layernorm' else {'scale'}
  assert set(params['query_norm']) == names and set(params['key_norm']) == names
  # Normalized queries and keys: scaling their projections changes nothing.
  scaled = jax.tree.map(lambda x: x, params)
  for name in ('query', 'key'):
    scaled[name] = {p: 10.0 * w for p, w in params[name].items()}
  apply = fast_jit(lambda p: mha.apply({'params': p}, X))
  np.testing.assert_allclose(apply(scaled), apply(params), atol=1e-4)
  plain = attention.MultiHeadAttention(HEADS, HEAD_DIM)
  plain_params = {n: params[n] for n in ('query', 'key', 'value', 'out')}
  assert not np.allclose(plain.apply({'params': {**plain_params, 'query': scaled['query']}}, X),
                         plain.apply({'params': plain_params}, X), atol=1e-3)


def test_module_rejects_bad_variants():
  for kw, match in ((dict(num_kv_heads=3), 'divisor'), (dict(position='xpos'), 'position'),
                    (dict(qk_norm='l2'), 'qk_norm'), (dict(backend='flash'), 'splash_tpu'),
                    (dict(rotary_fraction=0.0), 'rotary_fraction')):
    with pytest.raises(PretrainError, match=match):
      attention.MultiHeadAttention(HEADS, HEAD_DIM, **kw).init(jax.random.key(0), X[:, :2])


# Choosing a backend.


def test_resolve_backend_decisions_and_reasons():
  resolve = attention.resolve_backend
  plain = attention.AttentionFeatures(causal=True, padding=True, q_length=512, kv_length=512)
  bf16 = dataclasses.replace(plain, dtype='bfloat16')
  assert resolve('xla', plain, 'tpu') == ('xla', 'requested')
  assert resolve('auto', plain, 'cpu') == ('xla', 'auto on cpu: no fused kernel on cpu')
  assert resolve('auto', plain, 'tpu') == ('splash_tpu', 'auto on tpu')
  assert resolve('auto', bf16, 'gpu') == ('dot_product_attention', 'auto on gpu')
  assert resolve('auto', plain, 'gpu') == ('pallas_gpu', 'auto on gpu')
  backend, reason = resolve('auto', dataclasses.replace(bf16, dropout=True), 'gpu')
  assert backend == 'xla' and 'dot_product_attention has no attention dropout' in reason
  backend, reason = resolve('auto', dataclasses.replace(plain, soft_cap=True), 'gpu')
  assert backend == 'xla' and 'pallas_gpu has no logits soft-cap' in reason
  assert resolve('auto', dataclasses.replace(plain, soft_cap=True, sliding_window=True), 'tpu')[0] == 'splash_tpu'
  # Explicit requests that cannot be met fall back to xla, saying why.
  cases = [
      ('splash_tpu', plain, 'cpu', False, 'splash_tpu needs a TPU'),
      ('pallas_gpu', plain, 'tpu', False, 'pallas_gpu needs a GPU'),
      ('splash_tpu', dataclasses.replace(plain, alibi=True), 'tpu', False, 'no ALiBi'),
      ('splash_tpu', dataclasses.replace(plain, bias=True), 'tpu', False, 'no additive logits bias'),
      ('splash_tpu', dataclasses.replace(plain, prefix=True), 'tpu', False, 'prefix-LM'),
      ('splash_tpu', dataclasses.replace(plain, q_length=100), 'tpu', False, 'multiples of 128'),
      ('pallas_gpu', dataclasses.replace(plain, sliding_window=True), 'gpu', False, 'no sliding window'),
      ('pallas_gpu', dataclasses.replace(plain, dense_mask=True), 'gpu', False, 'no dense mask'),
      ('pallas_gpu', dataclasses.replace(plain, self_attention=False), 'gpu', False, 'only fits self-attention'),
      ('pallas_gpu', dataclasses.replace(plain, kv_length=256), 'gpu', False, 'q_length == kv_length'),
      ('pallas_gpu', dataclasses.replace(plain, q_length=48, kv_length=48), 'gpu', False, 'multiples of 32'),
      ('dot_product_attention', dataclasses.replace(plain, soft_cap=True), 'gpu', False, 'no logits soft-cap'),
      ('dot_product_attention', dataclasses.replace(plain, dropout=True), 'cpu', False, 'no attention dropout'),
  ]
  for requested, features, platform, interpret, why in cases:
    backend, reason = resolve(requested, features, platform, interpret=interpret)
    assert backend == 'xla' and why in reason, (requested, features, reason)
  # The interpreter runs the kernels anywhere; cuDNN needs half precision.
  assert resolve('pallas_gpu', plain, 'cpu', interpret=True) == ('pallas_gpu', 'requested')
  assert resolve('splash_tpu', plain, 'cpu', interpret=True) == ('splash_tpu', 'requested')
  assert resolve('dot_product_attention', bf16, 'gpu') == ('dot_product_attention', 'requested')
  assert 'needs bfloat16/float16' in resolve('dot_product_attention', plain, 'gpu')[1]
  with pytest.raises(PretrainError, match='unknown attention backend'):
    resolve('flash', plain, 'gpu')


def test_fallback_is_logged_once_and_recorded(caplog):
  attention.clear_resolved_backends()
  mha = attention.MultiHeadAttention(HEADS, HEAD_DIM, backend='splash_tpu', position='alibi', interpret=True)
  with caplog.at_level(logging.WARNING, logger='pretrain.models.attention'):
    params = module_params(mha, X)
    for _ in range(2):
      mha.apply({'params': params}, X)
  warnings = [r.getMessage() for r in caplog.records if 'splash_tpu' in r.getMessage()]
  assert warnings == ['attention backend splash_tpu -> xla: splash_tpu has no ALiBi bias']
  assert attention.resolved_backends() == [('splash_tpu', 'xla', 'splash_tpu has no ALiBi bias')]


# Config.


def test_attention_config_builds_the_module_and_resolves():
  cfg = attention.AttentionConfig.from_dict(
      {'backend': 'auto', 'num_kv_heads': 2, 'position': 'rope', 'rotary_fraction': 0.5, 'qk_norm': 'rmsnorm',
       'logits_soft_cap': 30.0, 'sliding_window': 8})
  mha = cfg.build(num_heads=HEADS, head_dim=HEAD_DIM, dropout_rate=0.1, use_bias=False, logits_scale=1.0,
                  name='attn')
  assert (mha.num_kv_heads, mha.position, mha.rotary_fraction, mha.qk_norm, mha.logits_soft_cap,
          mha.sliding_window, mha.backend, mha.use_bias, mha.logits_scale, mha.dropout_rate, mha.name) == (
              2, 'rope', 0.5, 'rmsnorm', 30.0, 8, 'auto', False, 1.0, 0.1, 'attn')
  features = cfg.features(num_heads=HEADS, dropout=False, causal=True, segments=True, length=1024)
  assert features.grouped and features.soft_cap and features.sliding_window and not features.alibi
  assert cfg.resolve(features, 'tpu') == ('splash_tpu', 'auto on tpu')
  assert cfg.resolve(dataclasses.replace(features, dropout=True), 'tpu')[0] == 'xla'
  assert attention.AttentionConfig().build(num_heads=HEADS, head_dim=HEAD_DIM) == attention.MultiHeadAttention(
      HEADS, HEAD_DIM)
  t5 = attention.AttentionConfig(position='relative_bias', relative_num_buckets=16, relative_max_distance=64)
  assert t5.features(num_heads=HEADS).bias
  assert t5.relative_position_bias(num_heads=HEADS, bidirectional=False, name='rel') == (
      positions.RelativePositionBias(HEADS, 16, 64, bidirectional=False, name='rel'))


def test_attention_config_rejects_bad_input():
  with pytest.raises(PretrainError, match='unknown AttentionConfig keys: num_kv_head'):
    attention.AttentionConfig.from_dict({'num_kv_head': 2})
  for kw, match in ((dict(backend='cudnn'), 'unknown attention backend'), (dict(position='xpos'), 'position'),
                    (dict(qk_norm='l2'), 'qk_norm'), (dict(num_kv_heads=0), 'num_kv_heads'),
                    (dict(logits_soft_cap=-1.0), 'logits_soft_cap'), (dict(sliding_window=0), 'sliding_window'),
                    (dict(rotary_fraction=1.5), 'rotary_fraction'), (dict(rope_theta=0.0), 'rope_theta')):
    with pytest.raises(PretrainError, match=match):
      attention.AttentionConfig(**kw)
  with pytest.raises(PretrainError, match='divisor of num_heads 4'):
    attention.AttentionConfig(num_kv_heads=3).build(num_heads=4, head_dim=8)
