"""Documents of nested keys, flattened to one `key -> text` map per device (issue 12.2).

Three shapes carry the same tree: a JSON document (objects, `{"value": V, "unit": U}` leaves,
plain numbers or strings with their unit, or `"N/A"`), indented `KEY: value` text (a key with no
value opens a section), and CSV whose header names the flattened keys. Each becomes, per device, a
map from the path's names joined by `_` (lower case, any other character `_`) to the value as text
with its unit: `{"usage": {"gfx_activity": {"value": 7, "unit": "%"}}}` and `USAGE:` /
`    GFX_ACTIVITY: 7 %` are both `usage_gfx_activity -> "7 %"`.

A vendor module declares its fields (`Field`: the key suffixes it may sit under, first present
wins, and the sections it never sits in); `pick` finds it. A key found under another section or
a renamed parent still matches by its suffix, so the reader follows the tool across versions.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import NamedTuple

from xpuctl.agent.core.parse import common

Doc = dict[str, str]


class Field(NamedTuple):
    """Where a field may sit: flattened-key suffixes in order of preference (`=key` only matches
    the whole key), and words of keys that are something else (`limit` for a reading).
    """

    keys: tuple[str, ...]
    avoid: tuple[str, ...] = ()


def norm(key: str) -> str:
    """A key as the engine compares it: lower case, runs of other characters as one `_`."""
    return re.sub(r"[^0-9a-z%]+", "_", key.lower()).strip("_")


def pick(doc: Doc, field: Field) -> str | None:
    """The text of the first key of `field` present in `doc` (None when none is)."""
    for spec in field.keys:
        exact, want = spec.startswith("="), spec.lstrip("=")
        for key, text in doc.items():
            if key != want and (exact or not key.endswith("_" + want)):
                continue
            if field.avoid and set(key.split("_")) & set(field.avoid):
                continue
            return text
    return None


def _leaf(value: object) -> str:
    if value is None:
        return "N/A"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _flatten(obj: object, path: tuple[str, ...], out: Doc) -> None:
    if isinstance(obj, dict):
        value = obj.get("value")
        if "value" in obj and not isinstance(value, dict | list) and ("unit" in obj or len(obj) == 1):
            # a reading with its unit (other keys a later version adds beside them are not readings)
            unit = obj.get("unit")
            out["_".join(path)] = f"{_leaf(value)} {unit}".strip() if unit and value is not None else _leaf(value)
            return
        for key, value in obj.items():
            _flatten(value, (*path, norm(str(key))), out)
    elif isinstance(obj, list):
        for k, value in enumerate(obj):
            _flatten(value, (*path, str(k)), out)
    else:
        out["_".join(path)] = _leaf(obj)


def from_json(text: str, index_key: str) -> list[tuple[int, Doc]] | None:
    """The devices of a JSON document: a list of objects each holding `index_key` (a number), bare
    or under any key of an object (`{"gpu_data": [...]}`); None when the text holds no such list.
    """
    found = common.json_document(text)
    if found is None:
        return None
    doc = json.loads(found)
    lists = [doc] if isinstance(doc, list) else [v for v in doc.values() if isinstance(v, list)]
    for items in lists:
        devices = [d for d in items if isinstance(d, dict) and isinstance(d.get(index_key), int)]
        if devices:
            out = []
            for d in devices:
                flat: Doc = {}
                _flatten({k: v for k, v in d.items() if k != index_key}, (), flat)
                out.append((int(d[index_key]), flat))
            return out
    return None


_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][\w .()/%-]*?)\s*:\s*(?P<value>.*?)\s*$")


def from_text(text: str, index_key: str) -> list[tuple[int, Doc]]:
    """The devices of indented `KEY: value` text: each starts at a `INDEX_KEY: N` line (`GPU: 0`)
    and holds the lines indented under it; lines before the first device (log lines) are not read.
    """
    out: list[tuple[int, Doc]] = []
    stack: list[tuple[int, str]] = []
    base = -1
    for line in text.splitlines():
        m = _KEY.match(line)
        if m is None:
            continue
        indent, key, value = len(m.group("indent")), norm(m.group("key")), m.group("value")
        if key == index_key and value.isdigit() and (base < 0 or indent <= base):
            base = indent
            out.append((int(value), {}))
            stack = []
            continue
        if not out or indent <= base:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if not value:
            stack.append((indent, key))
            continue
        out[-1][1]["_".join((*(s for _, s in stack), key))] = value
    return out


def from_csv(text: str, index_key: str) -> list[tuple[int, Doc]]:
    """The devices of CSV whose header holds `index_key` as a column (rows before it are skipped)."""
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    head = next((i for i, row in enumerate(rows) if index_key in (norm(c) for c in row)), None)
    if head is None:
        return []
    names = [norm(c) for c in rows[head]]
    col = names.index(index_key)
    out = []
    for row in rows[head + 1 :]:
        if len(row) > col and row[col].strip().isdigit():
            doc = {n: v.strip() for n, v in zip(names, row, strict=False) if n != index_key}
            out.append((int(row[col]), doc))
    return out


def devices(text: str, index_key: str) -> list[tuple[int, Doc]]:
    """The devices of a document in whichever of the three shapes it is (empty when none)."""
    found = from_json(text, index_key)
    if found is not None:
        return found
    return from_text(text, index_key) or from_csv(text, index_key)
