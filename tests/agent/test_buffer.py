"""The agent's batch buffer against a plain-list model (Hypothesis), plus backoff bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xpuctl.agent.core import buffer
from xpuctl.common import backoff

ops = st.lists(
    st.one_of(
        st.just(("append", 0)),
        st.tuples(st.just("ack"), st.integers(0, 60)),
        st.tuples(st.just("send"), st.integers(0, 3)),  # the link writes the next few (0: the stream ends)
    ),
    max_size=80,
)


@given(capacity=st.integers(1, 10), script=ops)
def test_buffer_matches_model(capacity: int, script: list[tuple[str, int]]) -> None:
    buf = buffer.BatchBuffer(capacity)
    model: list[int] = []
    dropped = acked = seq = sent = 0
    for op, arg in script:
        if op == "append":
            seq += 1
            buf.append(seq, str(seq).encode())
            if len(model) == capacity:  # the oldest not yet sent goes, else the oldest
                unsent = [s for s in model if s > sent]
                model.remove(unsent[0] if unsent else model[0])
                dropped += 1
            model.append(seq)
        elif op == "send":
            waiting = [s for s in model if s > sent]
            sent = waiting[min(arg, len(waiting)) - 1] if arg and waiting else (sent if arg else 0)
            buf.mark_sent(sent)
        else:
            buf.ack(arg)
            acked = max(acked, arg)
            model = [s for s in model if s > arg]
        assert [s for s, _ in buf.after(0)] == model
        assert len(buf) <= capacity
        assert buf.dropped_total == dropped and buf.acked_seq == acked
    # resend after the last ack is exactly the unacknowledged, undropped batches, in order
    assert [p for _, p in buf.after(acked)] == [str(s).encode() for s in model if s > acked]


def test_a_full_buffer_keeps_the_batch_in_flight_and_drops_the_oldest_unsent() -> None:
    # after an outage the backlog drains while new batches come: the one being written (most
    # likely stored) stays, the oldest not yet sent goes, and the controller sees that one as a gap
    buf = buffer.BatchBuffer(3)
    for seq in (1, 2, 3):
        buf.append(seq, b"x")
    buf.mark_sent(1)
    buf.append(4, b"x")
    assert [s for s, _ in buf.after(0)] == [1, 3, 4] and buf.dropped_total == 1
    buf.mark_sent(4)  # every batch written: the oldest goes
    buf.append(5, b"x")
    assert [s for s, _ in buf.after(0)] == [3, 4, 5] and buf.dropped_total == 2
    buf.mark_sent(0)  # the stream ended: nothing is in flight, the oldest goes
    buf.append(6, b"x")
    assert [s for s, _ in buf.after(0)] == [4, 5, 6] and buf.dropped_total == 3


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
