"""xpuctl node agent: reads accelerators through vendor drivers and streams telemetry."""

__version__ = "0.1.0"
