"""/metrics: OpenTelemetry-translated names, checked by promtool on a scrape of a running controller."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess

import aiomqtt
import pytest

from tests.helpers import Mosquitto, Processes, RunningService, make_service, wait_until

pytestmark = pytest.mark.slow  # end-to-end: real processes, brokers or servers


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return head, body


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (scripts/test installs prometheus)"
)
async def test_promtool_accepts_a_scrape_of_a_running_controller(processes: Processes) -> None:
    svc = make_service(None, budget_w=50_000.0)
    svc.metrics_listen = "127.0.0.1:0"
    ctl = await RunningService(svc).start()
    try:
        processes.start(
            "xpuctl.agent.cli",
            "fleet",
            "--controller",
            ctl.target,
            "--nodes",
            "3",
            "--vendors",
            "nvidia,ascend,cambricon",
            "--workloads",
            "training",
        )
        st = svc.state
        await wait_until(
            lambda: len(st.registry) == 24 and int(st.store.count[:24].min()) >= 2,
            timeout_s=30,
            what="24 devices reporting",
        )
        head, body = await scrape(svc.metrics_port)
        assert head.startswith("HTTP/1.1 200") and "version=0.0.4" in head
        check = await asyncio.to_thread(
            subprocess.run, ["promtool", "check", "metrics"], input=body, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        for name in (
            "hw_power_watts{",
            "hw_energy_joules_total{",
            "hw_temperature_celsius{",
            "hw_gpu_utilization_ratio{",
            "hw_gpu_memory_usage_bytes{",
            "xpu_power_limit_watts{",
            "hw_status{",
            "xpu_cluster_power_watts ",
            "xpu_cluster_power_budget_watts 50000.0",
            "xpu_ingest_batches_total ",
            'xpu_actions_total{state="applied"}',
            'xpu_nodes{status="online"} 3',
        ):
            assert name in body, name
        assert 'hw_vendor="ascend"' in body and 'hw_id="nvidia-sim-00000-0"' in body
        assert body.count("hw_power_watts{") == 24
        head, _ = await scrape(svc.metrics_port, "/other")
        assert head.startswith("HTTP/1.1 404")
        # issue 13.6: gzip when asked for (as Prometheus asks), the same text inside
        zipped_head, zipped = await scrape_raw(svc.metrics_port, "Accept-Encoding: gzip, deflate")
        assert "Content-Encoding: gzip" in zipped_head and len(zipped) < len(body) / 3
        assert gzip.decompress(zipped).decode().count("hw_power_watts{") == 24
        plain_head, _ = await scrape_raw(svc.metrics_port, "Accept-Encoding: gzip;q=0, identity")
        assert "Content-Encoding" not in plain_head
    finally:
        await ctl.stop()


async def scrape_raw(port: int, header: str) -> tuple[str, bytes]:
    """GET /metrics with one more request header; the head as text, the body as bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode(), body


async def test_bus_trouble_is_counted_shown_and_an_event(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 18.9: no counter for MQTT garbage, no event when the bus went down, and one flood wrote
    # 21,003 warning lines.
    svc = make_service(mosquitto.url)
    svc.metrics_listen = "127.0.0.1:0"
    ctl = await RunningService(svc).start()
    try:
        bus_ = svc.bus
        assert bus_ is not None
        await asyncio.wait_for(bus_.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for k in range(300):
                await client.publish(f"xpu/v1/cmd/node-{k % 3}/res", b"\x00not json", qos=1)
        await wait_until(lambda: bus_.counters.garbage_in == 300, timeout_s=15, what="300 garbage messages")
        _, body = await scrape(svc.metrics_port)
        assert "xpu_bus_garbage_in_total 300" in body and "xpu_bus_up 1" in body
        garbage_lines = [r for r in caplog.records if r.getMessage().startswith("unreadable message")]
        assert 1 <= len(garbage_lines) <= 2  # one line, the flood held back
        mosquitto.stop()
        await wait_until(
            lambda: any(e.kind == "bus.down" for e in svc.state.recent_events), timeout_s=15, what="bus.down"
        )
        mosquitto.start()
        await wait_until(
            lambda: [e.kind for e in svc.state.recent_events if e.kind.startswith("bus.")][-1:] == ["bus.up"],
            timeout_s=20,
            what="bus.up after the broker is back",
        )
        _, body = await scrape(svc.metrics_port)
        assert "xpu_bus_disconnects_total 1" in body and "xpu_bus_connects_total 2" in body
    finally:
        await ctl.stop()
