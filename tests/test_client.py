"""The Python client (xpuctl.client) against a real controller: typed answers, errors by kind, and
event watches that resume after the last event id across a lost stream without losing any.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any

import pytest

from tests.helpers import ROOT, RunningService, free_port, make_service, wait_until
from xpuctl.client import AsyncClient, Client, Refused, Unreachable
from xpuctl.controller import hub
from xpuctl.controller.core import events
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

pytestmark = pytest.mark.slow


def _events(n: int, tag: str, *, age_s: float = 0.0) -> list[events.Event]:
    at = time.time_ns() - int(age_s * 1e9)
    return [events.Event(timestamp_ns=at + i, kind="test.event", message=f"{tag}{i}") for i in range(n)]


async def test_watch_resumes_after_the_last_id_without_losing_events() -> None:
    svc = make_service(None)
    ctl = await RunningService(svc).start()
    st: hub.Hub = svc.state
    got: list[cpb.Event] = []
    outages: list[str] = []
    async with AsyncClient(ctl.target, timeout_s=5.0) as xpu:

        async def read() -> None:
            async for e in xpu.watch(kinds=["test."], on_gone=lambda exc: outages.append(exc.code)):
                got.append(e)  # noqa: PERF401 - read live, while the stream goes on

        reader = asyncio.create_task(read())
        try:
            await wait_until(lambda: len(st.watchers) == 1, timeout_s=10, what="the watch to open")
            st.publish(_events(3, "a"))
            await wait_until(lambda: len(got) == 3, timeout_s=10, what="three live events")
            await ctl.stop()  # the stream breaks; the controller's state stays (the same hub)
            # published while the watcher is away, stamped earlier than the last it saw (an event
            # carries the time of the sample it is about, which may come late): a resume by time
            # would skip them, a resume by id does not
            st.publish(_events(2, "b", age_s=60))
            await wait_until(lambda: len(outages) == 1, timeout_s=10, what="the outage to be reported")
            await ctl.start()
            await wait_until(lambda: len(got) == 5, timeout_s=20, what="the two missed events after the reconnect")
            st.publish(_events(1, "c"))
            await wait_until(lambda: len(got) == 6, timeout_s=10, what="a live event after the reconnect")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await ctl.stop()
    assert [e.message for e in got] == ["a0", "a1", "a2", "b0", "b1", "c0"]
    ids = [e.id for e in got]
    assert ids == sorted(ids) and len(set(ids)) == 6 and ids[0] > 0
    assert outages == ["UNAVAILABLE"]


async def test_a_watch_told_what_it_lost() -> None:
    svc = make_service(None)
    st: hub.Hub = svc.state
    st.recent_events = collections.deque(maxlen=5)
    ctl = await RunningService(svc).start()
    try:
        st.publish(_events(1, "old"))
        first = st.recent_events[-1].id
        st.publish(_events(8, "new"))  # the backlog of 5 no longer reaches back to `first`
        with Client(ctl.target) as xpu:
            kept = await asyncio.to_thread(lambda: list(xpu.events(after_id=first, history_only=True)))
            assert kept[0].kind == "watch.lost" and kept[0].value == 3  # new0..new2 fell out
            assert "3 event(s) after id" in kept[0].message
            assert [e.message for e in kept[1:]] == [f"new{i}" for i in range(3, 8)]
            # an id from before this controller started: how much was lost is unknown, and said so
            kept = await asyncio.to_thread(lambda: list(xpu.events(after_id=first - 10**9, history_only=True)))
            assert kept[0].kind == "watch.lost" and "restarted" in kept[0].message
            # nothing lost: no such event
            last = st.recent_events[-2].id
            kept = await asyncio.to_thread(lambda: list(xpu.events(after_id=last, history_only=True)))
            assert [e.message for e in kept] == ["new7"]
    finally:
        await ctl.stop()


async def test_errors_by_kind_and_answers_typed() -> None:
    svc = make_service(None)
    ctl = await RunningService(svc).start()
    try:
        async with AsyncClient(ctl.target) as xpu:
            s = await xpu.summary()
            assert isinstance(s, cpb.Summary) and s.devices == 0
            assert await xpu.devices() == []
            with pytest.raises(Refused) as refused:
                await xpu.cordon("testing", device_uuid="no-such-device")
            assert refused.value.code == "NOT_FOUND" and "no-such-device" in str(refused.value)
            with pytest.raises(ValueError, match="health 'sick' is not one of"):
                await xpu.devices(health="sick")
    finally:
        await ctl.stop()
    with Client(f"127.0.0.1:{free_port()}", timeout_s=1.0) as gone, pytest.raises(Unreachable):
        await asyncio.to_thread(gone.summary)


async def test_the_readme_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### From Python: `xpuctl.client`", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    svc = make_service(None)
    ctl = await RunningService(svc).start()
    try:
        assert await asyncio.to_thread(scope["roomiest"], 4, ctl.target) == []
    finally:
        await ctl.stop()


async def test_xpuctl_events_hides_debug_events_unless_verbose() -> None:
    from tests.helpers import xpuctl  # noqa: PLC0415

    svc = make_service(None)
    ctl = await RunningService(svc).start()
    try:
        now = time.time_ns()
        svc.state.publish(
            [
                events.Event(timestamp_ns=now, kind="action.issued", severity="debug", message="cap gpu-1 at 500 W"),
                events.Event(timestamp_ns=now + 1, kind="power.period", message="power loop: 1 cap(s) changed"),
            ]
        )
        rc, out, _ = await xpuctl(ctl.target, "events", "--since", "1m", "--seconds", "1", "--json")
        assert rc == 0 and [json.loads(x)["kind"] for x in out.splitlines()] == ["power.period"]
        rc, out, _ = await xpuctl(ctl.target, "events", "--since", "1m", "--seconds", "1", "--json", "--verbose")
        assert rc == 0 and [json.loads(x)["kind"] for x in out.splitlines()] == ["action.issued", "power.period"]
    finally:
        await ctl.stop()
