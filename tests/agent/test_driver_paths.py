"""Issue 21.4: the drivers find vendor tools by name on PATH and SDK libraries under their homes,
never at a path of one CPU (a Phytium or Loongson node has other folders than an x86 one).
"""

from __future__ import annotations

import pathlib

import pytest

from xpuctl.agent.drivers import base, cndev, nvml_clones, tool


@pytest.mark.parametrize("vendor", sorted(tool.FORMS))
def test_every_tool_form_names_its_tool_without_a_folder(vendor: str) -> None:
    for argv in tool.FORMS[vendor]:
        assert "/" not in argv[0], argv


def test_a_tool_is_found_wherever_path_puts_it(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = tmp_path / "opt" / "vendor-aarch64" / "bin"  # a folder no x86 install uses
    odd.mkdir(parents=True)
    (odd / "cnmon").write_text("#!/bin/sh\n")
    (odd / "cnmon").chmod(0o755)
    monkeypatch.setenv("PATH", str(odd))
    assert tool.binary("cambricon") == "cnmon"
    assert tool.binary("ascend") is None


@pytest.mark.parametrize("folder", ["lib64", "lib"])
def test_sdk_libraries_are_found_in_lib64_or_lib(tmp_path: pathlib.Path, folder: str) -> None:
    for home_var, name, find in [
        ("NEUWARE_HOME", "libcndev.so", cndev.find_library),
        ("COREX_HOME", "libixml.so", nvml_clones.find_ixml),
    ]:
        home = tmp_path / home_var
        (home / folder).mkdir(parents=True)
        (home / folder / name).write_bytes(b"")
        assert find({home_var: str(home)}) == str(home / folder / name)


def test_lib64_wins_over_lib_and_nothing_is_none(tmp_path: pathlib.Path) -> None:
    for folder in ("lib", "lib64"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "libx.so").write_bytes(b"")
    assert base.sdk_library({"X_HOME": str(tmp_path)}, "X_HOME", "/nonexistent", "libx.so") == str(
        tmp_path / "lib64" / "libx.so"
    )
    assert base.sdk_library({}, "X_HOME", str(tmp_path / "none"), "libx.so") is None
