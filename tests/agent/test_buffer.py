"""The agent's batch buffer against a plain-list model (Hypothesis), plus backoff bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xpuctl.agent.core import buffer
from xpuctl.common import backoff

ops = st.lists(st.one_of(st.just(("append", 0)), st.tuples(st.just("ack"), st.integers(0, 60))), max_size=80)


@given(capacity=st.integers(1, 10), script=ops)
def test_buffer_matches_model(capacity: int, script: list[tuple[str, int]]) -> None:
    buf = buffer.BatchBuffer(capacity)
    model: list[int] = []
    dropped = acked = seq = 0
    for op, arg in script:
        if op == "append":
            seq += 1
            buf.append(seq, str(seq).encode())
            if len(model) == capacity:
                model.pop(0)
                dropped += 1
            model.append(seq)
        else:
            buf.ack(arg)
            acked = max(acked, arg)
            model = [s for s in model if s > arg]
        assert [s for s, _ in buf.after(0)] == model
        assert len(buf) <= capacity
        assert buf.dropped_total == dropped and buf.acked_seq == acked
    # resend after the last ack is exactly the unacknowledged, undropped batches, in order
    assert [p for _, p in buf.after(acked)] == [str(s).encode() for s in model if s > acked]


def test_make_room_counts_before_the_append() -> None:
    buf = buffer.BatchBuffer(2)
    buf.append(1, b"1")
    buf.append(2, b"2")
    buf.make_room()
    assert buf.dropped_total == 1 and buf.oldest_seq() == 2
    buf.append(3, b"3")
    assert buf.dropped_total == 1


@given(attempt=st.integers(0, 200), u=st.floats(0, 1))
def test_backoff_is_bounded_and_grows(attempt: int, u: float) -> None:
    d = backoff.delay_s(attempt, base_s=0.5, cap_s=30.0, uniform01=u)
    assert 0 <= d <= min(30.0, 0.5 * 2 ** min(attempt, 32))
    assert backoff.delay_s(attempt, base_s=0.5, cap_s=30.0, uniform01=1.0) == min(30.0, 0.5 * 2 ** min(attempt, 32))
