"""`xpuctl.client`: the Cluster API from Python, blocking (`Client`) or asyncio (`AsyncClient`).

    from xpuctl.client import Client

    with Client("controller.example:50051") as xpu:
        roomy = sorted(xpu.devices(health="ok"), key=lambda d: d.headroom_cap_w, reverse=True)

Answers are the API's protobuf messages (`xpuctl.protos.xpu.v1.cluster_pb2`; typed through their
.pyi stubs); lists come whole (ListDevices pages are followed). A failure raises one of three
errors, by what the caller can do about it: `Unreachable` (the address, the network, a controller
that is down: retry later), `Denied` (a credential is missing or wrong) and `Refused` (the
controller said no; the message says why, `.code` is the gRPC status). `watch()` follows events
across reconnects and resumes after the last event id it saw, so nothing the controller still
keeps is lost; what it no longer keeps comes as one `watch.lost` event. `xpuctl` itself is built
on this client. It needs grpcio and protobuf only: no controller code.
"""

from __future__ import annotations

from xpuctl.client.aio import AsyncClient
from xpuctl.client.base import ClientError, Denied, Refused, Tls, Unreachable, default_address
from xpuctl.client.sync import Client

__all__ = ["AsyncClient", "Client", "ClientError", "Denied", "Refused", "Tls", "Unreachable", "default_address"]
