"""Collectives read from HLO text: kinds, executions inside loops, every replica-group format, bytes sent."""

import numpy as np
import pytest

from pretrain.plan import collectives

# 8 devices, two islands of 4 (slices or hosts): device i is in island i // 4.
HLO = """HloModule jit_train_step, is_scheduled=true

%tpu_cond (p.1: (s32[], bf16[1024,256])) -> pred[] {
  %constant.9 = s32[]{:T(128)} constant(3)
  %p.1 = (s32[]{:T(128)}, bf16[1024,256]{1,0}) parameter(0)
  %gte.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  ROOT %lt = pred[]{:T(512)} compare(%gte.1, %constant.9), direction=LT
}

%tpu_body (p.2: (s32[], bf16[1024,256])) -> (s32[], bf16[1024,256]) {
  %p.2 = (s32[]{:T(128)}, bf16[1024,256]{1,0}) parameter(0)
  %x = bf16[256,256]{1,0:T(8,128)(2,1)} get-tuple-element(%p.2), index=1
  %all-gather.1 = bf16[1024,256]{0,1:T(8,128)(2,1)} all-gather(%x), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}, use_global_device_ids=true
  ROOT %t = (s32[]{:T(128)}, bf16[1024,256]{1,0}) tuple(%gte, %all-gather.1)
}

%gpu_body (p.3: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p.3 = (s32[], f32[256]{0}) parameter(0)
  %y = f32[1024]{0} get-tuple-element(%p.3), index=1
  %reduce-scatter.1 = f32[256]{0} reduce-scatter(%y), channel_id=2, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, to_apply=%add
  %ags = (f32[4]{0}, f32[16]{0}) all-gather-start(%z), channel_id=5, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  %agd = f32[16]{0} all-gather-done(%ags)
  ROOT %t.3 = (s32[], f32[256]{0}) tuple(%i, %reduce-scatter.1)
}

%gpu_cond (p.4: (s32[], f32[256])) -> pred[] {
  %constant.1 = s32[] constant(99)
  ROOT %lt.4 = pred[] compare(%a, %constant.1), direction=LT
}

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main.1 (arg: f32[8]) -> f32[8] {
  %while.1 = (s32[]{:T(128)}, bf16[1024,256]{1,0}) while(%init), condition=%tpu_cond, body=%tpu_body
  %while.2 = (s32[], f32[256]{0}) while(%init2), condition=%gpu_cond, body=%gpu_body, backend_config={"known_trip_count":{"n":"5"}}
  %all-reduce.1 = f32[1000]{0} all-reduce(%v), channel_id=3, replica_groups=[4,2]<=[2,4]T(1,0), use_global_device_ids=true, to_apply=%add
  %all-reduce-start.1 = f32[8,8]{1,0} all-reduce-start(%w), channel_id=4, replica_groups={}, to_apply=%add
  ROOT %all-reduce-done.1 = f32[8,8]{1,0} all-reduce-done(%all-reduce-start.1)
}
"""  # noqa: E501


def _parse():
  return collectives.parse(HLO, 8, lambda i: i // 4)


def test_every_collective_once_with_its_executions_per_step():
  found = {(c.kind, c.result_bytes): c for c in _parse()}
  assert sorted(found) == sorted(
    [
      ("all-gather", 1024 * 256 * 2),
      ("reduce-scatter", 1024),
      ("all-gather", 64),
      ("all-reduce", 4000),
      ("all-reduce", 256),
    ]
  )  # The -done halves are not counted again.
  # A TPU while without known_trip_count runs as often as its condition's bound (i < 3); a GPU one
  # known_trip_count times (5), not its condition's constant.
  assert found[("all-gather", 524288)].executions == 3
  assert found[("reduce-scatter", 1024)].executions == 5
  assert found[("all-gather", 64)].executions == 5
  assert found[("all-reduce", 4000)].executions == 1


def test_bytes_sent_per_device_as_a_ring_sends_them():
  found = {(c.kind, c.result_bytes): c for c in _parse()}
  # all-gather within an island of 4: (n-1)/n of the result, 3 times.
  ag = found[("all-gather", 524288)]
  assert (ag.group_size, ag.islands) == (4, 1)
  assert ag.link_bytes == pytest.approx(3 * 3 / 4 * 524288) and ag.network_bytes == 0
  # reduce-scatter: (n-1) x the result shard, 5 times.
  assert found[("reduce-scatter", 1024)].link_bytes == pytest.approx(5 * 3 * 1024)
  # all-gather-start's result is the second element of its (operand, result) tuple: 16 floats.
  assert found[("all-gather", 64)].link_bytes == pytest.approx(5 * 3 / 4 * 64)
  # Pairs {0,4}, {1,5}, ...: every group spans both islands, one device in each: all over the network.
  pairs = found[("all-reduce", 4000)]
  assert (pairs.group_size, pairs.islands) == (2, 2)
  assert pairs.link_bytes == 0 and pairs.network_bytes == pytest.approx(2 * 1 / 2 * 4000)
  # All 8 devices: a ring of 4 in each island, then a ring of 2 islands on a quarter of the bytes.
  every = found[("all-reduce", 256)]
  assert every.group_size == 8 and every.islands == 2
  assert every.link_bytes == pytest.approx(2 * 3 / 4 * 256)
  assert every.network_bytes == pytest.approx(2 * 1 / 2 * 256 / 4)


def test_by_kind_sums_per_kind():
  kinds = collectives.by_kind(_parse())
  assert set(kinds) == {"all-gather", "reduce-scatter", "all-reduce"}
  assert kinds["all-gather"]["ops"] == 2 and kinds["all-gather"]["executions"] == 8
  assert kinds["all-reduce"]["max_islands"] == 2
  assert kinds["all-reduce"]["bytes"] == 4000 + 256


@pytest.mark.parametrize(
  "attrs, groups",
  [
    ("replica_groups={{0,2},{1,3}}", [[0, 2], [1, 3]]),
    ("replica_groups=[2,2]<=[4]", [[0, 1], [2, 3]]),
    ("replica_groups=[2,2]<=[2,2]T(1,0)", [[0, 2], [1, 3]]),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}", [[0, 2], [1, 3]]),
    (
      "replica_groups=mesh['axis_0'=2,'axis_1'=1,'axis_2'=2], device_ids=([2,2]T(1,0)) {'axis_0'}",
      [[0, 1], [2, 3]],
    ),
    ("replica_groups={}", [[0, 1, 2, 3]]),
    ("source_target_pairs={{0,1},{1,2}}", [[0, 1], [1, 2]]),
  ],
)
def test_replica_group_formats(attrs, groups):
  np.testing.assert_array_equal(collectives.replica_groups(attrs, 4), groups)


def test_array_bytes_of_arrays_and_tuples():
  assert collectives.array_bytes("bf16[1024,256]{1,0:T(8,128)(2,1)}") == 524288
  assert collectives.array_bytes("(f32[2,3]{1,0}, s8[10]{0}, pred[])") == 24 + 10 + 1


def test_a_multi_slice_transfer_to_the_dcn_runtime_is_a_ring_over_the_slices():
  hlo = """ENTRY %main (a: f32[128]) -> f32[128] {
  %send = (f32[1,1,128]{2,1,0:T(1,128)}, u32[], token[]) send(%x, %after-all), channel_id=3, is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
  %recv = (f32[1,1,128]{2,1,0:T(1,128)}, u32[], token[]) recv(%after-all), channel_id=2, is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
}
"""  # noqa: E501
  (c,) = collectives.parse(hlo, 8, lambda i: i // 4)  # The send counts, the recv is its other half.
  assert (c.kind, c.result_bytes, c.islands) == ("all-reduce", 512, 2)
  assert c.link_bytes == 0 and c.network_bytes == pytest.approx(2 * 1 / 2 * 512)
