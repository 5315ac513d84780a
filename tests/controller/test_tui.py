"""Dashboard frames against golden files (80x24 and 200x50, calm and with anomalies).

`pytest --update-golden` rewrites the files after a deliberate change; review the diff.
"""

from __future__ import annotations

import io
import pathlib

import pytest
from rich.console import Console

from xpuctl.controller.core import dashboard
from xpuctl.controller.tui import view

GOLDEN = pathlib.Path(__file__).resolve().parent.parent / "golden"
T0 = 1_800_000_000_000_000_000
VENDORS = [
    ("nvidia", "NVIDIA H100 80GB HBM3", 87.0),
    ("ascend", "Ascend 910B", 95.0),
    ("cambricon", "MLU370-X8", 90.0),
    ("amd", "AMD Instinct MI210", 95.0),
    ("hygon", "DCU Z100", 90.0),
    ("metax", "MXC500", 90.0),
]


def rows(anomalies: bool) -> list[dashboard.DeviceRow]:
    out = []
    for k in range(12):
        vendor, model, slowdown = VENDORS[k % len(VENDORS)]
        for i in range(8):
            hot = anomalies and k == 0 and i == 2
            out.append(
                dashboard.DeviceRow(
                    node_id=f"node-{k:03d}",
                    uuid=f"{vendor}-node-{k:03d}-{i}",
                    index=i,
                    vendor=vendor,
                    model=model,
                    health="degraded" if anomalies and k == 3 and i == 5 else "ok",
                    utilization=0.5 + 0.04 * i,
                    power_w=200.0 + 10 * i + k,
                    power_limit_w=350.0,
                    temperature_c=86.0 if hot else 50.0 + i + k / 2,
                    temp_slowdown_c=slowdown,
                    anomalies=("thermal_rise",)
                    if hot
                    else (("error_event",) if anomalies and k == 3 and i == 5 else ()),
                )
            )
    return out


def snapshot(anomalies: bool) -> dashboard.Snapshot:
    events = [
        dashboard.EventRow(
            timestamp_ns=T0 + k * 10**9,
            kind="action.applied",
            severity="info",
            message=f"nvidia-node-000-{k} enforces {300 - k} W",
        )
        for k in range(5)
    ]
    if anomalies:
        events.append(
            dashboard.EventRow(
                timestamp_ns=T0 + 6 * 10**9,
                kind="anomaly.raised",
                severity="critical",
                message="thermal_rise raised on nvidia-node-000-2: value 2.1, threshold 1",
            )
        )
    return dashboard.build(
        rows(anomalies),
        title="xpuctl top - 127.0.0.1:50051",
        timestamp_ns=T0 + 7 * 10**9,
        budget_w=24_000.0,
        power_history_w=[20_000 + 300 * (k % 7) for k in range(90)],
        nodes_total=12,
        nodes_online=12,
        events=events,
    )


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50)])
@pytest.mark.parametrize("anomalies", [False, True])
def test_frame_matches_golden(width: int, height: int, anomalies: bool, request: pytest.FixtureRequest) -> None:
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None, legacy_windows=False)
    console.print(view.render(snapshot(anomalies), width, height))
    frame = console.file.getvalue()  # type: ignore[attr-defined]
    lines = frame.splitlines()
    assert len(lines) <= height, f"frame of {len(lines)} lines does not fit {height}"
    assert all(len(line) <= width for line in lines)
    name = GOLDEN / f"top-{width}x{height}-{'anomalies' if anomalies else 'calm'}.txt"
    if request.config.getoption("--update-golden") or not name.exists():
        name.write_text(frame)
    assert frame == name.read_text()
    assert "budget 24,000 W" in frame
    if anomalies:
        assert "thermal_rise" in frame
        assert lines[6].split()[0] == "node-000" or "node-000" in frame  # the worst device comes first


def test_ten_thousand_devices_are_aggregated() -> None:
    many = [
        dashboard.DeviceRow(
            node_id=f"n{k // 8}",
            uuid=f"u{k}",
            index=k % 8,
            vendor="nvidia",
            model="m",
            health="ok",
            utilization=0.5,
            power_w=300.0,
            power_limit_w=700.0,
            temperature_c=60.0,
            temp_slowdown_c=87.0,
        )
        for k in range(10_000)
    ]
    snap = dashboard.build(
        many,
        title="t",
        timestamp_ns=T0,
        budget_w=None,
        power_history_w=[],
        nodes_total=1250,
        nodes_online=1250,
        events=[],
    )
    assert snap.devices_total == 10_000 and len(snap.worst_devices) == 200 and len(snap.worst_nodes) == 50
    assert snap.power_w == pytest.approx(3_000_000)
    console = Console(file=io.StringIO(), width=80, height=24, color_system=None)
    console.print(view.render(snap, 80, 24))
    assert len(console.file.getvalue().splitlines()) <= 24  # type: ignore[attr-defined]
