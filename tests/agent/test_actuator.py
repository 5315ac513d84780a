"""The agent's actuation rules (pure): foreign, garbage, duplicate, expired, clamp, the lease."""

from __future__ import annotations

import msgspec
import pytest

from xpuctl.agent.core import actuator
from xpuctl.protos.xpu.v1 import bus

S = 1_000_000_000
DEVS = [
    actuator.DeviceRange(uuid="d0", index=0, min_w=200.0, max_w=700.0, default_w=700.0, settable=True),
    actuator.DeviceRange(uuid="d1", index=1, min_w=400.0, max_w=400.0, default_w=400.0, settable=False),
]


def act() -> actuator.Actuator:
    return actuator.Actuator("n1", DEVS, failsafe_after_s=10, now_ns=0)


def cmd(i: str = "c1", cap: float = 300.0, uuid: str = "d0", expires: int = 100 * S) -> bytes:
    return msgspec.json.encode(
        bus.SetPowerCap(id=i, device_uuid=uuid, power_cap_w=cap, issued_at_ns=0, expires_at_ns=expires)
    )


def test_apply_clamps_and_answers_the_enforced_value() -> None:
    a = act()
    d = a.on_command("n1", cmd(cap=50.0), S)
    assert isinstance(d, actuator.Apply) and d.cap_w == 200.0
    r = a.applied(d, 200.0)
    assert r == bus.Result(id="c1", ok=True, applied_cap_w=200.0)
    assert a.state(S).devices[0].power_limit_w == 200.0


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x00\xff", "malformed"),
        (b"{}", "kind"),
        (
            b'{"kind":"set_power_cap","id":"x","device_uuid":"d0","power_cap_w":-1,"issued_at_ns":0,"expires_at_ns":9}',
            "power_cap_w",
        ),
        (
            b'{"kind":"set_power_cap","id":"x","device_uuid":"d0","power_cap_w":1e300,"issued_at_ns":0,"expires_at_ns":9}',
            "power_cap_w",
        ),
        (b'{"kind":"reboot","id":"x"}', "kind"),
    ],
)
def test_garbage_is_answered_and_counted(payload: bytes, fragment: str) -> None:
    a = act()
    d = a.on_command("n1", payload, S)
    assert isinstance(d, actuator.Answer) and not d.result.ok and fragment in d.result.error
    assert a.counters.garbage == 1


def test_foreign_topic_is_ignored_and_foreign_device_refused() -> None:
    a = act()
    assert isinstance(a.on_command("n2", cmd(), S), actuator.Ignore)
    d = a.on_command("n1", cmd(uuid="other"), S)
    assert isinstance(d, actuator.Answer) and "not on node n1" in d.result.error


def test_duplicates_are_applied_once() -> None:
    a = act()
    first = a.on_command("n1", cmd(), S)
    assert isinstance(first, actuator.Apply)
    assert isinstance(a.on_command("n1", cmd(), S), actuator.Ignore)  # still being applied
    a.applied(first, 300.0)
    again = a.on_command("n1", cmd(), 2 * S)
    assert isinstance(again, actuator.Answer) and again.result.applied_cap_w == 300.0
    assert a.counters.applied == 1 and a.counters.duplicates == 2


def test_expired_is_never_applied() -> None:
    a = act()
    d = a.on_command("n1", cmd(expires=5 * S), 5 * S)
    assert isinstance(d, actuator.Answer) and "expired" in d.result.error
    assert a.counters.expired == 1


def test_non_settable_device_is_refused() -> None:
    d = act().on_command("n1", cmd(uuid="d1"), S)
    assert isinstance(d, actuator.Answer) and "no power-cap setter" in d.result.error


def test_lease_lost_restores_defaults_once() -> None:
    a = act()
    assert a.on_controller_status(bus.ONLINE, 1 * S) is False  # no fail-safe to end
    assert a.check_lease(5 * S) == []
    assert a.on_controller_status(bus.LOST, 6 * S) is False
    assert a.check_lease(10 * S) == []  # lost, but not for long enough yet
    restores = a.check_lease(11 * S + 1)
    assert [(r.uuid, r.cap_w, r.restore) for r in restores] == [("d0", 700.0, True)]
    assert a.fail_safe and a.state(12 * S).fail_safe
    assert a.check_lease(20 * S) == []  # once
    # the controller is back: the fail-safe ends, and the adapter must report it (issue 18.1)
    assert a.on_controller_status(bus.ONLINE, 21 * S) is True
    assert not a.state(21 * S).fail_safe
    assert a.on_controller_status(bus.ONLINE, 22 * S) is False  # reported once


def test_lease_starts_at_agent_start() -> None:
    a = act()
    assert a.check_lease(9 * S) == []
    assert len(a.check_lease(11 * S)) == 1


def test_a_command_valid_for_too_long_is_refused() -> None:
    # Issue 19: a command that expires a year ahead was applied.
    a = actuator.Actuator("n1", DEVS, failsafe_after_s=10, now_ns=0, max_lifetime_s=300)
    year = 365 * 86_400 * S
    d = a.on_command("n1", cmd("far", expires=S + year), S)
    assert isinstance(d, actuator.Answer) and not d.result.ok
    assert "beyond this agent's 300s maximum" in d.result.error
    assert a.counters.too_long == 1
    assert isinstance(a.on_command("n1", cmd("near", expires=S + 300 * S), S), actuator.Apply)


def sharded(i: str, shard: str, epoch: int) -> bytes:
    return msgspec.json.encode(
        bus.SetPowerCap(
            id=i, device_uuid="d0", power_cap_w=300.0, issued_at_ns=0, expires_at_ns=100 * S, shard=shard, epoch=epoch
        )
    )


def test_a_deposed_owners_epoch_is_refused_once_a_newer_one_was_seen() -> None:
    a = act()
    assert isinstance(a.on_command("n1", sharded("c1", "s1", 5), S), actuator.Apply)
    assert isinstance(a.on_command("n1", sharded("c2", "s1", 9), S), actuator.Apply)
    late = a.on_command("n1", sharded("c3", "s1", 5), S)  # the old owner, after a pause
    assert isinstance(late, actuator.Answer) and not late.result.ok
    assert "stale epoch 5 for shard s1" in late.result.error and "epoch 9 seen" in late.result.error
    assert a.counters.stale_epoch == 1 and a.state(S).commands_rejected == 1
    # epochs are per shard; and a command without a shard (one controller) is not judged by them
    assert isinstance(a.on_command("n1", sharded("c4", "s2", 1), S), actuator.Apply)
    assert isinstance(a.on_command("n1", cmd("c5"), S), actuator.Apply)
    # the same epoch again is the same owner
    assert isinstance(a.on_command("n1", sharded("c6", "s1", 9), S), actuator.Apply)


def test_a_negative_epoch_is_garbage() -> None:
    payload = (
        b'{"kind":"set_power_cap","id":"x","device_uuid":"d0","power_cap_w":300,"issued_at_ns":0,'
        b'"expires_at_ns":9,"shard":"s1","epoch":-1}'
    )
    d = act().on_command("n1", payload, 1)
    assert isinstance(d, actuator.Answer) and "epoch" in d.result.error


def test_fail_safe_goes_to_the_site_safe_cap_clamped_and_only_from_a_current_owner() -> None:
    a = act()
    assert isinstance(a.on_command("n1", sharded("c1", "s1", 9), S), actuator.Apply)  # epoch 9 heard
    stale = msgspec.json.encode(bus.SafeCaps(shard="s1", epoch=8, caps={"d0": 350.0}))
    assert "stale epoch 8" in a.on_safe_caps(stale) and a.safe_w == {}
    assert a.on_safe_caps(b"{not json") != ""
    fresh = msgspec.json.encode(bus.SafeCaps(shard="s1", epoch=9, caps={"d0": 150.0, "elsewhere": 300.0}))
    assert a.on_safe_caps(fresh) == "" and a.safe_w == {"d0": 200.0}  # clamped to d0's 200..700 W
    (apply,) = a.check_lease(20 * S)  # silent past 10 s: fail safe
    assert apply.uuid == "d0" and apply.cap_w == 200.0 and not apply.restore
