"""The blocking client (see the package docstring)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Self

import grpc

from xpuctl.client import base
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc


class Client:
    """The Cluster API of one controller (or gateway), blocking. Use it as a context manager, or close()."""

    def __init__(
        self, address: str | None = None, *, tls: base.Tls | None = None, timeout_s: float = base.TIMEOUT_S
    ) -> None:
        """A channel to `address` (default `base.default_address()`); TLS with `tls`.

        Raises:
            xpuctl.common.tls.TlsError: a TLS file cannot be used.
            ValueError: a bad $XPUCTL_CONTROLLER.
        """
        self.address = address or base.default_address()
        self.timeout_s = timeout_s
        creds, options = base.channel_settings(tls)
        if creds is None:
            self._channel = grpc.insecure_channel(self.address, options=options)
        else:
            self._channel = grpc.secure_channel(self.address, creds, options=options)
        self.stub = cluster_pb2_grpc.ClusterStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        """The client itself."""
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close."""
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise base.error_of(exc, self.address) from None

    # -- reading ---------------------------------------------------------------------------------

    def summary(self) -> cpb.Summary:
        """Cluster totals."""
        with self._errors():
            out: cpb.Summary = self.stub.GetSummary(cpb.GetSummaryRequest(), timeout=self.timeout_s)
            return out

    def nodes(self) -> list[cpb.Node]:
        """Every node, with liveness and delivery counters."""
        with self._errors():
            return list(self.stub.ListNodes(cpb.ListNodesRequest(), timeout=self.timeout_s).nodes)

    def devices(self, *, node_id: str = "", vendor: str = "", health: str = "") -> list[cpb.Device]:
        """Every device the filters select, page by page."""
        req = base.devices_request(node_id, vendor, health)
        out: list[cpb.Device] = []
        while True:
            with self._errors():
                page = self.stub.ListDevices(req, timeout=self.timeout_s)
            out.extend(page.devices)
            if not page.next_page_token:
                return out
            req.page_token = page.next_page_token

    def device(self, uuid: str, *, metric: str = "power_w", limit: int = 60) -> cpb.GetDeviceResponse:
        """One device and the newest `limit` samples of one metric."""
        with self._errors():
            out: cpb.GetDeviceResponse = self.stub.GetDevice(
                base.device_request(uuid, metric, limit), timeout=self.timeout_s
            )
            return out

    def recent(self, uuid: str) -> list[cpb.Event]:
        """The kept events of one device: commands sent to it and their answers, its anomalies."""
        return list(self.events(device_uuid=uuid, history_only=True))

    def budget(self) -> cpb.PowerBudget:
        """The power budget, the cluster's power and whether the budget is feasible."""
        with self._errors():
            out: cpb.PowerBudget = self.stub.GetPowerBudget(cpb.GetPowerBudgetRequest(), timeout=self.timeout_s)
            return out

    # -- events ----------------------------------------------------------------------------------

    def events(
        self,
        *,
        kinds: Sequence[str] = (),
        node_id: str = "",
        device_uuid: str = "",
        since_ns: int = 0,
        after_id: int = 0,
        history_only: bool = False,
        seconds: float | None = None,
    ) -> Iterator[cpb.Event]:
        """One stream: the kept events from `since_ns` (or after `after_id`), then live ones for
        `seconds` (None: until the controller ends it); `history_only` stops after the kept ones.
        """
        req = cpb.WatchEventsRequest(
            kinds=list(kinds), node_id=node_id, device_uuid=device_uuid, since_ns=since_ns, after_id=after_id
        )
        req.history_only = history_only
        call = self.stub.WatchEvents(req, timeout=self.timeout_s if history_only else seconds)
        try:
            yield from call
        except grpc.RpcError as exc:
            if seconds is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise base.error_of(exc, self.address) from None
        finally:
            call.cancel()

    def watch(
        self,
        *,
        kinds: Sequence[str] = (),
        node_id: str = "",
        device_uuid: str = "",
        since_ns: int = 0,
        after_id: int = 0,
        on_gone: Callable[[base.ClientError], None] | None = None,
    ) -> Iterator[cpb.Event]:
        """Events for as long as the caller reads, across controller restarts and outages: each
        reconnect resumes after the last event seen. `on_gone` hears of each outage once.
        """
        where = base.Resume(kinds, node_id, device_uuid, since_ns, after_id, time.time_ns())
        told = False
        while True:
            call = self.stub.WatchEvents(where.request())
            try:
                for e in call:
                    told = False
                    if where.fresh(e):
                        yield e
            except grpc.RpcError as exc:
                if exc.code() not in base.GONE:
                    raise base.error_of(exc, self.address) from None
                if on_gone is not None and not told:
                    on_gone(base.error_of(exc, self.address))
                told = True
            finally:
                call.cancel()
            time.sleep(base.RETRY_S)  # a pause between tries; the controller's return is what we wait for

    # -- deciding --------------------------------------------------------------------------------

    def set_budget(self, watts: float) -> cpb.PowerBudget:
        """Set the cluster's power budget in watts (0 removes it)."""
        with self._errors():
            out: cpb.PowerBudget = self.stub.SetPowerBudget(
                cpb.SetPowerBudgetRequest(budget_w=watts), timeout=self.timeout_s
            )
            return out

    def set_priority(self, weight: float, *, device_uuid: str = "", node_id: str = "") -> None:
        """Weight of a device, or of every device of a node, in the power allocation (default 1)."""
        req = cpb.SetPriorityRequest(device_uuid=device_uuid, node_id=node_id, weight=weight)
        with self._errors():
            self.stub.SetPriority(req, timeout=self.timeout_s)

    def cordon(self, reason: str, *, device_uuid: str = "", node_id: str = "") -> int:
        """Cordon a device or a node's devices (no new work; held at the floor); how many devices."""
        req = cpb.CordonRequest(device_uuid=device_uuid, node_id=node_id, reason=reason)
        with self._errors():
            return int(self.stub.Cordon(req, timeout=self.timeout_s).devices)

    def uncordon(self, *, device_uuid: str = "", node_id: str = "", reason: str = "") -> int:
        """Undo a cordon; how many devices."""
        req = cpb.CordonRequest(device_uuid=device_uuid, node_id=node_id, reason=reason)
        with self._errors():
            return int(self.stub.Uncordon(req, timeout=self.timeout_s).devices)

    def release(self, device_uuid: str, reason: str) -> str:
        """Let a device go from its node (a card moved); the node it was released from."""
        req = cpb.ReleaseDeviceRequest(device_uuid=device_uuid, reason=reason)
        with self._errors():
            return str(self.stub.ReleaseDevice(req, timeout=self.timeout_s).node_id)

    # -- jobs ------------------------------------------------------------------------------------

    def start_job(self, job_id: str, node_id: str, indices: list[int], *, user: str = "") -> cpb.StartJobResponse:
        """A scheduler's job began on `node_id` with its devices of `indices`; the answer names the
        granted devices that are unfit (failed, cordoned, critically sick).
        """
        req = cpb.StartJobRequest(job_id=job_id, node_id=node_id, indices=indices, user=user)
        with self._errors():
            out: cpb.StartJobResponse = self.stub.StartJob(req, timeout=self.timeout_s)
            return out

    def end_job(self, job_id: str, node_id: str) -> cpb.Job:
        """A scheduler's job ended on `node_id`; the job with its energy."""
        with self._errors():
            out: cpb.Job = self.stub.EndJob(cpb.EndJobRequest(job_id=job_id, node_id=node_id), timeout=self.timeout_s)
            return out

    def jobs(self, *, job_id: str = "", running_only: bool = False) -> list[cpb.Job]:
        """Running jobs and the newest ended ones, with devices, energy, duration and mean power."""
        req = cpb.ListJobsRequest(job_id=job_id, running_only=running_only)
        with self._errors():
            return list(self.stub.ListJobs(req, timeout=self.timeout_s).jobs)
