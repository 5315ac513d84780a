"""Thermal detectors: a device near its slowdown temperature, and a device heating up fast.

`thermal` compares the newest temperature with the device's own slowdown temperature (from its
capabilities), so one threshold fits every vendor. `thermal_rise` measures the rate of rise over
the last few samples and only counts near the limit: a cold device warming up at a job start is
no alarm, a hot one climbing fast (a failed fan, a blocked inlet) is, before it throttles.
Both run on the critical path: the power loop steps a device down as soon as either raises.
"""

from __future__ import annotations

import numpy as np

from xpuctl.controller.core.detect import base


class Thermal(base.Detector):
    """Temperature within `thermal_margin_c` of the slowdown temperature."""

    kind = "thermal"
    says = "temperature {value:.1f} C {op} {threshold:.1f} C"
    severity = base.CRITICAL
    critical_path = True

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Raise at slowdown - margin; clear at slowdown - clear margin."""
        temp = frame.col("temperature_c")
        threshold = frame.slowdown_c - self.cfg.thermal_margin_c
        with np.errstate(invalid="ignore"):
            raise_ = temp >= threshold
            clear = ~(temp >= frame.slowdown_c - self.cfg.thermal_clear_margin_c)
        return base.Verdict(value=temp, threshold=threshold, raise_=raise_, clear=clear)


class ThermalRise(base.Detector):
    """Temperature rising faster than `thermal_rise_c_per_s` near the slowdown temperature."""

    kind = "thermal_rise"
    says = "temperature rising {value:.2f} C/s {op} {threshold:.2f} C/s"
    severity = base.CRITICAL
    critical_path = True

    def evaluate(self, frame: base.Frame) -> base.Verdict:
        """Slope over the last samples (C/s); raise above the rate when near the limit."""
        n = max(2, self.cfg.thermal_rise_samples)
        temp = frame.col("temperature_c")
        then_ts, then = frame.back("temperature_c", n - 1)
        dt_s = (frame.latest_ts - then_ts) / 1e9
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where((then_ts > 0) & (dt_s > 0), (temp - then) / dt_s, np.nan)
            near = temp >= frame.slowdown_c - self.cfg.thermal_rise_window_c
            rate = self.cfg.thermal_rise_c_per_s
            raise_ = near & (slope >= rate)
            clear = ~(slope > rate / 4)
        threshold = np.full(slope.shape, rate)
        return base.Verdict(value=slope, threshold=threshold, raise_=raise_, clear=clear)
