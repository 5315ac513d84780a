"""NVIDIA through NVML, with nvidia-ml-py (module `pynvml`): `pip install xpuctl[nvidia]`.

Units: NVML reports power in mW, energy in mJ (a monotonic counter since the driver loaded),
memory in bytes, clocks in MHz, temperatures in C; the driver converts to W, J, bytes, Hz.
Capabilities come from the limit constraints, the default limit and the slowdown/shutdown
thresholds. `set_power_cap` clamps to the constraints, calls nvmlDeviceSetPowerManagementLimit
(mW; needs root) and reads the enforced limit back (NVML's effective limit after every limiter).
A query the device does not support (NVML_ERROR_NOT_SUPPORTED) is an absent value, not an error.
Critical XID events are registered at discovery and drained (wait 0 ms) at every sample; each
becomes an ErrorEvent on its GPU's sample (code = the XID number).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from xpuctl.agent.core import model
from xpuctl.agent.drivers import base

T = TypeVar("T")
MW = 1e-3  # mW -> W
MJ = 1e-3  # mJ -> J
MHZ = 1e6


class NvmlDriver:
    """Every NVIDIA GPU NVML sees."""

    vendor = "nvidia"
    api = "NVML"  # the library's name in messages (libraries with NVML's API say theirs)

    def __init__(self, *, library: str | None = None) -> None:
        """Load pynvml; `library` loads a specific libnvidia-ml (tests, unusual installs).

        Raises:
            DriverError: nvidia-ml-py is not installed, or the library cannot be loaded.
        """
        try:
            import pynvml  # noqa: PLC0415 - optional dependency
        except ImportError:
            msg = "the NVIDIA driver needs nvidia-ml-py: pip install 'xpuctl[nvidia]'"
            raise base.DriverError(msg) from None
        self.nvml: Any = pynvml
        if library is not None:
            pynvml.nvmlLib = base.load_library(library, "NVML")
        self._handles: list[Any] = []
        self._infos: list[model.DeviceInfo] = []
        self._lock = threading.Lock()
        self._started = False
        self._events: Any = None

    def _call(self, what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            msg = f"{self.api} {what}: {exc}"
            raise base.DriverError(msg) from None

    def _opt(self, fn: Callable[..., T], *args: object) -> T | None:
        try:
            return fn(*args)
        except (self.nvml.NVMLError_NotSupported, self.nvml.NVMLError_NoData):
            return None

    def discover(self) -> list[model.DeviceInfo]:
        """Initialise NVML and describe every GPU."""
        n = self.nvml
        with self._lock:
            if not self._started:
                self._call("init", n.nvmlInit)
                self._started = True
            count = self._call("device count", n.nvmlDeviceGetCount)
            self._handles = [self._call("device handle", n.nvmlDeviceGetHandleByIndex, i) for i in range(count)]
            driver = _text(self._opt(n.nvmlSystemGetDriverVersion))
            self._infos = [self._info(i, h, driver) for i, h in enumerate(self._handles)]
            self._register_events()
        return list(self._infos)

    def _register_events(self) -> None:
        """Ask for critical XID events on every GPU; a driver without events goes on without them."""
        n = self.nvml
        try:
            self._events = n.nvmlEventSetCreate()
            for h in self._handles:
                n.nvmlDeviceRegisterEvents(h, n.nvmlEventTypeXidCriticalError, self._events)
        except n.NVMLError:
            self._events = None

    def _drain_events(self) -> dict[int, list[model.ErrorEvent]]:
        """XIDs that arrived since the last sample, by GPU index."""
        n = self.nvml
        out: dict[int, list[model.ErrorEvent]] = {}
        if self._events is None:
            return out
        addresses = [ctypes.cast(h, ctypes.c_void_p).value for h in self._handles]
        for _ in range(64):  # a bound: a storm must not hold the sample
            try:
                data = n.nvmlEventSetWait(self._events, 0)
            except n.NVMLError_Timeout:
                break
            except n.NVMLError:
                break
            where = ctypes.cast(data.device, ctypes.c_void_p).value
            index = addresses.index(where) if where in addresses else -1
            if index >= 0:
                out.setdefault(index, []).append(
                    model.ErrorEvent(code=str(data.eventData), text=f"XID {data.eventData}")
                )
        return out

    def _info(self, index: int, h: Any, driver: str) -> model.DeviceInfo:  # noqa: ANN401 - pynvml's handles are untyped
        n = self.nvml
        limits = self._opt(n.nvmlDeviceGetPowerManagementLimitConstraints, h)
        default = self._opt(n.nvmlDeviceGetPowerManagementDefaultLimit, h)
        memory = self._opt(n.nvmlDeviceGetMemoryInfo, h)
        pci = self._opt(n.nvmlDeviceGetPciInfo, h)
        return model.DeviceInfo(
            uuid=_text(self._call("uuid", n.nvmlDeviceGetUUID, h)),
            index=index,
            vendor=self.vendor,
            model=_text(self._call("name", n.nvmlDeviceGetName, h)),
            bus_id=_text(pci.busId) if pci is not None else "",
            driver_version=driver,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            power_limit_min_w=limits[0] * MW if limits else None,
            power_limit_max_w=limits[1] * MW if limits else None,
            power_limit_default_w=default * MW if default is not None else None,
            power_cap_settable=limits is not None and self._can_set(),
            temp_slowdown_c=_f(
                self._opt(n.nvmlDeviceGetTemperatureThreshold, h, n.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
            ),
            temp_shutdown_c=_f(
                self._opt(n.nvmlDeviceGetTemperatureThreshold, h, n.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN)
            ),
        )

    def _can_set(self) -> bool:
        """Whether the library exports the limit setter (NVML always does)."""
        return True

    def capabilities(self, index: int) -> model.DeviceInfo:
        """Fresh capabilities of one GPU (limits can change after a driver reload)."""
        with self._lock:
            return self._info(index, self._handles[index], self._infos[index].driver_version)

    def sample(self, timestamp_ns: int) -> list[model.DeviceSample]:
        """One reading per GPU."""
        n = self.nvml
        out = []
        with self._lock:
            xids = self._drain_events()
            for i, h in enumerate(self._handles):
                util = self._opt(n.nvmlDeviceGetUtilizationRates, h)
                memory = self._opt(n.nvmlDeviceGetMemoryInfo, h)
                power = self._opt(n.nvmlDeviceGetPowerUsage, h)
                energy = self._opt(n.nvmlDeviceGetTotalEnergyConsumption, h)
                limit = self._opt(n.nvmlDeviceGetEnforcedPowerLimit, h)
                sm = self._opt(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM)
                mem_clock = self._opt(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM)
                corrected = self._opt(
                    n.nvmlDeviceGetTotalEccErrors, h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_AGGREGATE_ECC
                )
                uncorrected = self._opt(
                    n.nvmlDeviceGetTotalEccErrors, h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC
                )
                out.append(
                    model.DeviceSample(
                        index=i,
                        timestamp_ns=timestamp_ns,
                        utilization=util.gpu / 100 if util is not None else None,
                        memory_used_bytes=float(memory.used) if memory is not None else None,
                        power_w=power * MW if power is not None else None,
                        energy_j=energy * MJ if energy is not None else None,
                        power_limit_w=limit * MW if limit is not None else None,
                        temperature_c=_f(self._opt(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU)),
                        core_clock_hz=sm * MHZ if sm is not None else None,
                        memory_clock_hz=mem_clock * MHZ if mem_clock is not None else None,
                        ecc_corrected_total=_f(corrected),
                        ecc_uncorrected_total=_f(uncorrected),
                        error_events=tuple(xids.get(i, ())),
                    )
                )
        return out

    def set_power_cap(self, index: int, power_w: float) -> float:
        """Clamp to the constraints, set (mW), read the enforced limit back.

        Raises:
            DriverError: no permission (needs root or CAP_SYS_ADMIN), or NVML refused.
        """
        n = self.nvml
        with self._lock:
            h = self._handles[index]
            limits = self._opt(n.nvmlDeviceGetPowerManagementLimitConstraints, h)
            if limits is None:
                msg = f"{self.vendor} device {index} has no settable power limit ({self.api}: not supported)"
                raise base.DriverError(msg)
            mw = round(min(max(power_w * 1000, limits[0]), limits[1]))
            try:
                n.nvmlDeviceSetPowerManagementLimit(h, mw)
            except n.NVMLError_NoPermission:
                msg = (
                    f"setting {self.vendor} device {index}'s power limit needs root (or CAP_SYS_ADMIN): run the agent "
                    "as root (deploy/ has the unit)"
                )
                raise base.DriverError(msg) from None
            except n.NVMLError as exc:
                msg = f"{self.api} refused a {mw / 1000:.0f} W limit on {self.vendor} device {index}: {exc}"
                raise base.DriverError(msg) from None
            enforced_mw: int = self._call("enforced limit", n.nvmlDeviceGetEnforcedPowerLimit, h)
            return enforced_mw * MW

    def close(self) -> None:
        """Shut NVML down."""
        with self._lock:
            if self._started:
                self._opt(self.nvml.nvmlShutdown)
                self._started = False


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _f(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
