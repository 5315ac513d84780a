"""The asyncio client: the blocking client's calls, awaited (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Self

import grpc
import grpc.aio

from xpuctl.client import base
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc


class AsyncClient:
    """The Cluster API of one controller (or gateway), for asyncio. `async with`, or `await close()`."""

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
            self._channel = grpc.aio.insecure_channel(self.address, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self.address, creds, options=options)
        self.stub = cluster_pb2_grpc.ClusterStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(grace=None)

    async def __aenter__(self) -> Self:
        """The client itself."""
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close."""
        await self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise base.error_of(exc, self.address) from None

    async def summary(self) -> cpb.Summary:
        """Cluster totals."""
        with self._errors():
            out: cpb.Summary = await self.stub.GetSummary(cpb.GetSummaryRequest(), timeout=self.timeout_s)
            return out

    async def nodes(self) -> list[cpb.Node]:
        """Every node, with liveness and delivery counters."""
        with self._errors():
            return list((await self.stub.ListNodes(cpb.ListNodesRequest(), timeout=self.timeout_s)).nodes)

    async def devices(self, *, node_id: str = "", vendor: str = "", health: str = "") -> list[cpb.Device]:
        """Every device the filters select, page by page."""
        req = base.devices_request(node_id, vendor, health)
        out: list[cpb.Device] = []
        while True:
            with self._errors():
                page = await self.stub.ListDevices(req, timeout=self.timeout_s)
            out.extend(page.devices)
            if not page.next_page_token:
                return out
            req.page_token = page.next_page_token

    async def device(self, uuid: str, *, metric: str = "power_w", limit: int = 60) -> cpb.GetDeviceResponse:
        """One device and the newest `limit` samples of one metric."""
        with self._errors():
            out: cpb.GetDeviceResponse = await self.stub.GetDevice(
                base.device_request(uuid, metric, limit), timeout=self.timeout_s
            )
            return out

    async def recent(self, uuid: str) -> list[cpb.Event]:
        """The kept events of one device: commands sent to it and their answers, its anomalies."""
        req = cpb.WatchEventsRequest(device_uuid=uuid, history_only=True)
        try:
            return [e async for e in self.stub.WatchEvents(req, timeout=self.timeout_s)]
        except grpc.aio.AioRpcError as exc:
            raise base.error_of(exc, self.address) from None

    async def budget(self) -> cpb.PowerBudget:
        """The power budget, the cluster's power and whether the budget is feasible."""
        with self._errors():
            out: cpb.PowerBudget = await self.stub.GetPowerBudget(cpb.GetPowerBudgetRequest(), timeout=self.timeout_s)
            return out

    async def watch(
        self,
        *,
        kinds: Sequence[str] = (),
        node_id: str = "",
        device_uuid: str = "",
        since_ns: int = 0,
        after_id: int = 0,
        on_gone: Callable[[base.ClientError], None] | None = None,
    ) -> AsyncIterator[cpb.Event]:
        """Events across controller restarts and outages, each reconnect resuming after the last
        event seen (as `Client.watch`).
        """
        where = base.Resume(kinds, node_id, device_uuid, since_ns, after_id, time.time_ns())
        told = False
        while True:
            call = self.stub.WatchEvents(where.request())
            try:
                async for e in call:
                    told = False
                    if where.fresh(e):
                        yield e
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in base.GONE:
                    raise base.error_of(exc, self.address) from None
                if on_gone is not None and not told:
                    on_gone(base.error_of(exc, self.address))
                told = True
            finally:
                call.cancel()
            await asyncio.sleep(base.RETRY_S)

    async def set_budget(self, watts: float) -> cpb.PowerBudget:
        """Set the cluster's power budget in watts (0 removes it)."""
        with self._errors():
            out: cpb.PowerBudget = await self.stub.SetPowerBudget(
                cpb.SetPowerBudgetRequest(budget_w=watts), timeout=self.timeout_s
            )
            return out

    async def set_priority(self, weight: float, *, device_uuid: str = "", node_id: str = "") -> None:
        """Weight of a device, or of every device of a node, in the power allocation (default 1)."""
        req = cpb.SetPriorityRequest(device_uuid=device_uuid, node_id=node_id, weight=weight)
        with self._errors():
            await self.stub.SetPriority(req, timeout=self.timeout_s)

    async def cordon(self, reason: str, *, device_uuid: str = "", node_id: str = "") -> int:
        """Cordon a device or a node's devices; how many devices."""
        req = cpb.CordonRequest(device_uuid=device_uuid, node_id=node_id, reason=reason)
        with self._errors():
            return int((await self.stub.Cordon(req, timeout=self.timeout_s)).devices)

    async def uncordon(self, *, device_uuid: str = "", node_id: str = "", reason: str = "") -> int:
        """Undo a cordon; how many devices."""
        req = cpb.CordonRequest(device_uuid=device_uuid, node_id=node_id, reason=reason)
        with self._errors():
            return int((await self.stub.Uncordon(req, timeout=self.timeout_s)).devices)

    async def release(self, device_uuid: str, reason: str) -> str:
        """Let a device go from its node (a card moved); the node it was released from."""
        req = cpb.ReleaseDeviceRequest(device_uuid=device_uuid, reason=reason)
        with self._errors():
            return str((await self.stub.ReleaseDevice(req, timeout=self.timeout_s)).node_id)

    async def jobs(self, *, job_id: str = "", running_only: bool = False) -> list[cpb.Job]:
        """Running jobs and the newest ended ones, with devices, energy, duration and mean power."""
        req = cpb.ListJobsRequest(job_id=job_id, running_only=running_only)
        with self._errors():
            return list((await self.stub.ListJobs(req, timeout=self.timeout_s)).jobs)
