"""The Cluster API (DESIGN 4): reads from the hub's views, verbs through the hub.

Each refusal is a typed error from the core (`controller/errors.py`); this module only maps it to
a status code, with the error's own message.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio

from xpuctl.common import tls
from xpuctl.controller import errors, hub
from xpuctl.controller.adapters import codec
from xpuctl.controller.core import access, events, jobs, model, operations, views
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

SERVICE = cpb.DESCRIPTOR.services_by_name["Cluster"].full_name

STATUS_OF_ERROR: dict[type[errors.XpuError], grpc.StatusCode] = {
    errors.BadValue: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MissingTarget: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MissingReason: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnknownDevice: grpc.StatusCode.NOT_FOUND,
    errors.UnknownNode: grpc.StatusCode.NOT_FOUND,
    errors.UnknownVendor: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotSaved: grpc.StatusCode.DATA_LOSS,
    errors.DeviceInUse: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BadJob: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnknownJob: grpc.StatusCode.NOT_FOUND,
}

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


async def refuse(context: Context, exc: errors.XpuError) -> NoReturn:
    """End the call with the status code of `exc` and its message (abort raises)."""
    await context.abort(STATUS_OF_ERROR.get(type(exc), grpc.StatusCode.FAILED_PRECONDITION), errors.bounded(str(exc)))
    raise AssertionError  # unreachable: abort raises


MAX_PAGE = 5000  # devices per ListDevices page: ~1.5 MB, far under gRPC's 4 MiB message limit


class ClusterService(cluster_pb2_grpc.ClusterServicer):
    """The Cluster API."""

    def __init__(self, state: hub.Hub) -> None:
        """Serve `state`."""
        self.state = state

    async def GetSummary(self, request: cpb.GetSummaryRequest, context: Context) -> cpb.Summary:  # noqa: N802 - gRPC method name
        """Cluster totals and ingest statistics."""
        st = self.state
        p50, p99 = st.ingest.latency.quantiles()
        out = codec.summary_pb(
            st.views.summary(time.time_ns()),
            st.ingest.counters,
            p50,
            p99,
            st.streams_open,
            st.budget_w,
            st.control.anomalies_open(),
        )
        if st.history_stats is not None:
            out.history.CopyFrom(cpb.HistoryStats(**st.history_stats()))  # type: ignore[arg-type]  # str/int fields by name
        return out

    async def ListNodes(self, request: cpb.ListNodesRequest, context: Context) -> cpb.ListNodesResponse:  # noqa: N802
        """Every node with liveness and delivery counters."""
        weights = self.state.control.node_weight
        nodes = [codec.node_pb(n) for n in self.state.views.nodes(time.time_ns())]
        for n in nodes:
            n.weight = weights.get(n.node_id, 1.0)
        return cpb.ListNodesResponse(nodes=nodes)

    async def ListDevices(self, request: cpb.ListDevicesRequest, context: Context) -> cpb.ListDevicesResponse:  # noqa: N802
        """Devices with their latest sample, filtered."""
        request.vendor = request.vendor.strip().lower()  # `NVIDIA` is nvidia
        if request.vendor and request.vendor not in model.VENDORS:
            await refuse(context, errors.UnknownVendor(request.vendor, sorted(model.VENDORS)))
        if request.node_id and request.node_id not in self.state.registry.nodes:
            await refuse(context, errors.UnknownNode(request.node_id, "; `xpuctl nodes` lists them"))
        flt = codec.device_filter(request)
        if not request.page_size:
            devices = self.state.views.devices(time.time_ns(), flt)
            return cpb.ListDevicesResponse(devices=[self._device_pb(d) for d in devices])
        # a page: devices in uuid order after the token (the last uuid of the page before); one
        # more than the page is built to know whether another page follows
        size = min(request.page_size, MAX_PAGE)
        page = self.state.views.devices(time.time_ns(), flt, after=request.page_token or None, at_most=size + 1)
        more = len(page) > size
        page = page[:size]
        return cpb.ListDevicesResponse(
            devices=[self._device_pb(d) for d in page], next_page_token=page[-1].info.uuid if more else ""
        )

    async def GetDevice(self, request: cpb.GetDeviceRequest, context: Context) -> cpb.GetDeviceResponse:  # noqa: N802
        """One device with the recent history of one metric (default: power) from the ring store."""
        st = self.state
        try:
            slot = operations.device_slot(st.registry, request.uuid, "; `xpuctl devices` lists them")
        except errors.XpuError as exc:
            await refuse(context, exc)
        metric = request.metric or pb.METRIC_POWER_W
        if not 1 <= metric <= len(model.METRICS):
            await refuse(context, errors.BadValue("metric", metric, f"is not one of 1..{len(model.METRICS)}"))
        limit = request.limit or st.store.window
        now_ns = time.time_ns()
        view = st.views.devices(now_ns, views.DeviceFilter(node_id=st.registry.node_of_slot[slot]))
        device = next((v for v in view if v.info.uuid == request.uuid), None)
        if device is None:  # still known by id, but missing from its node's newest Hello
            await refuse(
                context, errors.UnknownDevice(request.uuid, " any more: it is gone from its node's newest Hello")
            )
        ts, values = st.store.history(slot, metric - 1, limit)
        return cpb.GetDeviceResponse(
            device=self._device_pb(device),
            history=[
                cpb.Point(timestamp_ns=int(t), value=float(v))
                for t, v in zip(ts, values, strict=True)
                if not math.isnan(v)
            ],
        )

    def _device_pb(self, d: views.DeviceView) -> cpb.Device:
        out = codec.device_pb(d)
        out.weight = self.state.control.device_weight.get(d.info.uuid, 1.0)
        out.job_id = self.state.jobs.job_of_uuid.get(d.info.uuid, "")
        return out

    async def WatchEvents(self, request: cpb.WatchEventsRequest, context: Context) -> AsyncIterator[cpb.Event]:  # noqa: N802
        """The kept events from `since_ns` on (the newest `hub.EVENT_BACKLOG`), then events as they
        happen (unless `history_only`); filtered by kind prefix, node and device.
        """
        kinds = tuple(request.kinds)

        def wanted(e: events.Event) -> bool:
            return (
                (not kinds or e.kind.startswith(kinds))
                and (not request.node_id or e.node_id == request.node_id)
                and (not request.device_uuid or e.device_uuid == request.device_uuid)
            )

        q: asyncio.Queue[events.Event] = asyncio.Queue(maxsize=10_000)
        last = 0  # the id of the last event sent: the live ones at or below it came with the history
        if not request.history_only:
            self.state.watchers.add(q)  # before the history: nothing falls between the two
        try:
            kept: list[events.Event] = []
            if request.after_id:
                lost = self._lost(request.after_id)
                if lost is not None:
                    yield lost
                kept = [e for e in self.state.recent_events if e.id > request.after_id and wanted(e)]
            elif request.since_ns or request.history_only:
                kept = [e for e in self.state.recent_events if e.timestamp_ns >= request.since_ns and wanted(e)]
            for e in kept:
                yield codec.event_pb(e)
            last = kept[-1].id if kept else 0
            if request.history_only:
                return
            while True:
                e = await q.get()
                if wanted(e) and e.id > last:
                    yield codec.event_pb(e)
        finally:
            self.state.watchers.discard(q)

    def _lost(self, after_id: int) -> cpb.Event | None:
        """A `watch.lost` event when the kept events no longer follow on from `after_id`, else None."""
        st = self.state
        oldest = st.recent_events[0].id if st.recent_events else st.next_event_id
        if after_id + 1 >= oldest:
            return None
        if after_id >= st.first_event_id:
            n = oldest - after_id - 1
            what = f"{n} event(s) after id {after_id} are no longer kept (the newest {hub.EVENT_BACKLOG:,} are)"
        else:
            n = 0
            what = f"the controller restarted after id {after_id}: the events between it and the restart are not kept"
        return cpb.Event(
            timestamp_ns=time.time_ns(),
            kind="watch.lost",
            severity="warning",
            message=f"{what}; the stream goes on from the oldest kept",
            value=float(n),
        )

    async def StartJob(self, request: cpb.StartJobRequest, context: Context) -> cpb.StartJobResponse:  # noqa: N802
        """A scheduler's job began on a node with some of its devices (the prolog)."""
        try:
            job, unfit = self.state.start_job(
                request.job_id, request.node_id, list(request.indices), user=request.user, now_ns=time.time_ns()
            )
            await self.state.durable()
        except errors.XpuError as exc:
            await refuse(context, exc)
        return cpb.StartJobResponse(job=self._job_pb(job, time.time_ns()), unfit=unfit)

    async def EndJob(self, request: cpb.EndJobRequest, context: Context) -> cpb.Job:  # noqa: N802
        """A scheduler's job ended on a node (the epilog)."""
        try:
            job = self.state.end_job(request.job_id, request.node_id, time.time_ns())
            await self.state.durable()
        except errors.XpuError as exc:
            await refuse(context, exc)
        return self._job_pb(job, time.time_ns())

    async def ListJobs(self, request: cpb.ListJobsRequest, context: Context) -> cpb.ListJobsResponse:  # noqa: N802
        """Running jobs and the newest ended ones, with their devices' energy."""
        now = time.time_ns()
        chosen = [
            j
            for j in self.state.jobs.all()
            if (not request.job_id or j.job_id == request.job_id) and not (request.running_only and j.ended_ns)
        ]
        return cpb.ListJobsResponse(jobs=[self._job_pb(j, now) for j in chosen])

    def _job_pb(self, job: jobs.Job, now_ns: int) -> cpb.Job:
        st = self.state
        devices = []
        for d in job.devices:
            joules, method = st.jobs.device_energy(d, st.store)
            devices.append(
                cpb.JobDevice(
                    uuid=d.uuid,
                    node_id=d.node_id,
                    index=d.index,
                    start_ns=d.start_ns,
                    end_ns=d.end_ns,
                    energy_j=joules,
                    method=method,
                )
            )
        return codec.job_pb(job, devices, now_ns)

    async def GetPowerBudget(self, request: cpb.GetPowerBudgetRequest, context: Context) -> cpb.PowerBudget:  # noqa: N802
        """The budget, the cluster's power now, and whether the budget is feasible."""
        return self._budget_pb()

    def _budget_pb(self) -> cpb.PowerBudget:
        st = self.state
        total = st.views.summary(time.time_ns()).power_w
        out = cpb.PowerBudget(power_w=total, feasible=st.control.feasible)
        if st.budget_w is not None:
            out.budget_w = st.budget_w
        return out

    async def SetPowerBudget(self, request: cpb.SetPowerBudgetRequest, context: Context) -> cpb.PowerBudget:  # noqa: N802
        """Set the budget in watts; 0 removes it."""
        try:
            self.state.set_budget(request.budget_w, time.time_ns())
            await self.state.durable()  # the answer comes once the decision would survive a restart
        except errors.XpuError as exc:
            await refuse(context, exc)
        return self._budget_pb()

    async def SetPriority(self, request: cpb.SetPriorityRequest, context: Context) -> cpb.SetPriorityResponse:  # noqa: N802
        """Weight of a device or of a node's devices in the power allocation (default 1)."""
        try:
            self.state.set_weight(request.weight, device_uuid=request.device_uuid, node_id=request.node_id)
            await self.state.durable()  # the answer comes once the decision would survive a restart
        except errors.XpuError as exc:
            await refuse(context, exc)
        return cpb.SetPriorityResponse()

    async def Cordon(self, request: cpb.CordonRequest, context: Context) -> cpb.CordonResponse:  # noqa: N802
        """Mark a device, or every device of a node, as not for new work (with a reason)."""
        return await self._cordon(request, context, cordoned=True)

    async def Uncordon(self, request: cpb.CordonRequest, context: Context) -> cpb.CordonResponse:  # noqa: N802
        """Undo Cordon."""
        return await self._cordon(request, context, cordoned=False)

    async def _cordon(self, request: cpb.CordonRequest, context: Context, *, cordoned: bool) -> cpb.CordonResponse:
        try:
            n = self.state.cordon(
                device_uuid=request.device_uuid,
                node_id=request.node_id,
                reason=request.reason,
                cordoned=cordoned,
                now_ns=time.time_ns(),
            )
            await self.state.durable()  # the answer comes once the decision would survive a restart
        except errors.XpuError as exc:
            await refuse(context, exc)
        return cpb.CordonResponse(devices=n)

    async def ReleaseDevice(  # noqa: N802 - gRPC method name
        self, request: cpb.ReleaseDeviceRequest, context: Context
    ) -> cpb.ReleaseDeviceResponse:
        """Let a device go from the node that registered it (audited: who, why)."""
        identities = tls.peer_identities(context)
        token = access.bearer(context.invocation_metadata())
        who = access.operator(self.state.policy, identities, token) or ", ".join(sorted(identities)) or context.peer()
        try:
            owner = self.state.release_device(
                request.device_uuid, reason=request.reason, who=who, now_ns=time.time_ns()
            )
        except errors.XpuError as exc:
            await refuse(context, exc)
        return cpb.ReleaseDeviceResponse(node_id=owner)
