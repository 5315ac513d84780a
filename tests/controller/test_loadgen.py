"""The bench's load generator splices seq and timestamps into pre-encoded bytes: they must decode
to exactly what the agent's own codec encodes (issue 13.2).
"""

from __future__ import annotations

from xpuctl.agent.adapters import codec
from xpuctl.controller.lab import loadgen
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

T = 1_800_000_000_000_000_000


def test_a_spliced_batch_decodes_to_the_agents_own() -> None:
    node = loadgen.Node(0, "n-0", "nvidia", 8, seed=1)
    for seq in range(1, 2 * loadgen.VARIANTS + 2):  # every body, seqs past one varint byte
        got = pb.AgentMessage.FromString(node.next(T + seq))
        samples = node.samples[seq % loadgen.VARIANTS]
        want = pb.AgentMessage.FromString(codec.batch(seq=seq, dropped_total=0, samples=samples, rows=list(range(8))))
        want.batch.timestamp_ns[:] = [T + seq] * 8
        assert got == want, seq
    big = loadgen.message(300, T, 2, b"")  # a two-byte varint seq
    assert pb.AgentMessage.FromString(big).batch.seq == 300


def test_a_hot_batch_heats_one_settable_device_above_its_slowdown_and_caps_show() -> None:
    node = loadgen.Node(0, "n-0", "nvidia", 8, seed=1)
    hot = node.next_hot(T)
    assert hot is not None
    raw, uuid = hot
    b = pb.AgentMessage.FromString(raw).batch
    row = next(i for i, d in enumerate(node.infos) if d.uuid == uuid)
    temps = next(c for c in b.columns if c.metric == pb.METRIC_TEMPERATURE_C).values
    assert temps[row] > (node.infos[row].temp_slowdown_c or 0.0)
    assert node.apply(uuid, 1.0) == node.infos[row].power_limit_min_w  # clamped into the range
    capped = pb.AgentMessage.FromString(node.next(T + 1)).batch
    limits = next(c for c in capped.columns if c.metric == pb.METRIC_POWER_LIMIT_W).values
    assert limits[row] == node.infos[row].power_limit_min_w
    assert node.apply("not-here", 300.0) is None
