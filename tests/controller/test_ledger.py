"""The action ledger's transitions (pure)."""

from __future__ import annotations

from xpuctl.controller.core import ledger

S = 1_000_000_000


def make() -> ledger.Ledger:
    return ledger.Ledger(prefix="t", ttl_s=10, retry_after_s=2)


def issue(lg: ledger.Ledger, now: int, slot: int = 0) -> ledger.Entry:
    e, evs = lg.issue(now, slot=slot, node_id="n", device_uuid=f"d{slot}", cap_w=300.0, reason="budget")
    assert evs[-1].kind == "action.issued" and evs[-1].action_id == e.id
    return e


def test_issued_then_applied() -> None:
    lg = make()
    e = issue(lg, 0)
    send, expired, _ = lg.due(0)
    assert send == [e] and not expired
    lg.sent(e, 0)
    assert lg.due(1 * S)[0] == []  # not yet time to retry
    got, evs = lg.result(1 * S, node_id="n", id=e.id, ok=True, applied_cap_w=300.0, error="")
    assert got is e and e.state == ledger.APPLIED and evs[0].kind == "action.applied" and evs[0].value == 300.0
    assert lg.result(2 * S, node_id="n", id=e.id, ok=True, applied_cap_w=300.0, error="") == (None, [])
    assert lg.unknown_results == 1


def test_retried_until_expired() -> None:
    lg = make()
    e = issue(lg, 0)
    lg.sent(e, 0)
    send, _, _ = lg.due(2 * S)
    assert send == [e]
    lg.sent(e, 2 * S)
    send, expired, evs = lg.due(10 * S)
    assert not send and expired == [e] and e.state == ledger.EXPIRED
    assert evs[0].kind == "action.expired" and "2 attempt" in evs[0].message


def test_failed() -> None:
    lg = make()
    e = issue(lg, 0)
    _, evs = lg.result(S, node_id="n", id=e.id, ok=False, applied_cap_w=None, error="driver refused")
    assert e.state == ledger.FAILED and evs[0].kind == "action.failed" and "driver refused" in evs[0].message


def test_one_writer_per_device() -> None:
    lg = make()
    a = issue(lg, 0, slot=3)
    b, evs = lg.issue(S, slot=3, node_id="n", device_uuid="d3", cap_w=250.0, reason="budget")
    assert a.state == ledger.SUPERSEDED and evs[0].kind == "action.superseded"
    assert list(lg.open) == [b.id]


def test_abandoned_commands_are_closed_and_never_sent_again() -> None:
    lg = make()
    a, b = issue(lg, 0, slot=0), issue(lg, 0, slot=1)
    closed, evs = lg.abandon(1 * S, "new epoch")
    assert [e.id for e in closed] == [a.id, b.id] and all(e.state == ledger.EXPIRED for e in closed)
    assert [e.kind for e in evs] == ["action.expired", "action.expired"] and "new epoch" in evs[0].message
    assert lg.due(3 * S) == ([], [], []) and not lg.open
    assert lg.result(4 * S, node_id="n", id=a.id, ok=True, applied_cap_w=300.0, error="") == (None, [])
