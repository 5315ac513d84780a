"""xpuctl controller: ingests telemetry, keeps ring buffers, serves the Cluster API."""

import os

__version__ = "0.1.0"

# Both programs start child processes (vendor tools, the demo's fleet) while gRPC threads run; they
# exec at once and use no gRPC, so gRPC's fork handlers have nothing to do, and with them on it
# prints "Other threads are currently calling into gRPC, skipping fork() handlers" on every fork
# (every second with a tool driver). Off unless the environment says otherwise; read at gRPC's import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
