"""The committed generated code matches the .proto files, and both sides agree on metric order."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from xpuctl.agent.core import model as agent_model
from xpuctl.controller.core import model as controller_model
from xpuctl.protos import names
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
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


def enum_names(enum: EnumTypeWrapper, prefix: str) -> dict[int, str]:
    """A proto enum's numbers and lower-case names without the prefix, UNSPECIFIED left out."""
    return {n: enum.Name(n)[len(prefix) :].lower() for n in enum.values() if n}


def test_the_shared_names_match_the_proto() -> None:
    assert dict(enumerate(names.METRICS, start=1)) == enum_names(pb.Metric, "METRIC_")
    assert enum_names(pb.Health, "HEALTH_") == names.HEALTH
    assert names.HEALTH[names.HEALTH_UNKNOWN] == "unknown"
    assert enum_names(cpb.NodeStatus, "NODE_STATUS_") == names.NODE_STATUS
    assert (names.health_name(0), names.node_status_name(0)) == ("unknown", "unknown")


def test_both_sides_use_the_shared_names() -> None:
    assert agent_model.METRICS is names.METRICS
    assert controller_model.METRICS is names.METRICS
    assert set(agent_model.VENDORS) == controller_model.VENDORS == set(names.VENDORS)
    assert len(names.VENDORS) == 13
    assert {int(h): h.name.lower() for h in agent_model.Health} == names.HEALTH
