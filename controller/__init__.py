"""xpuctl controller: ingests telemetry, keeps ring buffers, serves the Cluster API."""

__version__ = "0.1.0"
