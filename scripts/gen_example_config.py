#!/usr/bin/env python3
"""Writes deploy/xpu-controller.example.toml from controller/config.py: every key, its default and
its docstring. tests/test_config.py fails when the file is stale; run this script to refresh it.
"""

from __future__ import annotations

import ast
import itertools
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xpuctl.controller import config  # noqa: E402

OUT = ROOT / "controller" / "xpu-controller.example.toml"  # deploy/ links to it


def docstrings() -> dict[tuple[str, str], str]:
    """(class, field) -> the attribute docstring under the field in config.py."""
    tree = ast.parse((ROOT / "controller" / "config.py").read_text())
    out = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for a, b in itertools.pairwise(body):
            if not (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)):
                continue
            if isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                out[(cls.name, a.target.id)] = " ".join(b.value.value.split())
    return out


def toml_value(v: object) -> str:
    """`v` written as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def render() -> str:
    """The whole example config, every key with its default and its docstring."""
    docs = docstrings()
    lines = [
        "# xpu-controller settings (TOML): every key with its default. Generated from",
        "# controller/config.py by scripts/gen_example_config.py; do not edit by hand.",
        "# Use: xpu-controller serve --config FILE; check: xpu-controller validate --config FILE (exit 78",
        "# on a bad file). Environment variables XPU_<GROUP>_<KEY> override the file; flags override both.",
        "# A key left out keeps its default; an unknown key is an error naming it.",
    ]
    defaults = config.Config()
    for group in config.GROUPS:
        section = getattr(defaults, group)
        lines += ["", f"[{group}]"]
        for field in section.__struct_fields__:
            doc = docs.get((type(section).__name__, field), "")
            value = getattr(section, field)
            if doc:
                lines.append(f"# {doc}")
            lines.append(f"# {field} = (not set)" if value is None else f"{field} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(OUT)
