"""The committed generated code matches the .proto files, and both sides agree on metric order."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

from xpuctl.agent.core import model as agent_model
from xpuctl.controller.core import model as controller_model
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: pathlib.Path) -> None:
    written = _generator().generate(tmp_path)
    assert len(written) == 6
    for fresh in written:
        committed = ROOT / "protos" / "xpu" / "v1" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run `python scripts/gen_protos.py` and commit the result"
        )


def test_metric_order_matches_proto() -> None:
    names = [pb.Metric.Name(n)[len("METRIC_") :].lower() for n in sorted(pb.Metric.values()) if n]
    assert list(agent_model.METRICS) == names
    assert list(controller_model.METRICS) == names


def test_vendor_lists_agree() -> None:
    assert set(agent_model.VENDORS) == controller_model.VENDORS
    assert len(agent_model.VENDORS) == 13
