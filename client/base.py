"""What the blocking and the asyncio client share: TLS settings, errors, requests, event resume."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any, cast

import grpc
import msgspec

from xpuctl.common import cli, tls
from xpuctl.protos import names
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

TIMEOUT_S = 10.0  # per call
PAGE_SIZE = 2000  # devices per ListDevices page (the server caps pages at 5000)
RETRY_S = 1.0  # watch(): pause between reconnects
# a watcher waits for a restarted controller: gRPC's own reconnect backoff (up to 120 s) would
# leave it waiting long after the controller is back
CHANNEL_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def default_address() -> str:
    """`$XPUCTL_CONTROLLER`, else 127.0.0.1:50051 (as `xpuctl` uses).

    Raises:
        ValueError: $XPUCTL_CONTROLLER is not an address.
    """
    text = os.environ.get("XPUCTL_CONTROLLER") or f"127.0.0.1:{cli.GRPC_PORT}"
    try:
        return cli.address(text)
    except argparse.ArgumentTypeError as exc:  # the shared argument type's error
        msg = f"XPUCTL_CONTROLLER: {exc}"
        raise ValueError(msg) from exc


class Tls(msgspec.Struct, frozen=True, kw_only=True):
    """TLS to the controller: its CA (turns TLS on), our certificate and key (mTLS), an operator
    token file (first line; sent over TLS only), and the name in the controller's certificate if
    it is not the address's host.
    """

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    token_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
        """Channel credentials and the options they need.

        Raises:
            tls.TlsError: a file cannot be used.
        """
        files = tls.ClientFiles(
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file, server_name=self.server_name
        )
        token = tls.read_secret("token file", self.token_file) if self.token_file else None
        return tls.operator_credentials(files, token), tls.channel_options(files)


def channel_settings(settings: Tls | None) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """Credentials (None: plaintext) and options of a channel to the controller.

    Raises:
        tls.TlsError: a TLS file cannot be used.
    """
    options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
    if settings is None:
        return None, options
    creds, extra = settings.credentials()
    return creds, [*options, *extra]


class ClientError(Exception):
    """A call that failed; `code` is the gRPC status name, `details` the controller's words."""

    def __init__(self, address: str, code: str, details: str) -> None:
        """Keep the facts; the message names the address and the status."""
        super().__init__(f"{address}: {code}: {details}")
        self.address, self.code, self.details = address, code, details


class Unreachable(ClientError):
    """No answer: the controller is down or the address or network is wrong."""


class Denied(ClientError):
    """The controller wants an operator credential (a token or a client certificate) it did not get."""


class Refused(ClientError):
    """The controller answered no (bad argument, unknown device, a standby, ...)."""


_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_DENIED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# a stream that ended like this is worth reopening (the controller restarted or went)
GONE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})


def error_of(exc: grpc.RpcError, address: str) -> ClientError:
    """The client error for a gRPC failure."""
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    kind = Unreachable if code in _UNREACHABLE else Denied if code in _DENIED else Refused
    return kind(address, code.name, details)


def devices_request(node_id: str, vendor: str, health: str) -> cpb.ListDevicesRequest:
    """A ListDevices request; `health` by name (`ok`, `degraded`, ...; empty: any).

    Raises:
        ValueError: an unknown health name.
    """
    by_name = {v: k for k, v in names.HEALTH.items()}
    if health and health not in by_name:
        msg = f"health {health!r} is not one of {', '.join(sorted(by_name))}"
        raise ValueError(msg)
    return cpb.ListDevicesRequest(
        node_id=node_id, vendor=vendor, health=cast("pb.Health", by_name.get(health, 0)), page_size=PAGE_SIZE
    )


def device_request(uuid: str, metric: str, limit: int) -> cpb.GetDeviceRequest:
    """A GetDevice request with the history of `metric` (a name of `names.METRICS`).

    Raises:
        ValueError: an unknown metric.
    """
    if metric not in names.METRICS:
        msg = f"metric {metric!r} is not one of {', '.join(names.METRICS)}"
        raise ValueError(msg)
    number = list(names.METRICS).index(metric) + 1
    return cpb.GetDeviceRequest(uuid=uuid, metric=cast("pb.Metric", number), limit=limit)


class Resume:
    """Where a watch is, so that a reopened stream goes on after the last event seen.

    By id where the controller numbers its events (a controller does; a gateway does not), else by
    time: from the last timestamp seen, skipping what is older.
    """

    def __init__(
        self, kinds: Sequence[str], node_id: str, device_uuid: str, since_ns: int, after_id: int, began_ns: int
    ) -> None:
        """A watch from `after_id` or `since_ns` (both 0: live events from `began_ns` on)."""
        self.kinds, self.node_id, self.device_uuid = list(kinds), node_id, device_uuid
        self.since_ns, self.last_id, self.seen_ns, self.began_ns = since_ns, after_id, 0, began_ns
        self.opened = False

    def request(self) -> cpb.WatchEventsRequest:
        """The request for the next stream."""
        req = cpb.WatchEventsRequest(kinds=self.kinds, node_id=self.node_id, device_uuid=self.device_uuid)
        if self.last_id:
            req.after_id = self.last_id
        elif not self.opened:
            req.since_ns = self.since_ns
        else:  # by time: what came after the last one seen (or since the watch began)
            req.since_ns = self.seen_ns + 1 if self.seen_ns else self.since_ns or self.began_ns
        self.opened = True
        return req

    def fresh(self, e: cpb.Event) -> bool:
        """Whether `e` is new to this watch (a reopened stream repeats by time); notes it if so."""
        if e.id:
            if e.id <= self.last_id:
                return False
            self.last_id = e.id
        elif e.kind != "watch.lost" and e.timestamp_ns < self.seen_ns:
            return False
        self.seen_ns = max(self.seen_ns, e.timestamp_ns)
        return True
