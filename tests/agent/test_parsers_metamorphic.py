"""Metamorphic tests of the readers (issue 12.3): a capture changed in ways that keep its information
(trailing spaces, CRLF, log lines before and after it, doubled rules) reads to the same devices and values.

Every capture of both collections, by Hypothesis: the transformations are drawn in combination.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xpuctl.agent.core import parse
from xpuctl.agent.core.parse import common

FIX = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "vendor-smi"
FOLDER_VENDOR = {"mthreads": "moorethreads"}
CAPTURES = sorted(f for f in FIX.rglob("*") if f.is_file() and f.name not in ("SOURCES.md", "EXPECTED-2.json"))
# what a vGPU layer, a container runtime or a wrapper script prints around a tool's output
NOISE = st.sampled_from(
    [
        "Failed to initialize vGPU layer: permission denied",
        "[INFO] collecting device state",
        "WARNING: infoROM is corrupted at gpu 0000:00:00.0",
        "sh: 1: warning: locale not set",
    ]
)


def vendor_of(path: pathlib.Path) -> str:
    return FOLDER_VENDOR.get(path.parent.name, path.parent.name)


def values(parsed: list[parse.Parsed]) -> list[tuple[object, object]]:
    """What a capture says of its devices (not how hard it was to read: warnings are left out)."""
    return [(p.info, p.sample) for p in parsed]


def rule(line: str) -> bool:
    s = line.strip()
    return bool(s) and set(s) <= set("+-=|") and "--" in s


@st.composite
def variants(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines()
    if draw(st.booleans()):  # trailing spaces
        pad = " " * draw(st.integers(1, 4))
        lines = [line + pad for line in lines]
    if draw(st.booleans()):  # every `+----+` separator doubled
        lines = [
            x for line in lines for x in ([line, line] if rule(line) and line.lstrip().startswith("+") else [line])
        ]
    if draw(st.booleans()):  # log lines after the output, after a blank line
        lines = [*lines, "", *draw(st.lists(NOISE, min_size=1, max_size=3))]
    if draw(st.booleans()):  # log lines before it
        lines = [*draw(st.lists(NOISE, min_size=1, max_size=3)), *lines]
    out = "\n".join(lines) + "\n"
    if draw(st.booleans()):
        out = out.replace("\n", "\r\n")
    return out


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_capture_changed_without_losing_information_reads_the_same(path: pathlib.Path, data: st.DataObject) -> None:
    text = path.read_text()
    vendor = vendor_of(path)
    expected = values(parse.parse(vendor, text))
    changed = data.draw(variants(text))
    assert values(parse.parse(vendor, changed)) == expected


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_tool_that_printed_a_capture_is_recognised(path: pathlib.Path) -> None:
    # Issue 12.6: `xpu-agent parse auto` reads any capture as its vendor's
    assert parse.detect.vendor_of(path.read_text()) == vendor_of(path)


def box_region(lines: list[str]) -> tuple[int, int, int] | None:
    """Where a box table sits: (its first line, its `|===`/`+===` header rule, its last record line),
    the process table below excluded; None for other layouts.
    """
    rule_at = next((i for i, x in enumerate(lines) if x.lstrip().startswith(("|=", "+="))), None)
    if rule_at is None:
        return None
    top = rule_at
    while top > 0 and lines[top - 1].rstrip().endswith(("|", "+")) and lines[top - 1].lstrip()[:1] in "|+":
        top -= 1
    end = rule_at
    while end + 1 < len(lines) and lines[end + 1].strip()[:1] in ("|", "+") and "Processes" not in lines[end + 1]:
        end += 1
    return top, rule_at, end


def with_extra_column(text: str) -> str | None:
    """A box table with one more column at its right, of a label no reader knows: every line of the
    table gets one more cell. None for other layouts.
    """
    lines = text.splitlines()
    region = box_region(lines)
    if region is None:
        return None
    top, rule_at, end = region
    out = []
    for i, line in enumerate(lines):
        body = line.rstrip()
        if not top <= i <= end or not body.endswith(("|", "+")):
            out.append(line)
            continue
        last = body[-1]
        if set(body.strip()) <= set("+-=|"):  # a border or rule: extend it
            fill = "=" if "=" in body else "-"
            out.append(f"{body}{fill * 8}{last}")
        elif i < rule_at:
            out.append(f"{body} Qwz9    |" if i == top + 1 or i == rule_at - 1 else f"{body}         |")
        else:
            out.append(f"{body} 7       |")
    return "\n".join(out) + "\n"


def at_border(text: str, column: int, edit: Callable[[str, int, int], str | None]) -> str | None:
    """The box table with `edit(line, left, right)` applied to every table line that has the
    `column`-th cell (0-based), between that cell's borders at `left` and `right`; None when an
    edit refuses a line.
    """
    lines = text.splitlines()
    region = box_region(lines)
    assert region is not None
    top, _, end = region
    out = []
    for i, line in enumerate(lines):
        seps = [k for k, ch in enumerate(line) if ch in "|+"]
        if not top <= i <= end or len(seps) < column + 2:
            out.append(line)
            continue
        edited = edit(line, seps[column], seps[column + 1])
        if edited is None:
            return None
        out.append(edited)
    return "\n".join(out) + "\n"


def widened(text: str, column: int, by: int) -> str:
    """The box table with its `column`-th cell wider by `by` characters on every line."""

    def wider(line: str, _left: int, at: int) -> str:
        fill = line[at - 1] if line[at - 1] in "-=" else " "
        return line[:at] + fill * by + line[at:]

    changed = at_border(text, column, wider)
    assert changed is not None
    return changed


def narrowed(text: str, column: int, by: int) -> str | None:
    """The box table with its `column`-th cell narrower by `by` characters on every line, taken from
    the padding before its right border; None when some line has no such padding there.
    """

    def narrower(line: str, left: int, at: int) -> str | None:
        pad = line[at - by - 1 : at]  # keep one character of padding (or of the rule) before the border
        if at - by - 1 <= left or len(set(pad)) != 1 or pad[0] not in " -=":
            return None
        return line[: at - by] + line[at:]

    return at_border(text, column, narrower)


BOX = [p for p in CAPTURES if with_extra_column(p.read_text()) is not None]


@pytest.mark.parametrize("path", BOX, ids=lambda p: f"{p.parent.name}/{p.name}")
@settings(max_examples=10, deadline=None)
@given(column=st.integers(0, 3), by=st.integers(1, 3))
def test_a_narrower_column_changes_nothing(path: pathlib.Path, column: int, by: int) -> None:
    text = path.read_text()
    changed = narrowed(text, column, by)
    assume(changed is not None)
    assert changed is not None
    vendor = vendor_of(path)
    assert values(parse.parse(vendor, changed)) == values(parse.parse(vendor, text))


@pytest.mark.parametrize("path", BOX, ids=lambda p: f"{p.parent.name}/{p.name}")
@settings(max_examples=10, deadline=None)
@given(column=st.integers(0, 3), by=st.integers(1, 12))
def test_a_wider_column_changes_nothing(path: pathlib.Path, column: int, by: int) -> None:
    text = path.read_text()
    vendor = vendor_of(path)
    assert values(parse.parse(vendor, widened(text, column, by))) == values(parse.parse(vendor, text))


@pytest.mark.parametrize("path", BOX, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_extra_unknown_column_changes_nothing(path: pathlib.Path) -> None:
    text = path.read_text()
    changed = with_extra_column(text)
    assert changed is not None
    assert values(parse.parse(vendor_of(path), changed)) == values(parse.parse(vendor_of(path), text))


def without_separators(text: str) -> str:
    """The box table without the rules between its device records (the header's rule stays)."""
    lines = text.splitlines()
    region = box_region(lines)
    assert region is not None
    _, rule_at, end = region
    kept = [x for x in lines[rule_at + 1 : end] if not set(x.strip()) <= set("+-=|")]  # the last line stays
    return "\n".join([*lines[: rule_at + 1], *kept, *lines[end:]]) + "\n"


@pytest.mark.parametrize("path", BOX, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dropped_separators_change_nothing(path: pathlib.Path) -> None:
    text = path.read_text()
    vendor = vendor_of(path)
    assert values(parse.parse(vendor, without_separators(text))) == values(parse.parse(vendor, text))


NUMBER_CELL = re.compile(r"(?<![\w.:/-])\d+(?:\.\d+)?\s?(?:W|C|°C|℃|%|MiB|MB|GiB|MHz|Mhz)?(?![\w.:/-])")


@pytest.mark.parametrize("path", BOX, ids=lambda p: f"{p.parent.name}/{p.name}")
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_a_reading_replaced_by_na_is_null_never_wrong(path: pathlib.Path, data: st.DataObject) -> None:
    # Issue 12.3: a mutation that removes information gives null for that field, never a wrong number
    text = path.read_text()
    vendor = vendor_of(path)
    lines = text.splitlines()
    region = box_region(lines)
    assert region is not None
    _, rule_at, last = region
    spots = [(i, m) for i in range(rule_at + 1, last + 1) for m in NUMBER_CELL.finditer(lines[i])]
    if not spots:
        return
    i, m = data.draw(st.sampled_from(spots))
    width = m.end() - m.start()
    lines[i] = lines[i][: m.start()] + "N/A".ljust(width) + lines[i][m.end() :]
    before = {p.info.index: p for p in parse.parse(vendor, text)}
    try:
        after = {p.info.index: p for p in parse.parse(vendor, "\n".join(lines) + "\n")}
    except parse.ParseError:
        assert len(before) == 1, "only an output with no device left may fail"
        return
    for index, p in after.items():
        if index not in before:  # the number was a device's index: another device id is no wrong reading
            continue
        old = before[index]
        for name in ("utilization", "memory_used_bytes", "power_w", "power_limit_w", "temperature_c"):
            got, was = getattr(p.sample, name), getattr(old.sample, name)
            assert got is None or got == was, f"{name}: {got!r} after the mutation, {was!r} before ({lines[i]!r})"
        assert p.info.memory_total_bytes in (None, old.info.memory_total_bytes)


def column_table(text: str) -> tuple[list[str], int, list[int]] | None:
    """A whitespace-aligned table (rocm-smi/hy-smi concise, amd-smi monitor): its lines, the header's
    index and the device rows' indexes; None for other layouts.
    """
    lines = text.splitlines()
    head = next((i for i, x in enumerate(lines) if re.match(r"(GPU|DCU|HCU|Device)\s{2,}\S", x) and "|" not in x), None)
    if head is None:
        return None
    rows = [i for i in range(head + 1, len(lines)) if re.match(r"\s*\d+\s{2,}\S", lines[i])]
    return (lines, head, rows) if rows else None


COLUMNS = [p for p in CAPTURES if p.suffix != ".json" and column_table(p.read_text()) is not None]


@pytest.mark.parametrize("path", COLUMNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_extra_unknown_column_in_a_whitespace_table_changes_nothing(path: pathlib.Path) -> None:
    text = path.read_text()
    found = column_table(text)
    assert found is not None
    lines, head, rows = found
    width = max(len(lines[i].rstrip()) for i in [head, *rows])
    changed = list(lines)
    changed[head] = lines[head].rstrip().ljust(width) + "  Qwz9%"
    for i in rows:
        changed[i] = lines[i].rstrip().ljust(width) + "  7%"
    vendor = vendor_of(path)
    assert values(parse.parse(vendor, "\n".join(changed) + "\n")) == values(parse.parse(vendor, text))


# Key/value layouts (nvidia-smi/xpu-smi -q, npu-smi -t, efsmi -q, rocm-smi ... label lines) and
# JSON documents: the same information spelt with other padding or with a key the reader does not
# know reads the same
_KV = re.compile(r"^(?P<indent>\s*)(?P<key>\S[^:]*?\S)(?P<pad>\s+):(?P<rest>.*)$")


def key_value_lines(text: str) -> list[int]:
    """Indices of `Key   : value` lines (the key padded before its colon)."""
    return [k for k, line in enumerate(text.splitlines()) if "|" not in line and _KV.match(line)]


KEY_VALUE = [
    p for p in CAPTURES if p.suffix != ".json" and p not in COLUMNS and len(key_value_lines(p.read_text())) >= 3
]
JSON = [p for p in CAPTURES if p.suffix == ".json"]


def repadded(text: str, pad: Callable[[str], str]) -> str:
    lines = text.splitlines()
    for k in key_value_lines(text):
        m = _KV.match(lines[k])
        assert m is not None
        lines[k] = f"{m['indent']}{m['key']}{pad(m['pad'])}:{m['rest']}"
    return "\n".join(lines) + "\n"


def with_unknown_keys(text: str) -> str:
    """A `Vendor Extension Field : 42 W` line after every key/value line, at its indentation."""
    lines = text.splitlines()
    out: list[str] = []
    for k, line in enumerate(lines):
        out.append(line)
        m = _KV.match(line) if k in set(key_value_lines(text)) else None
        if m is not None:
            out.append(f"{m['indent']}Vendor Extension Field{m['pad']}: 42 W")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("path", KEY_VALUE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_key_value_padding_and_unknown_keys_change_nothing(path: pathlib.Path) -> None:
    text, vendor = path.read_text(), vendor_of(path)
    expected = values(parse.parse(vendor, text))
    assert values(parse.parse(vendor, repadded(text, lambda pad: pad + "       "))) == expected, "wider"
    assert values(parse.parse(vendor, repadded(text, lambda _pad: " "))) == expected, "narrower"
    assert values(parse.parse(vendor, with_unknown_keys(text))) == expected, "an unknown key"


def _with_unknown(obj: object) -> object:
    if isinstance(obj, dict):
        return {**{k: _with_unknown(v) for k, v in obj.items()}, "vendor_extension (W)": "42"}
    if isinstance(obj, list):
        return [_with_unknown(v) for v in obj]
    return obj


@pytest.mark.parametrize("path", JSON, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_json_layout_and_unknown_keys_change_nothing(path: pathlib.Path) -> None:
    text, vendor = path.read_text(), vendor_of(path)
    found = common.json_document(text)
    assert found is not None
    doc = json.loads(found)
    expected = values(parse.parse(vendor, text))
    assert values(parse.parse(vendor, json.dumps(doc, separators=(",", ":")))) == expected, "compact"
    assert values(parse.parse(vendor, json.dumps(doc, indent=8))) == expected, "indented"
    assert values(parse.parse(vendor, json.dumps(_with_unknown(doc), indent=2))) == expected, "an unknown key"
