"""deploy/prometheus and deploy/grafana against Prometheus itself: promtool checks the rules and runs
their unit tests, and a real Prometheus scraping a controller with a simulated fleet (a thermal
fault, a hostile stream) runs every dashboard query and every alert expression: each query returns
data with the labels its panel uses, each alert's expression evaluates and its metrics exist, and
the fault's alert fires.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import urllib.parse
from typing import Any, cast

import grpc.aio
import pytest
import yaml

from tests.helpers import (
    ROOT,
    Mosquitto,
    Processes,
    RawStream,
    RunningService,
    free_port,
    http_get,
    make_service,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.slow

RULES = ROOT / "deploy" / "prometheus" / "xpuctl-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "xpuctl-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "xpuctl-overview.json"
DETECTORS = (
    "thermal", "thermal_rise", "power_over_cap", "ecc_uncorrected", "ecc_storm",
    "error_event", "stale", "stuck", "straggler", "spike",
)  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)


def alerts() -> list[dict[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_rules_check_and_every_alert_has_a_unit_test() -> None:
    if promtool("--version").returncode != 0:
        pytest.skip("promtool is not installed (scripts/test installs prometheus)")
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    names = {a["alert"] for a in alerts()}
    exprs = " ".join(a["expr"] for a in alerts())
    assert all(f'detector="{d}"' in exprs for d in DETECTORS)  # every detector has its alert
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested_names = {t["alertname"] for case in tests for t in case["alert_rule_test"]}
    assert tested_names == names
    firing = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert firing == names  # each is seen firing, not only silent


def panel_queries() -> list[tuple[str, str, set[str]]]:
    """(panel title, query, labels the panel shows) for every target of the dashboard."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        shown = set(panel.get("transformations", [{}])[0].get("options", {}).get("includeByName", {}))
        for t in panel["targets"]:
            labels = set(re.findall(r"{{\s*(\w+)\s*}}", t.get("legendFormat", ""))) | shown
            by = re.search(r"by \(([^)]*)\)", t["expr"])
            if by:
                labels |= {x.strip() for x in by.group(1).split(",")}
            out.append((panel["title"], t["expr"], labels))
    return out


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query (its status checked)."""
    body = http_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert body is not None, f"no answer to {expr!r}"
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return cast("list[dict[str, Any]]", answer["data"]["result"])


async def test_a_real_prometheus_runs_every_panel_and_alert(
    tmp_path: pathlib.Path, processes: Processes, mosquitto: Mosquitto
) -> None:
    svc = make_service(mosquitto.url, budget_w=40_000.0)
    svc.metrics_listen = "127.0.0.1:0"
    ctl = await RunningService(svc).start()
    prom = None
    try:
        processes.agent(
            ctl.target, "n-nv", "nvidia", "--sim-workload", "training", "--sim-fault", "thermal_runaway:dev=1:at=1"
        )
        processes.agent(ctl.target, "n-asc", "ascend", "--sim-workload", "training")
        async with grpc.aio.insecure_channel(ctl.target) as ch:  # a hostile client: garbage on the stream
            await RawStream(ch).fails(b"\xff\xff\xff not a protobuf")
        st = svc.state
        await wait_until(lambda: len(st.registry) == 16, timeout_s=30, what="16 devices")
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n"
            "  - job_name: xpu-controller\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{svc.metrics_port}']}}]\n"
        )
        base = f"http://127.0.0.1:{port}"
        args = [
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        prom = start_server("prometheus", args, f"{base}/-/ready", tmp_path)

        def has(expr: str) -> bool:
            return bool(query(base, expr))

        await wait_until(
            lambda: has("rate(xpu_ingest_samples_total[1m]) > 0") and has("xpu_device_anomaly"),
            timeout_s=60,
            what="two scrapes and an open anomaly",
        )
        for title, expr, labels in panel_queries():
            result = query(base, expr)
            assert result, f"panel {title!r}: {expr!r} returned nothing"
            for series in result:
                missing = labels - set(series["metric"])
                assert not missing, f"panel {title!r}: {expr!r} has no label {missing}"
        scraped = {m["metric"]["__name__"] for m in query(base, 'count by (__name__) ({job="xpu-controller"})')}
        for rule in alerts():
            query(base, rule["expr"])  # evaluates (the answer's status is checked)
            metrics = set(re.findall(r"\b((?:xpu|hw)_\w+)", rule["expr"]))
            assert metrics <= scraped, f"{rule['alert']}: {metrics - scraped} not on /metrics"

        def thermal_alert() -> bool:
            body = http_get(f"{base}/api/v1/alerts")
            return body is not None and any(
                a["labels"]["alertname"] in ("XpuThermal", "XpuThermalRise") and a["labels"]["hw_id"] == "nvidia-n-nv-1"
                for a in json.loads(body)["data"]["alerts"]
            )

        await wait_until(thermal_alert, timeout_s=30, what="the thermal fault's alert")
    finally:
        if prom is not None:
            stop_server(prom)
        await ctl.stop()
