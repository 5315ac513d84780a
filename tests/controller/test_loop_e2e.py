"""The closed loop end to end: real agents (processes), a real Mosquitto, the controller in-process.

Each test starts its own broker on a free loopback port (config in deploy/mosquitto/test.conf).
"""

from __future__ import annotations

import asyncio
import signal
import time

import msgspec
import numpy as np
import pytest

from tests.helpers import Mosquitto, Processes, RunningService, Watcher, agent_argv, make_service, wait_until
from xpuctl.controller.core import model
from xpuctl.protos.xpu.v1 import bus

pytestmark = pytest.mark.slow
TOPICS = bus.Topics()


def agent_args(ctl: RunningService, mq: Mosquitto, node: str, vendor: str, *extra: str) -> list[str]:
    """`xpu-agent run` arguments for a simulated node on the bus."""
    return agent_argv(ctl.target, node, vendor, "--mqtt", mq.url + "?protocol=5", *extra)


def results(w: Watcher, node: str) -> list[bus.Result]:
    """Every answer a node published."""
    return [msgspec.json.decode(p, type=bus.Result) for _, p in w.on(TOPICS.cmd_res(node))]


def commands(w: Watcher, node: str) -> list[tuple[float, bus.SetPowerCap | bus.RestoreDefault]]:
    """Every command sent to a node, with its arrival time."""
    dec = msgspec.json.Decoder(bus.Command)
    return [(t, dec.decode(p)) for t, p in w.on(TOPICS.cmd_req(node))]


async def test_thermal_runaway_is_capped_at_once_and_clears(mosquitto: Mosquitto, processes: Processes) -> None:
    ctl = await RunningService(make_service(mosquitto.url)).start()
    watch = Watcher(mosquitto.url, "xpu/v1/#")
    await watch.start()
    try:
        processes.start(
            *agent_args(
                ctl,
                mosquitto,
                "hot",
                "nvidia",
                "--sim-workload",
                "training",
                "--sim-fault",
                "thermal_runaway:dev=2:at=6:for=60",
            )
        )
        st = ctl.svc.state
        await wait_until(
            lambda: (
                "nvidia-hot-2" in st.registry.slot_of_uuid
                and st.store.count[st.registry.slot_of_uuid["nvidia-hot-2"]] > 0
            ),
            timeout_s=20,
            what="the agent's first samples",
        )
        slot = st.registry.slot_of_uuid["nvidia-hot-2"]
        ts, _ = st.store.history(slot, model.M["temperature_c"])
        onset_wall_s = ts[0] / 1e9 + 6.0  # the fault starts 6 simulated (= wall) seconds after the first sample
        await wait_until(
            lambda: any(c.device_uuid == "nvidia-hot-2" for _, c in commands(watch, "hot")),
            timeout_s=20,
            what="a set_power_cap command for the hot device",
        )
        t_cmd, first = next((t, c) for t, c in commands(watch, "hot") if c.device_uuid == "nvidia-hot-2")
        lag_s = (time.time() - (time.monotonic() - t_cmd)) - onset_wall_s
        assert isinstance(first, bus.SetPowerCap)
        assert first.power_cap_w < 700
        assert lag_s <= 2 * ctl.svc.cfg.power.period_s, f"command came {lag_s:.2f}s after the fault"
        await wait_until(
            lambda: any(r.id == first.id and r.ok for r in results(watch, "hot")),
            timeout_s=10,
            what="the agent's ack of the command",
        )
        ack = next(r for r in results(watch, "hot") if r.id == first.id)
        assert ack.applied_cap_w == pytest.approx(first.power_cap_w)
        # the temperature falls and the anomaly clears
        await wait_until(
            lambda: any(
                e.kind == "anomaly.cleared" and e.device_uuid == "nvidia-hot-2" and e.detector.startswith("thermal")
                for e in st.recent_events
            ),
            timeout_s=40,
            what="the thermal anomaly to clear",
        )
        _, temps = st.store.history(slot, model.M["temperature_c"])
        peak = int(np.nanargmax(temps))
        assert temps[-1] < temps[peak], "temperature did not fall after the cap"
        raised = [e for e in st.recent_events if e.kind == "anomaly.raised" and e.device_uuid == "nvidia-hot-2"]
        assert raised and raised[0].detector in ("thermal", "thermal_rise")
        others = [e for e in st.recent_events if e.kind.startswith("anomaly.") and e.device_uuid != "nvidia-hot-2"]
        assert not others, f"healthy devices raised anomalies: {others[:3]}"
    finally:
        await watch.stop()
        await ctl.stop()


def fleet_power_w(ctl: RunningService) -> float:
    """The cluster's power now, from the newest sample of every device."""
    st = ctl.svc.state
    slots = np.arange(len(st.registry), dtype=np.int64)
    return float(np.nansum(st.store.latest(slots)[:, model.M["power_w"]]))


async def test_budget_is_held_while_the_workload_changes(mosquitto: Mosquitto, processes: Processes) -> None:
    ctl = await RunningService(make_service(mosquitto.url)).start()
    try:
        # 6 nodes: cappable NVIDIA, AMD, Hygon, Cambricon and a fixed-load Ascend; training and
        # bursty inference (the workload changes every few seconds)
        processes.start(
            "xpuctl.agent.cli",
            "fleet",
            "--controller",
            ctl.target,
            "--mqtt",
            mosquitto.url + "?protocol=5",
            "--nodes",
            "6",
            "--vendors",
            "nvidia,amd,hygon,cambricon,ascend,nvidia",
            "--workloads",
            "training,inference",
            "--seed",
            "3",
        )
        st = ctl.svc.state
        await wait_until(
            lambda: len(st.registry) == 48 and int(st.store.count[:48].min()) >= 12,
            timeout_s=40,
            what="48 devices with 12 samples each",
        )
        demand_w = np.mean([fleet_power_w(ctl)])
        budget_w = round(0.7 * demand_w)
        st.set_budget(budget_w, time.time_ns())
        period = ctl.svc.cfg.power.period_s
        await asyncio.sleep(5 * period)  # five control periods to get there
        seen = []
        for _ in range(30):  # then it must stay there, sample after sample, for 15 s
            await asyncio.sleep(0.5)
            seen.append(fleet_power_w(ctl))
        seen_arr = np.array(seen)
        assert seen_arr.max() <= 1.02 * budget_w, f"power {seen_arr.max():.0f} W above budget {budget_w} W + 2%"
        assert seen_arr.mean() >= 0.85 * budget_w, f"budget {budget_w} W but only {seen_arr.mean():.0f} W used"
        assert seen_arr.std() > 0, "the workload did not change"
        applied = st.control.ledger.totals.get("applied", 0)
        assert applied > 0 and st.control.feasible
    finally:
        await ctl.stop()


def state_of(w: Watcher, node: str) -> bus.NodeState | None:
    """The newest reported state of a node."""
    msgs = w.on(TOPICS.state(node))
    return msgspec.json.decode(msgs[-1][1], type=bus.NodeState) if msgs else None


def statuses(w: Watcher, topic: str) -> list[str]:
    """Every status (`online`, `lost`, `offline`) seen on a status topic, oldest first."""
    return [msgspec.json.decode(p, type=bus.Status).state for _, p in w.on(topic)]


async def test_agents_fail_safe_when_the_controller_is_gone(mosquitto: Mosquitto, processes: Processes) -> None:
    ctl = await RunningService(make_service(mosquitto.url)).start()
    watch = Watcher(mosquitto.url, "xpu/v1/#")
    await watch.start()
    try:
        processes.start(
            *agent_args(ctl, mosquitto, "fs", "amd", "--sim-workload", "training", "--failsafe-after-s", "3")
        )
        st = ctl.svc.state
        await wait_until(
            lambda: len(st.registry) == 8 and int(st.store.count[:8].min()) >= 3, timeout_s=20, what="samples"
        )
        st.set_budget(0.5 * fleet_power_w(ctl), time.time_ns())
        await wait_until(
            lambda: (
                (s := state_of(watch, "fs")) is not None
                and all(d.power_limit_w is not None and d.power_limit_w < 300 for d in s.devices)
            ),
            timeout_s=15,
            what="caps below default",
        )
        stopped_at = time.monotonic()
        await ctl.stop()  # says `offline` on the bus; the agents' lease runs out 3 s later
        await wait_until(
            lambda: (s := state_of(watch, "fs")) is not None and s.fail_safe, timeout_s=15, what="fail-safe state"
        )
        # the lease runs from the last heartbeat heard (every 0.5 s), not from the stop
        assert time.monotonic() - stopped_at >= 3.0 - 0.5 - 0.1
        s = state_of(watch, "fs")
        assert s is not None
        assert all(d.fail_safe and d.power_limit_w == d.default_w == 300.0 for d in s.devices)
        assert statuses(watch, TOPICS.controller_status)[-1] == bus.OFFLINE
        # the controller comes back with what it held (as after SIGSTOP and SIGCONT): the agent
        # ends its fail-safe and says so, and the loop caps its devices again (issue 18.1)
        await ctl.start()
        await wait_until(
            lambda: (
                (s := state_of(watch, "fs")) is not None
                and not s.fail_safe
                and all(d.power_limit_w is not None and d.power_limit_w < 300 for d in s.devices)
            ),
            timeout_s=20,
            what="the fail-safe ended and the caps enforced again",
        )
        kinds = [e.kind for e in st.recent_events if e.node_id == "fs"]
        assert "node.fail_safe" in kinds and "node.fail_safe_ended" in kinds
    finally:
        await watch.stop()
        await ctl.stop()


async def test_agent_says_offline_when_stopped(mosquitto: Mosquitto, processes: Processes) -> None:
    """SIGTERM: a clean disconnect discards the will, so the agent must say `offline` itself first."""
    ctl = await RunningService(make_service(None)).start()
    watch = Watcher(mosquitto.url, "xpu/v1/status/#")
    await watch.start()
    proc = processes.start(*agent_args(ctl, mosquitto, "bye", "ascend"))
    try:
        topic = TOPICS.status("bye")
        await wait_until(lambda: statuses(watch, topic)[-1:] == [bus.ONLINE], timeout_s=20, what="the agent online")
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.poll() is not None, timeout_s=10, what="the agent's exit")
        assert proc.returncode == 0
        await wait_until(lambda: statuses(watch, topic)[-1:] != [bus.ONLINE], timeout_s=5, what="a status after online")
        assert statuses(watch, topic)[-1] == bus.OFFLINE  # not `lost`: it left on purpose
    finally:
        await watch.stop()
        await ctl.stop()


async def test_agent_command_hygiene(mosquitto: Mosquitto, processes: Processes) -> None:
    """Expired, duplicate, foreign and garbage commands, against a real agent process."""
    ctl = await RunningService(make_service(None)).start()  # telemetry only; the test is the controller
    watch = Watcher(mosquitto.url, "xpu/v1/#")
    await watch.start()
    proc = processes.start(*agent_args(ctl, mosquitto, "hy", "nvidia", "--failsafe-after-s", "600"))
    try:
        await wait_until(lambda: state_of(watch, "hy") is not None, timeout_s=20, what="the agent's first state")
        host, port = "127.0.0.1", mosquitto.port
        import aiomqtt  # noqa: PLC0415

        async with aiomqtt.Client(host, port, identifier="test-ctl") as c:
            now = time.time_ns()

            def cmd(i: str, cap: float, expires_ns: int, uuid: str = "nvidia-hy-1") -> bytes:
                return msgspec.json.encode(
                    bus.SetPowerCap(id=i, device_uuid=uuid, power_cap_w=cap, issued_at_ns=now, expires_at_ns=expires_ns)
                )

            req = TOPICS.cmd_req("hy")
            # an expired command that sat in the agent's socket while it was stopped
            proc.send_signal(19)  # SIGSTOP
            await c.publish(req, cmd("exp-1", 250, time.time_ns() + 500_000_000), qos=1)
            await asyncio.sleep(1.0)  # the command expires while the agent cannot read it
            proc.send_signal(18)  # SIGCONT
            await wait_until(
                lambda: any(r.id == "exp-1" for r in results(watch, "hy")), timeout_s=10, what="exp-1 answer"
            )
            r = next(r for r in results(watch, "hy") if r.id == "exp-1")
            assert not r.ok and "expired" in r.error
            # duplicates: applied once, answered twice the same
            later = time.time_ns() + 30_000_000_000
            await c.publish(req, cmd("dup-1", 260, later), qos=1)
            await c.publish(req, cmd("dup-1", 260, later), qos=1)
            # a cap outside the range is clamped (H100: 200..700 W)
            await c.publish(req, cmd("low-1", 10, later, uuid="nvidia-hy-2"), qos=1)
            # another node's device on our topic, and a command on another node's topic
            await c.publish(req, cmd("for-1", 250, later, uuid="nvidia-other-1"), qos=1)
            await c.publish(TOPICS.cmd_req("other"), cmd("other-1", 250, later), qos=1)
            # garbage
            for junk in (
                b"\x00\xffgarbage",
                b"{}",
                (
                    b'{"kind":"set_power_cap","id":"nan-1","device_uuid":"nvidia-hy-1",'
                    b'"power_cap_w":NaN,"issued_at_ns":1,"expires_at_ns":99999999999999999999}'
                ),
                cmd("neg-1", 100, later).replace(b'"power_cap_w":100', b'"power_cap_w":-5'),
            ):
                await c.publish(req, junk, qos=1)
            # and it keeps working
            await c.publish(req, cmd("ok-1", 300, later, uuid="nvidia-hy-3"), qos=1)
            await wait_until(
                lambda: any(r.id == "ok-1" for r in results(watch, "hy")), timeout_s=10, what="ok-1 answer"
            )
        rs = results(watch, "hy")
        by_id: dict[str, list[bus.Result]] = {}
        for r in rs:
            by_id.setdefault(r.id, []).append(r)
        assert [r.ok for r in by_id["dup-1"]] == [True, True]
        assert by_id["dup-1"][0] == by_id["dup-1"][1]
        assert by_id["low-1"][0].applied_cap_w == 200.0
        assert not by_id["for-1"][0].ok and "not on node" in by_id["for-1"][0].error
        assert "other-1" not in by_id
        garbage = [r for r in rs if not r.ok and r.error.startswith("bad command")]
        assert len(garbage) == 4, rs
        assert by_id["neg-1"][0].error.startswith("bad command") and "power_cap_w" in by_id["neg-1"][0].error
        assert by_id["ok-1"][0].ok and by_id["ok-1"][0].applied_cap_w == 300.0
        s = state_of(watch, "hy")
        assert s is not None and s.commands_applied == 3  # dup-1 once, low-1, ok-1; never exp-1
        assert {d.uuid: d.power_limit_w for d in s.devices}["nvidia-hy-1"] == 260.0
        assert proc.poll() is None
    finally:
        await watch.stop()
        await ctl.stop()


async def test_both_sides_reconnect_after_a_broker_restart(mosquitto: Mosquitto, processes: Processes) -> None:
    ctl = await RunningService(make_service(mosquitto.url)).start()
    try:
        processes.start(
            *agent_args(ctl, mosquitto, "rb", "hygon", "--sim-workload", "training", "--failsafe-after-s", "60")
        )
        st = ctl.svc.state
        await wait_until(
            lambda: len(st.registry) == 8 and int(st.store.count[:8].min()) >= 3, timeout_s=20, what="samples"
        )
        ledger = st.control.ledger
        st.set_budget(0.6 * fleet_power_w(ctl), time.time_ns())
        await wait_until(
            lambda: ledger.totals.get("applied", 0) >= 8, timeout_s=15, what="caps applied before the restart"
        )
        mosquitto.kill()
        await asyncio.sleep(1.5)
        mosquitto.start()
        before = ledger.totals.get("applied", 0)
        st.set_budget(0.8 * fleet_power_w(ctl), time.time_ns())
        await wait_until(
            lambda: ledger.totals.get("applied", 0) >= before + 4,
            timeout_s=25,
            what="caps applied after the broker came back",
        )
        assert ctl.svc.bus is not None and ctl.svc.bus.counters.connects >= 2
        assert "rb" in ctl.svc.node_states
    finally:
        await ctl.stop()


async def test_the_loop_runs_on_the_embedded_mqtt311_broker(processes: Processes) -> None:
    from tests.helpers import free_port  # noqa: PLC0415

    svc = make_service("embedded")
    svc.embedded_port = free_port()
    ctl = await RunningService(svc).start()
    try:
        assert ctl.svc.bus_url is not None and ctl.svc.bus_url.endswith("protocol=3.1.1")
        processes.start(
            "xpuctl.agent.cli",
            "run",
            "--node-id",
            "emb",
            "--controller",
            ctl.target,
            "--mqtt",
            ctl.svc.bus_url,
            "--sim-vendor",
            "cambricon",
            "--sim-workload",
            "training",
            "--reconnect-max-s",
            "0.5",
        )
        st = ctl.svc.state
        await wait_until(
            lambda: len(st.registry) == 8 and int(st.store.count[:8].min()) >= 3, timeout_s=20, what="samples"
        )
        st.set_budget(0.6 * fleet_power_w(ctl), time.time_ns())
        await wait_until(
            lambda: st.control.ledger.totals.get("applied", 0) >= 8, timeout_s=15, what="caps applied over 3.1.1"
        )
    finally:
        await ctl.stop()
