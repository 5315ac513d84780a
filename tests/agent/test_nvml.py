"""The NVML driver against a fake libnvidia-ml built here with gcc (the DCGM injection idea), so
the ctypes signatures, units and error codes of nvidia-ml-py are exercised for real; and, where
the machine has an NVIDIA GPU, a read-only pass over the real one.
"""

from __future__ import annotations

import ctypes.util
import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from xpuctl.agent.drivers import base

pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (pip install 'xpuctl[nvidia]')")

from xpuctl.agent.drivers import nvidia  # noqa: E402

SRC = pathlib.Path(__file__).resolve().parent.parent / "fakes" / "fake_nvml.c"


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the fake NVML library cannot be built")
    out = tmp_path_factory.mktemp("nvml") / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(out), str(SRC)], check=True)
    return str(out)


@pytest.fixture
def driver(fake_lib: str) -> Iterator[nvidia.NvmlDriver]:
    saved = pynvml.nvmlLib
    d = nvidia.NvmlDriver(library=fake_lib)
    yield d
    d.close()
    pynvml.nvmlLib = saved
    pynvml._nvmlGetFunctionPointer_cache.clear()


def test_discover_reads_capabilities_in_base_units(driver: nvidia.NvmlDriver) -> None:
    infos = driver.discover()
    assert [i.index for i in infos] == [0, 1]
    i = infos[0]
    assert (i.model, i.vendor, i.bus_id, i.driver_version) == (
        "NVIDIA H100 80GB HBM3",
        "nvidia",
        "00000000:18:00.0",
        "590.48.01",
    )
    assert i.uuid.startswith("GPU-fake")
    assert (i.power_limit_min_w, i.power_limit_max_w, i.power_limit_default_w) == (200.0, 700.0, 700.0)
    assert (i.temp_slowdown_c, i.temp_shutdown_c) == (87.0, 92.0)
    assert i.memory_total_bytes == 85520809984 and i.power_cap_settable


def test_sample_converts_units_and_absent_values(driver: nvidia.NvmlDriver) -> None:
    driver.discover()
    s0, s1 = driver.sample(42)
    assert s0.timestamp_ns == 42
    assert (s0.power_w, s0.power_limit_w) == (629.0, 700.0)
    assert s0.energy_j == pytest.approx(123456.789)
    assert (s0.utilization, s0.temperature_c) == (0.97, 59.0)
    assert (s0.core_clock_hz, s0.memory_clock_hz) == (1980e6, 2619e6)
    assert (s0.ecc_corrected_total, s0.ecc_uncorrected_total) == (12.0, 0.0)
    assert (s1.ecc_corrected_total, s1.ecc_uncorrected_total) == (None, None)  # NOT_SUPPORTED: absent


def test_set_power_cap_clamps_and_reads_back(driver: nvidia.NvmlDriver) -> None:
    driver.discover()
    assert driver.set_power_cap(0, 350.0) == 350.0
    assert driver.sample(1)[0].power_w == 350.0  # the fake draws at most its limit
    assert driver.set_power_cap(0, 50.0) == 200.0  # clamped to the minimum
    assert driver.set_power_cap(1, 9000.0) == 700.0


def test_permission_failure_names_what_is_needed(driver: nvidia.NvmlDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    driver.discover()
    monkeypatch.setenv("FAKE_NVML_DENY_SET", "1")
    with pytest.raises(base.DriverError, match="needs root"):
        driver.set_power_cap(0, 300.0)


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is None and not pathlib.Path("/dev/nvidia0").exists(),
    reason="no NVIDIA GPU on this machine (no libnvidia-ml, no /dev/nvidia0)",
)
def test_real_gpu_read_only() -> None:
    d = nvidia.NvmlDriver()
    try:
        infos = d.discover()
        assert infos and all(i.vendor == "nvidia" and i.model for i in infos)
        for s in d.sample(1):
            assert s.power_w is None or 0 < s.power_w < 2000
            assert s.temperature_c is None or 0 < s.temperature_c < 120
    finally:
        d.close()


def test_xid_events_reach_the_sample_of_their_gpu(fake_lib: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_XID", "1:79")
    saved = pynvml.nvmlLib
    d = nvidia.NvmlDriver(library=fake_lib)
    try:
        d.discover()
        first = d.sample(1)
        assert first[0].error_events == ()
        assert [(e.code, e.text) for e in first[1].error_events] == [("79", "XID 79")]
        assert d.sample(2)[1].error_events == ()  # drained: each event once
    finally:
        d.close()
        pynvml.nvmlLib = saved
        pynvml._nvmlGetFunctionPointer_cache.clear()


# -- NVML's API in other vendors' libraries: Iluvatar IXML (NVML's names), T-Head HGML (prefix hgml) --

from xpuctl.agent.drivers import nvml_clones  # noqa: E402


def build(tmp: pathlib.Path, *flags: str, source: str | None = None) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the fake library cannot be built")
    src = tmp / "fake.c"
    src.write_text(source if source is not None else SRC.read_text())
    lib = tmp / "lib.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", *flags, "-o", str(lib), str(src)], check=True)
    return str(lib)


@pytest.fixture(scope="module")
def fake_ixml(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The fake as libixml.so in a CoreX layout: with the limit setter, and without it."""
    out = {}
    for variant, flags in (("with", []), ("without", ["-DNO_SETTER"])):
        home = tmp_path_factory.mktemp(f"corex-{variant}")
        (home / "lib64").mkdir()
        lib = pathlib.Path(build(home, *flags))
        out[variant] = str(lib.rename(home / "lib64" / "libixml.so"))
    return out


def test_ixml_reads_iluvatar_devices_and_sets_caps(fake_ixml: dict[str, str]) -> None:
    home = str(pathlib.Path(fake_ixml["with"]).parent.parent)
    assert nvml_clones.find_ixml({"COREX_HOME": home}) == fake_ixml["with"]
    d = nvml_clones.IxmlDriver(library=fake_ixml["with"])
    try:
        infos = d.discover()
        assert [i.vendor for i in infos] == ["iluvatar", "iluvatar"]
        assert infos[0].power_cap_settable and infos[0].power_limit_max_w == 700.0
        assert d.sample(1)[0].power_w == 629.0  # mW -> W as for NVML
        assert d.set_power_cap(0, 50.0) == 200.0  # clamped, read back
        # its own copy of pynvml: the NVIDIA driver's module is untouched
        assert d.nvml is not pynvml and d.nvml.nvmlLib is not pynvml.nvmlLib
    finally:
        d.close()


def test_ixml_without_the_setter_is_read_only(fake_ixml: dict[str, str]) -> None:
    d = nvml_clones.IxmlDriver(library=fake_ixml["without"])
    try:
        assert [i.power_cap_settable for i in d.discover()] == [False, False]
        assert d.sample(1)[1].power_w is not None
    finally:
        d.close()


def test_hgml_reads_thead_devices_through_the_hgml_prefix(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake with every nvml symbol renamed hgml, as libhgml.so exports them."""
    lib = build(tmp_path, source=SRC.read_text().replace("nvml", "hgml"))
    assert not hasattr(ctypes.CDLL(lib), "nvmlInitWithFlags") and hasattr(ctypes.CDLL(lib), "hgmlInitWithFlags")
    d = nvml_clones.HgmlDriver(library=lib)
    try:
        infos = d.discover()
        assert [(i.vendor, i.power_limit_min_w, i.power_cap_settable) for i in infos] == [("thead", 200.0, True)] * 2
        s0 = d.sample(5)[0]
        assert (s0.power_w, s0.temperature_c) == (629.0, 59.0)
        assert s0.energy_j == pytest.approx(123456.789)
        assert d.set_power_cap(1, 9000.0) == 700.0
        monkeypatch.setenv("FAKE_NVML_DENY_SET", "1")
        with pytest.raises(base.DriverError, match="thead device 0's power limit needs root"):
            d.set_power_cap(0, 300.0)
    finally:
        d.close()


def test_missing_libraries_are_clear_errors(tmp_path: pathlib.Path) -> None:
    if not pathlib.Path("/usr/local/corex/lib64/libixml.so").exists():  # the default place, on a machine without CoreX
        assert nvml_clones.find_ixml({"COREX_HOME": str(tmp_path)}) is None
    with pytest.raises(base.DriverError, match="cannot load IXML from"):
        nvml_clones.IxmlDriver(library=str(tmp_path / "libixml.so"))
    with pytest.raises(base.DriverError, match="cannot load HGML from"):
        nvml_clones.HgmlDriver(library=str(tmp_path / "libhgml.so"))
