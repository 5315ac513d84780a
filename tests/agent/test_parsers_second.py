"""The second collection of captures (issue 12.1): other tool versions, models and layouts, checked
value by value against tests/fixtures/vendor-smi/EXPECTED-2.json (values read by eye; sources in
SOURCES.md, "Second collection").

A model matches when the expected name is part of the name the tool printed, ignoring case: the
readers keep the tool's full name (`NVIDIA A10G`, `Ascend 910A`), EXPECTED-2 the model's own part
(`A10G`, `910A`). An expected null model accepts an empty one.

Captures that are not read right yet are marked xfail(strict): the day one is, the mark must go.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import pytest

from xpuctl.agent.core import parse

FIX = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "vendor-smi"
EXPECTED: list[dict[str, Any]] = json.loads((FIX / "EXPECTED-2.json").read_text())
NOT_YET: dict[str, str] = {}  # file -> what is still misread (issue 12, carried)


def _value(p: parse.Parsed, key: str) -> object:
    if key == "model":
        return p.info.model or None
    if key == "memory_total_bytes":
        return p.info.memory_total_bytes
    return getattr(p.sample, key)


def _same(key: str, got: object, want: object) -> bool:
    if key == "model":
        return (want is None and got is None) or (
            isinstance(want, str) and isinstance(got, str) and want.lower() in got.lower()
        )
    if isinstance(want, float | int) and isinstance(got, float | int) and not isinstance(want, bool):
        return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9)
    return got == want


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(e, id=e["file"], marks=pytest.mark.xfail(strict=True, reason=NOT_YET[e["file"]]))
        if e["file"] in NOT_YET
        else pytest.param(e, id=e["file"])
        for e in EXPECTED
    ],
)
def test_a_capture_of_the_second_collection_reads_as_expected(case: dict[str, Any]) -> None:
    got = parse.parse(case["vendor"], (FIX / case["file"]).read_text())
    assert len(got) == len(case["devices"])
    wrong = [
        f"device {i}: {key} = {_value(p, key)!r}, expected {want!r}"
        for i, (p, device) in enumerate(zip(got, case["devices"], strict=True))
        for key, want in device.items()
        if not _same(key, _value(p, key), want)
    ]
    assert not wrong, "; ".join(wrong)
