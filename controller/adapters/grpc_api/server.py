"""One grpc.aio server with every service: Telemetry, Cluster, health and reflection.

Joins the service modules; decides nothing. Keepalive and message limits are set here, where the
server is built.
"""

from __future__ import annotations

from typing import Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xpuctl.common import ports, tls
from xpuctl.controller import hub
from xpuctl.controller.adapters.grpc_api import access, cluster, telemetry
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc

# Keepalive matched to the agents' (notes A2): accept pings every 10 s, ping idle agents each minute.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC sets SO_REUSEPORT by default: a second controller on the same address would start
    # silently and share the agents with the first
    ("grpc.so_reuseport", 0),
]


class HealthServicer(Protocol):
    """What we use of grpc_health's asyncio servicer (grpc_health ships no types)."""

    async def set(self, service: str, status: int) -> None:
        """Set the status of `service` ("" is the whole server)."""


class Server:
    """A started-or-not grpc.aio server, its port, and the health servicer behind `set_serving`."""

    def __init__(self, server: grpc.aio.Server, port: int, health_servicer: HealthServicer, names: list[str]) -> None:
        """Built by `build_server`."""
        self.server = server
        self.port = port
        self.health = health_servicer
        self.service_names = names

    async def start(self) -> None:
        """Start serving."""
        await self.server.start()

    async def stop(self, grace_s: float | None) -> None:
        """Stop, giving calls `grace_s` to finish (None: cut them at once)."""
        await self.server.stop(grace_s)

    async def set_serving(self, *, serving: bool) -> None:
        """Flip every service's health status."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


def listen_port(listen: str) -> int:
    """The port of a `HOST:PORT` listen address (0: any free port).

    Raises:
        ValueError: not HOST:PORT with a host and a port number, naming the value and the form.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        msg = (
            f"--listen {listen!r} is not HOST:PORT; e.g. 127.0.0.1:50051, or 0.0.0.0:50051 for every "
            "interface ([::]:50051 for IPv6)"
        )
        raise ValueError(msg)
    return int(port)


def build_server(
    state: hub.Hub, listen: str, *, reflection_on: bool = True, tls_files: tls.ServerFiles | None = None
) -> Server:
    """A grpc.aio server with every service added, bound to `listen`.

    With `tls_files` the port is mTLS and `state.policy` is enforced.

    Raises:
        ValueError: `listen` is not HOST:PORT.
        OSError: the address cannot be bound (the message names the port and what holds it).
        tls.TlsError: a TLS file cannot be used.
    """
    wanted = listen_port(listen)
    limit = state.ingest.limits.max_message_bytes
    credentials = tls.server_credentials(tls_files) if tls_files is not None else None
    server = grpc.aio.server(
        interceptors=[access.AccessInterceptor(state)],
        options=[
            *SERVER_OPTIONS,
            # gRPC's own limit sits above ours, so that oversize messages reach our check and counter
            ("grpc.max_receive_message_length", 2 * limit),
        ],
    )
    server.add_generic_rpc_handlers((telemetry.TelemetryService(state).handler(),))
    cluster_pb2_grpc.add_ClusterServicer_to_server(cluster.ClusterService(state), server)
    health_servicer: HealthServicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped package
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [telemetry.SERVICE, cluster.SERVICE, health.SERVICE_NAME]
    if reflection_on:
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError:  # grpc's way of saying the bind failed
        port = 0
    if port == 0:
        who = ports.holder(wanted) if wanted else None
        held = f" (held by {who})" if who else " (`ss -ltnp` shows by what)"
        msg = (
            f"cannot listen on {listen}: port {wanted} is in use{held} or the address is not one of "
            "this host's; stop the other process, or choose another --listen HOST:PORT"
        )
        raise OSError(msg)
    return Server(server, port, health_servicer, names)
