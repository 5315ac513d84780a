"""Model profiles of the simulated devices: one real model (at least) per vendor.

Figures come from the vendors' own tools where a capture exists (`shared/fixtures/vendor-smi/`,
named per field below) or from the vendor's published specifications. Where neither exists the
value is an estimate and the profile lists it in `estimated`. `power_cap_settable` mirrors
DESIGN section 7: only vendors with a public power-cap setter can be capped.

The throughput-vs-power exponent `alpha` (see `engine.throughput_fraction`) rests on published
power-capping measurements: McDonald et al., "Great Power, Great Responsibility: Recommendations
for Reducing Energy for Training Language Models", Findings of NAACL 2022 (V100s capped to 60% of
their 250 W TDP: training takes roughly 5-15% longer), and Patel et al., "Characterizing Power
Management Opportunities for LLMs in the Cloud", ASPLOS 2024 (A100/H100 training and inference
lose far less throughput than power under caps; inference is the less sensitive). With the H100
profile below (idle 10% of TDP, steady training at 86% of TDP), alpha=0.25 gives 0.90 of full
speed at a 60% cap; alpha=0.15 gives inference 0.97 at a cap 25% under its peak.
tests/agent/test_sim.py checks both against the ranges above. These points are read from the
papers' text and figures, not fitted to their raw data; a concave curve this flat is also why no
capping policy can win much work back at a given budget (README, power benchmark).
"""

from __future__ import annotations

import msgspec

GIB = 1 << 30
MIB = 1 << 20

ALPHA_TRAINING = 0.25
ALPHA_INFERENCE = 0.15


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """What a simulated device of one model looks like and how it behaves."""

    vendor: str
    model: str
    tdp_w: float
    idle_w: float
    power_limit_min_w: float
    power_limit_max_w: float
    power_limit_default_w: float
    power_cap_settable: bool
    memory_total_bytes: int
    temp_slowdown_c: float
    temp_shutdown_c: float
    core_clock_max_hz: float
    memory_clock_hz: float
    # steady-state temperature rise per watt (C/W) and thermal time constant (s)
    thermal_c_per_w: float = 0.06
    thermal_tau_s: float = 25.0
    ambient_c: float = 30.0
    source: str
    estimated: tuple[str, ...] = ()


def _rise(temp_at_tdp_c: float, tdp_w: float, ambient_c: float = 30.0) -> float:
    """Thermal resistance (C/W) that puts a device at `temp_at_tdp_c` when it draws its TDP."""
    return (temp_at_tdp_c - ambient_c) / tdp_w


PROFILES: dict[str, Profile] = {
    p.vendor: p
    for p in (
        Profile(
            vendor="nvidia",
            model="NVIDIA H100 80GB HBM3",
            tdp_w=700.0,
            idle_w=69.0,
            power_limit_min_w=200.0,
            power_limit_max_w=700.0,
            power_limit_default_w=700.0,
            power_cap_settable=True,
            memory_total_bytes=81559 * MIB,
            temp_slowdown_c=87.0,
            temp_shutdown_c=92.0,
            core_clock_max_hz=1980e6,
            memory_clock_hz=2619e6,
            thermal_c_per_w=_rise(72.0, 700.0),
            source=(
                "nvidia-smi -q and nvidia-smi of an H100 80GB HBM3, driver 590.48.01 "
                "(fixtures nvidia/nvidia-smi-q_H100_590.48.01_load.txt: power limits 200/700/700 W, "
                "FB 81559 MiB; nvidia-smi_H100_590.48.01_idle.txt: 69 W idle); clocks from the "
                "H100 SXM5 datasheet"
            ),
            estimated=("temp_slowdown_c", "temp_shutdown_c"),
        ),
        Profile(
            vendor="amd",
            model="AMD Instinct MI210",
            tdp_w=300.0,
            idle_w=40.0,
            power_limit_min_w=100.0,
            power_limit_max_w=300.0,
            power_limit_default_w=300.0,
            power_cap_settable=True,
            memory_total_bytes=65520 * MIB,
            temp_slowdown_c=100.0,
            temp_shutdown_c=105.0,
            core_clock_max_hz=1700e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(80.0, 300.0),
            source=(
                "amd-smi static --json of an MI210 (fixture amd/amd-smi-static-json_MI210.json: "
                "max/socket power 300 W, hotspot slowdown 100 C / shutdown 105 C, VRAM 65520 MB); "
                "amd-smi reports min_power 0 W, which is no usable cap"
            ),
            estimated=("idle_w", "power_limit_min_w"),
        ),
        Profile(
            vendor="ascend",
            model="Ascend 910B",
            tdp_w=400.0,
            idle_w=69.0,
            power_limit_min_w=400.0,
            power_limit_max_w=400.0,
            power_limit_default_w=400.0,
            power_cap_settable=False,
            memory_total_bytes=65536 * MIB,
            temp_slowdown_c=95.0,
            temp_shutdown_c=105.0,
            core_clock_max_hz=1800e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(75.0, 400.0),
            source=(
                "npu-smi info -t common / -t usages of a 910B (fixtures ascend/npu-smi-info-t-common_910B.txt: "
                "69.0 W idle, Aicore 1000 MHz idle; npu-smi-info-t-usages_910B.txt: HBM 65536 MB); "
                "no public power-cap setter (DESIGN 7)"
            ),
            estimated=("tdp_w", "temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="cambricon",
            model="MLU370-X4",
            tdp_w=150.0,
            idle_w=26.0,
            power_limit_min_w=75.0,
            power_limit_max_w=150.0,
            power_limit_default_w=150.0,
            power_cap_settable=True,
            memory_total_bytes=23308 * MIB,
            temp_slowdown_c=90.0,
            temp_shutdown_c=100.0,
            core_clock_max_hz=1300e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(70.0, 150.0),
            source=(
                "cnmon v4.20.11 of 3x MLU370-X4 (fixture cambricon/cnmon_MLU370-X4_v4.20.11.txt: "
                "Pwr 25-30 W / 150 W, 23308 MiB); cap through CNDev (DESIGN 7)"
            ),
            estimated=("power_limit_min_w", "temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="hygon",
            model="K100_AI",
            tdp_w=280.0,
            idle_w=38.0,
            power_limit_min_w=120.0,
            power_limit_max_w=280.0,
            power_limit_default_w=280.0,
            power_cap_settable=True,
            memory_total_bytes=65520 * MIB,
            temp_slowdown_c=95.0,
            temp_shutdown_c=105.0,
            core_clock_max_hz=1500e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(75.0, 280.0),
            source=(
                "rocm-smi --json of a K100_AI (fixture hygon/rocm-smi-json_K100_AI_dtk2504plus_docstring.json: "
                "65520 MiB VRAM); DCU concise table (hygon/rocm-smi_dcu_dtk23.10_concise.txt: "
                "PwrCap 280 W, 38-41 W idle); cap through Hygon's rocm-smi library (DESIGN 7)"
            ),
            estimated=("power_limit_min_w", "temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="metax",
            model="MetaX C500",
            tdp_w=350.0,
            idle_w=57.0,
            power_limit_min_w=350.0,
            power_limit_max_w=350.0,
            power_limit_default_w=350.0,
            power_cap_settable=False,
            memory_total_bytes=65536 * MIB,
            temp_slowdown_c=95.0,
            temp_shutdown_c=105.0,
            core_clock_max_hz=1600e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(75.0, 350.0),
            source=(
                "mx-smi 2.2.9 of 8x C500 (fixture metax/mx-smi_C500x8_v2.2.9.txt: 57 W / 350 W, "
                "65536 MiB); no public setter (DESIGN 7)"
            ),
            estimated=("temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="moorethreads",
            model="MTT S4000",
            tdp_w=450.0,
            idle_w=60.0,
            power_limit_min_w=450.0,
            power_limit_max_w=450.0,
            power_limit_default_w=450.0,
            power_cap_settable=False,
            memory_total_bytes=48 * GIB,
            temp_slowdown_c=95.0,
            temp_shutdown_c=105.0,
            core_clock_max_hz=1750e6,
            memory_clock_hz=1750e6,
            thermal_c_per_w=_rise(78.0, 450.0),
            source=(
                "Moore Threads MTT S4000 published specification (48 GB, 450 W); "
                "mthreads-gmi capture in fixtures mthreads/; MTML has no power-cap setter (DESIGN 7)"
            ),
            estimated=("idle_w", "temp_slowdown_c", "temp_shutdown_c"),
        ),
        Profile(
            vendor="enflame",
            model="S60",
            tdp_w=300.0,
            idle_w=96.0,
            power_limit_min_w=300.0,
            power_limit_max_w=300.0,
            power_limit_default_w=300.0,
            power_cap_settable=False,
            memory_total_bytes=49120 * MIB,
            temp_slowdown_c=95.0,
            temp_shutdown_c=105.0,
            core_clock_max_hz=1400e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(75.0, 300.0),
            source=(
                "efsmi of an S60 (fixtures enflame/efsmi_S60_v1.2.0.301.txt: 105 W / 300 W, "
                "49120 MiB; efsmi-q_S60_v1.4.3.4_partial.txt: Power Capa 300 W, Cur Power 96 W); "
                "EFML has no power-cap setter (DESIGN 7)"
            ),
            estimated=("temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="iluvatar",
            model="Iluvatar BI-V150",
            tdp_w=350.0,
            idle_w=60.0,
            power_limit_min_w=150.0,
            power_limit_max_w=350.0,
            power_limit_default_w=350.0,
            power_cap_settable=True,
            memory_total_bytes=32768 * MIB,
            temp_slowdown_c=90.0,
            temp_shutdown_c=100.0,
            core_clock_max_hz=1500e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(72.0, 350.0),
            source=(
                "ixsmi 4.1.0 of 16x BI-V150 (fixture iluvatar/ixsmi_BI-V150x16_v4.1.0.txt: "
                "93 W / 350 W, 32768 MiB, SM 1500 MHz, Mem 1600 MHz); ixML exports the NVML "
                "setter, support unverified (DESIGN 7)"
            ),
            estimated=("idle_w", "power_limit_min_w", "temp_slowdown_c", "temp_shutdown_c"),
        ),
        Profile(
            vendor="kunlunxin",
            model="P800 PCIe",
            tdp_w=350.0,
            idle_w=76.0,
            power_limit_min_w=350.0,
            power_limit_max_w=350.0,
            power_limit_default_w=350.0,
            power_cap_settable=False,
            memory_total_bytes=98304 * MIB,
            temp_slowdown_c=95.0,
            temp_shutdown_c=105.0,
            core_clock_max_hz=1600e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(75.0, 350.0),
            source=(
                "xpu-smi -q of a P800 PCIe (fixture kunlunxin/xpu-smi-q-id_P800-PCIe_v5.0.21.26.txt: "
                "Enforced Power Limit 350 W, Power Draw 76 W, 98304 MiB); no public setter (DESIGN 7)"
            ),
            estimated=("temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="biren",
            model="BR104P",
            tdp_w=300.0,
            idle_w=50.0,
            power_limit_min_w=300.0,
            power_limit_max_w=300.0,
            power_limit_default_w=300.0,
            power_cap_settable=False,
            memory_total_bytes=32 * GIB,
            temp_slowdown_c=90.0,
            temp_shutdown_c=100.0,
            core_clock_max_hz=1500e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(72.0, 300.0),
            source=(
                "Biren BR104P product brief (PCIe, 32 GB HBM2e, 300 W); no public brsmi capture; "
                "BRML is not public, so read-only (DESIGN 7)"
            ),
            estimated=("idle_w", "temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="thead",
            model="T-Head PPU",
            tdp_w=400.0,
            idle_w=60.0,
            power_limit_min_w=400.0,
            power_limit_max_w=400.0,
            power_limit_default_w=400.0,
            power_cap_settable=False,
            memory_total_bytes=96 * GIB,
            temp_slowdown_c=90.0,
            temp_shutdown_c=100.0,
            core_clock_max_hz=1500e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(75.0, 400.0),
            source=(
                "press reports of Alibaba T-Head's PPU (96 GB HBM2e, 400 W); HGML setter "
                "unverified, so read-only (DESIGN 7)"
            ),
            estimated=("tdp_w", "idle_w", "temp_slowdown_c", "temp_shutdown_c", "core_clock_max_hz"),
        ),
        Profile(
            vendor="sunrise",
            model="Sunrise S2",
            tdp_w=300.0,
            idle_w=45.0,
            power_limit_min_w=300.0,
            power_limit_max_w=300.0,
            power_limit_default_w=300.0,
            power_cap_settable=False,
            memory_total_bytes=64 * GIB,
            temp_slowdown_c=90.0,
            temp_shutdown_c=100.0,
            core_clock_max_hz=1500e6,
            memory_clock_hz=1600e6,
            thermal_c_per_w=_rise(72.0, 300.0),
            source="no public specification or tooling; every figure is an estimate (DESIGN 7)",
            estimated=(
                "tdp_w",
                "idle_w",
                "memory_total_bytes",
                "temp_slowdown_c",
                "temp_shutdown_c",
                "core_clock_max_hz",
            ),
        ),
    )
}


def profile_for(vendor: str) -> Profile:
    """The default profile of a vendor.

    Raises:
        KeyError: the vendor has no profile; the message lists the known ones.
    """
    try:
        return PROFILES[vendor]
    except KeyError:
        known = ", ".join(PROFILES)
        msg = f"no simulated profile for vendor {vendor!r}; use one of: {known}"
        raise KeyError(msg) from None
