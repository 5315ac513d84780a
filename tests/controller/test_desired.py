"""The desired state across restarts (issue 18.2): what a hub saves, what a new hub takes back,
and the local file store that keeps it.
"""

from __future__ import annotations

import math
import os
import pathlib
import threading
import time

import grpc
import grpc.aio
import msgspec
import pytest

from tests.helpers import RunningService, feed_node, free_port, wait_until
from xpuctl.controller import config, hub, service
from xpuctl.controller.adapters import metrics, statefile
from xpuctl.controller.core import desired, views
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc

NOW_NS = 1_800_000_000_000_000_000
S = 10**9


def hello(h: hub.Hub, now_ns: int = NOW_NS) -> None:
    """Node n1 with gpu-0 and gpu-1 (settable, 100..700 W, caps not reported) says Hello."""
    feed_node(h, "n1", ["gpu-0", "gpu-1"], now_ns, boot_id="b", limit_w=None)


def through_a_file(h: hub.Hub) -> desired.Desired:
    """What a restarted controller reads back of `h`'s state."""
    return desired.decode(desired.encode(h.snapshot(NOW_NS)))


def test_a_restarted_hub_has_the_cordons_weights_and_budget_back() -> None:
    before = hub.Hub()
    hello(before)
    before.cordon(device_uuid="gpu-1", node_id="", reason="ECC storm", cordoned=True, now_ns=NOW_NS)
    before.set_weight(3.0, device_uuid="gpu-0")
    before.set_weight(0.5, node_id="n1")
    before.set_budget(900.0, NOW_NS)

    after = hub.Hub()
    after.restore(through_a_file(before), where="test", now_ns=NOW_NS + S)
    assert after.budget_w == 900.0
    assert [e.kind for e in after.recent_events] == ["state.restored"]
    hello(after, NOW_NS + S)  # the devices come back, in another order of slots or not
    seen = {v.info.uuid: v for v in after.views.devices(NOW_NS + S, views.DeviceFilter())}
    assert (seen["gpu-1"].cordoned, seen["gpu-1"].cordon_reason) == (True, "ECC storm")
    assert not seen["gpu-0"].cordoned
    weights = after.control.inputs(NOW_NS + S).weight
    assert weights[after.registry.slot_of_uuid["gpu-0"]] == 3.0
    assert weights[after.registry.slot_of_uuid["gpu-1"]] == 0.5


def test_an_open_command_is_still_known_after_a_restart() -> None:
    # Before: the answer to a command issued before a restart was an unknown result, and the
    # loop, not knowing the cap it had asked for, sent the device a command again.
    cfg = config.Config(power=config.Power(budget_w=10_000.0))  # room for both devices at 700 W
    before = hub.Hub(cfg=cfg)
    hello(before)
    entry, _ = before.control.ledger.issue(
        NOW_NS, slot=0, node_id="n1", device_uuid="gpu-0", cap_w=700.0, reason="budget"
    )

    after = hub.Hub(cfg=cfg)
    after.restore(through_a_file(before), where="test", now_ns=NOW_NS + S)
    hello(after, NOW_NS + S)
    after.tick(NOW_NS + S)
    slot = after.registry.slot_of_uuid["gpu-0"]
    assert after.control.ledger.open_by_slot.get(slot) == entry.id  # the loop waits for its answer
    pending = after.control.inputs(NOW_NS + S).pending
    assert pending is not None and pending[slot]
    issued = [e.device_uuid for e in after.recent_events if e.kind == "action.issued"]
    assert issued == ["gpu-1"]  # gpu-1's cap was never asked for; gpu-0's is on its way

    after.result(NOW_NS + 2 * S, node_id="n1", id=entry.id, ok=True, applied_cap_w=700.0, error="")
    assert after.control.ledger.unknown_results == 0
    assert after.control.ledger.totals.get("applied") == 1
    assert after.control.power.target_w[slot] == 700.0


def test_a_restored_command_still_expires() -> None:
    before = hub.Hub()
    hello(before)
    before.control.ledger.issue(NOW_NS, slot=0, node_id="n1", device_uuid="gpu-0", cap_w=400.0, reason="budget")
    after = hub.Hub()
    after.restore(through_a_file(before), where="test", now_ns=NOW_NS + S)
    after.tick(NOW_NS + 60 * S)  # its device never came back
    assert not after.control.ledger.open
    assert after.control.ledger.totals.get("expired") == 1


def test_the_config_budget_wins_when_it_changed_since_the_save() -> None:
    before = hub.Hub(cfg=config.Config(power=config.Power(budget_w=5000.0)))
    before.set_budget(4000.0, NOW_NS)
    saved = through_a_file(before)

    same_config = hub.Hub(cfg=config.Config(power=config.Power(budget_w=5000.0)))
    same_config.restore(saved, where="test", now_ns=NOW_NS)
    assert same_config.budget_w == 4000.0  # the operator's later decision stands

    edited = hub.Hub(cfg=config.Config(power=config.Power(budget_w=6000.0)))
    edited.restore(saved, where="test", now_ns=NOW_NS)
    assert edited.budget_w == 6000.0  # the config was edited after the save: the newer decision
    assert "the config's budget replaces the saved 4000 W" in edited.recent_events[-1].message

    removed = hub.Hub(cfg=config.Config(power=config.Power(budget_w=5000.0)))
    before.set_budget(0.0, NOW_NS)  # an operator removed the budget: that is a decision too
    removed.restore(through_a_file(before), where="test", now_ns=NOW_NS)
    assert removed.budget_w is None


def test_the_file_store_round_trips_and_replaces_whole(tmp_path: pathlib.Path) -> None:
    store = statefile.FileStore(tmp_path / "s")
    try:
        assert store.load() is None
        assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
        d = desired.Desired(budget_w=1234.5, cordons={"gpu-0": "ECC storm"}, node_weights={"n1": 2.0})
        store.save(d)
        store.save(msgspec.structs.replace(d, budget_w=99.0))
        assert store.load() == msgspec.structs.replace(d, budget_w=99.0)
        assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["lock", "state.json"]
        assert (tmp_path / "s" / "lock").read_text() == f"{os.getpid()}\n"
    finally:
        store.close()


def test_saves_from_two_threads_at_once_both_succeed(tmp_path: pathlib.Path) -> None:
    # The service's saver thread was still writing when the final save on the way out began: both
    # used one temporary file, and one rename failed (ENOENT), so the shutdown saved nothing.
    store = statefile.FileStore(tmp_path)
    failures: list[OSError] = []

    def save_many(budget_w: float) -> None:
        for _ in range(200):
            try:
                store.save(desired.Desired(budget_w=budget_w, node_weights={f"n{i}": 1.5 for i in range(300)}))
            except OSError as exc:
                failures.append(exc)

    try:
        threads = [threading.Thread(target=save_many, args=(w,)) for w in (1000.0, 2000.0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        loaded = store.load()
        assert loaded is not None and loaded.budget_w in (1000.0, 2000.0)
    finally:
        store.close()


def test_a_failed_save_leaves_the_previous_state_whole(tmp_path: pathlib.Path) -> None:
    store = statefile.FileStore(tmp_path)
    try:
        store.save(desired.Desired(budget_w=1000.0))
        (tmp_path / "state.json.tmp").mkdir()  # fault injection: the temporary file cannot be opened
        with pytest.raises(OSError, match=r"state\.json\.tmp"):
            store.save(desired.Desired(budget_w=2000.0))
        loaded = store.load()
        assert loaded is not None and loaded.budget_w == 1000.0
    finally:
        store.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a saved state"),
        (b"\xff\xfe{", "not a saved state"),
        (b"[1, 2]", "not a saved state"),
        (b'{"format": 2}', "format 2 was written by a newer xpuctl"),
        (b'{"format": 0}', "format 0 is not a format xpuctl ever wrote"),
        (b'{"format": 1, "budget_w": -5}', "budget_w"),
        (b'{"format": 1, "node_weights": {"n1": 0}}', "node_weights"),
        (b'{"format": 1, "surprise": true}', "surprise"),
        (b'{"format": 1, "commands": [{"id": "x"}]}', "commands"),
    ],
)
def test_a_corrupt_file_is_refused_by_name(tmp_path: pathlib.Path, content: bytes, message: str) -> None:
    (tmp_path / "state.json").write_bytes(content)
    store = statefile.FileStore(tmp_path)
    try:
        with pytest.raises(desired.Corrupt) as caught:
            store.load()
        assert message in str(caught.value)
        assert f"state file {tmp_path / 'state.json'}" in str(caught.value) and "move it aside" in str(caught.value)
    finally:
        store.close()


def test_a_second_store_on_one_directory_is_refused(tmp_path: pathlib.Path) -> None:
    first = statefile.FileStore(tmp_path)
    try:
        with pytest.raises(statefile.StateDirError, match=rf"in use by another controller \(pid {os.getpid()}\)"):
            statefile.FileStore(tmp_path)
    finally:
        first.close()
    statefile.FileStore(tmp_path).close()  # free again once the first let go


def test_a_nan_weight_never_reaches_the_file() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"device_weights": {"gpu-0": math.nan}}, desired.Desired)


class FlakyStore:
    """A store whose disk can be made to fail (fault injection); it keeps what it saved."""

    where = "flaky-disk"

    def __init__(self) -> None:
        """Working, empty."""
        self.failing = False
        self.saved: list[desired.Desired] = []

    def load(self) -> desired.Desired | None:
        """Nothing was saved before."""
        return None

    def save(self, d: desired.Desired) -> None:
        """Keep `d`, or fail like a full disk."""
        if self.failing:
            raise OSError(28, "No space left on device")
        self.saved.append(d)


@pytest.mark.slow
async def test_a_decision_that_cannot_be_saved_is_answered_data_loss() -> None:
    store = FlakyStore()
    svc = service.Service(config.Config(), listen=f"127.0.0.1:{free_port()}", store=store)
    ctl = await RunningService(svc).start()
    try:
        async with grpc.aio.insecure_channel(ctl.target) as ch:
            stub = cluster_pb2_grpc.ClusterStub(ch)
            await stub.SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=5000.0), timeout=5)
            assert store.saved[-1].budget_w == 5000.0  # saved before the answer came

            store.failing = True
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=4000.0), timeout=5)
            assert caught.value.code() == grpc.StatusCode.DATA_LOSS
            assert "not saved to flaky-disk (No space left on device)" in str(caught.value.details())
            assert svc.state.budget_w == 4000.0  # in force, and the operator was told it is not kept
            assert svc.state.save_errors >= 1
            assert [e.kind for e in svc.state.recent_events].count("state.save_failed") == 1
            assert "xpu_state_save_errors_total" in metrics.render(svc.state, time.time_ns())

            store.failing = False  # the next tick saves what is in force, and says so
            await wait_until(lambda: store.saved[-1].budget_w == 4000.0, timeout_s=10, what="a save after the fix")
            await wait_until(
                lambda: svc.state.recent_events[-1].kind == "state.saved", timeout_s=10, what="state.saved"
            )
    finally:
        await ctl.stop()
