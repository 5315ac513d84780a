"""`xpu-controller gateway`: the Cluster API over every shard (DESIGN 11, issue 14.5).

Stateless, so several can run behind one name. It reads who owns each shard from etcd (every
second, and again at once when an owner does not answer as one), and answers each call by asking
the owners:
- GetSummary and GetPowerBudget: the sums over the shards;
- ListNodes: every shard's nodes; ListDevices: the shards' pages merged in uuid order (a page
  token is the last uuid of the previous page, so the same token goes to every shard);
- GetDevice, Cordon, Uncordon, SetPriority, ReleaseDevice: the shard that knows the device or
  node (the others answer NOT_FOUND);
- WatchEvents: every shard's stream, each event naming its shard; a stream that breaks (an owner
  failover) is opened again on the new owner from the time of its last event;
- SetPowerBudget: the site budget in etcd, which the root allocator splits over the shards (issue 15).
A shard whose owner cannot be reached, or that has no owner for the moment (during a failover;
a shard the gateway has seen, for FORGET_SHARD_S), fails the call with UNAVAILABLE naming the
shard: a listing is complete or it is an error, never silently partial. Operator credentials (the `authorization`
metadata) are passed on to the owners, which decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar, cast

import grpc
import grpc.aio
import msgspec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from xpuctl.controller.adapters import etcd, history
from xpuctl.controller.adapters.grpc_api import server as grpc_server
from xpuctl.controller.core import model
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc as cgrpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

log = logging.getLogger("xpu.gateway")

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")
CALL_TIMEOUT_S = 10.0
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED)
PASSED_ON = ("authorization",)  # metadata the owners judge for themselves
FORGET_SHARD_S = 300.0  # a shard without an owner this long is taken as removed from the site


class ShardError(Exception):
    """One shard could not answer; the gateway's call fails naming it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        """The status to end the call with, and why."""
        super().__init__(message)
        self.code = code
        self.message = message


class Owners:
    """The shards' owners as etcd names them, with one channel per owner address."""

    def __init__(self, client: etcd.Etcd, *, prefix: str, refresh_s: float = 1.0) -> None:
        """Nothing is read until `refresh` or `run`."""
        self.client = client
        self.prefix = prefix
        self.refresh_s = refresh_s
        self.known: dict[str, tuple[str, int]] = {}  # shard -> (owner address, epoch)
        self.seen: dict[str, float] = {}  # every shard that had an owner -> when it last had one (monotonic)
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.last_error = ""

    async def refresh(self) -> None:
        """Read the owners again (etcd errors are logged once and keep the last answer)."""
        try:
            found = await self.client.owners(self.prefix)
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
            if why != self.last_error:
                log.warning("etcd %s: %s; keeping the last known owners", self.client.target, why)
            self.last_error = why
            return
        self.last_error = ""
        now = time.monotonic()
        self.seen.update(dict.fromkeys(found, now))
        for shard in [s for s, at in self.seen.items() if now - at > FORGET_SHARD_S]:
            del self.seen[shard]  # gone for good (removed from the site): no longer waited for
        if found != self.known:
            log.info("owners: %s", ", ".join(f"{s}={a} (epoch {e})" for s, (a, e) in sorted(found.items())) or "none")
        self.known = found

    async def run(self) -> None:
        """Refresh every `refresh_s` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_s)

    def stub(self, address: str) -> cgrpc.ClusterStub:
        """A stub on the (kept) channel to `address`."""
        channel = self.channels.get(address)
        if channel is None:
            channel = self.channels[address] = grpc.aio.insecure_channel(address)
        return cgrpc.ClusterStub(channel)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self.channels.values():
            await channel.close(None)


class Gateway(cgrpc.ClusterServicer):
    """The Cluster API answered by the shards' owners."""

    def __init__(self, owners: Owners, history_reader: history.Reader | None = None) -> None:
        """Ask the owners `owners` knows (and `history_reader` for history beyond their rings)."""
        self.owners = owners
        self.history = history_reader

    # -- asking the owners -----------------------------------------------------------------------

    @staticmethod
    def _metadata(context: Context) -> tuple[tuple[str, str], ...]:
        return tuple((k, str(v)) for k, v in context.invocation_metadata() or () if k in PASSED_ON)

    async def _ask(self, shard: str, call: Callable[[cgrpc.ClusterStub], Awaitable[T]], *, retry: bool = True) -> T:
        """`call` on `shard`'s owner; once more on the new owner if it changed meanwhile."""
        address = self.owners.known.get(shard, ("", 0))[0]
        try:
            return await call(self.owners.stub(address))
        except grpc.aio.AioRpcError as exc:
            if retry and exc.code() in RETRY_CODES:
                await self.owners.refresh()
                if self.owners.known.get(shard, ("", 0))[0] not in ("", address):
                    return await self._ask(shard, call, retry=False)
            raise

    async def _each(self, call: Callable[[cgrpc.ClusterStub], Awaitable[T]]) -> dict[str, T]:
        """`call` on every shard's owner at once: shard -> answer.

        Raises:
            ShardError: no shard has an owner, or one of them did not answer.
        """
        await self.owners.refresh()  # the owners now: a listing is as complete as etcd is at this moment
        shards = sorted(self.owners.known)
        if not shards:
            msg = f"no shard has an owner in etcd ({self.owners.client.target}, prefix {self.owners.prefix})"
            raise ShardError(grpc.StatusCode.UNAVAILABLE, msg)
        orphans = sorted(set(self.owners.seen) - set(shards))
        if orphans:  # a listing without them would be silently partial
            msg = f"shard {', '.join(orphans)} has no owner right now (a failover takes a few seconds); try again"
            raise ShardError(grpc.StatusCode.UNAVAILABLE, msg)
        answers = await asyncio.gather(*(self._ask(s, call) for s in shards), return_exceptions=True)
        out: dict[str, T] = {}
        for shard, answer in zip(shards, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                code = (
                    answer.code()
                    if answer.code() != grpc.StatusCode.FAILED_PRECONDITION
                    else grpc.StatusCode.UNAVAILABLE
                )
                raise ShardError(code, f"shard {shard}: {answer.code().name}: {answer.details()}")
            if isinstance(answer, BaseException):
                raise answer
            out[shard] = answer
        return out

    async def _route(self, call: Callable[[cgrpc.ClusterStub], Awaitable[T]]) -> T:
        """`call` on the shard that knows its target: the first answer other than NOT_FOUND.

        Raises:
            ShardError: every shard said NOT_FOUND (the last one's message), or one failed.
        """
        last = "no shard has an owner"
        for shard in sorted(self.owners.known):
            try:
                return await self._ask(shard, call)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise ShardError(exc.code(), f"shard {shard}: {exc.details()}") from exc
                last = exc.details() or "not found"
        raise ShardError(grpc.StatusCode.NOT_FOUND, f"{last} (in no shard)")

    async def _all(self, method: str, request: Any, context: Context) -> list[Any]:  # noqa: ANN401 - any Cluster request
        """Every shard's answer to `method` (ending the call naming the shard that failed)."""
        md = self._metadata(context)
        try:
            parts = await self._each(lambda s: getattr(s, method)(request, timeout=CALL_TIMEOUT_S, metadata=md))
        except ShardError as exc:
            await self._fail(context, exc)
        return list(parts.values())

    async def _one(self, method: str, request: Any, context: Context) -> Any:  # noqa: ANN401 - any Cluster call
        """`method` on the shard that knows its target (ending the call when none does)."""
        md = self._metadata(context)
        try:
            return await self._route(lambda s: getattr(s, method)(request, timeout=CALL_TIMEOUT_S, metadata=md))
        except ShardError as exc:
            await self._fail(context, exc)

    @staticmethod
    async def _fail(context: Context, exc: ShardError) -> NoReturn:
        await context.abort(exc.code, exc.message)
        raise AssertionError  # unreachable: abort raises

    # -- the calls -------------------------------------------------------------------------------

    async def GetSummary(self, request: cpb.GetSummaryRequest, context: Context) -> cpb.Summary:  # noqa: N802 - gRPC method name
        """The sums of the shards' summaries."""
        return merge_summaries(await self._all("GetSummary", request, context))

    async def ListNodes(self, request: cpb.ListNodesRequest, context: Context) -> cpb.ListNodesResponse:  # noqa: N802
        """Every shard's nodes, by node id."""
        parts: list[cpb.ListNodesResponse] = await self._all("ListNodes", request, context)
        nodes = sorted((n for p in parts for n in p.nodes), key=lambda n: n.node_id)
        return cpb.ListNodesResponse(nodes=nodes)

    async def ListDevices(self, request: cpb.ListDevicesRequest, context: Context) -> cpb.ListDevicesResponse:  # noqa: N802
        """The shards' devices in uuid order, paged as one controller pages them."""
        return merge_device_pages(await self._all("ListDevices", request, context), request.page_size)

    async def GetDevice(self, request: cpb.GetDeviceRequest, context: Context) -> cpb.GetDeviceResponse:  # noqa: N802 - gRPC method name
        """From the shard that has the device; with a history database, the points asked for
        beyond its ring come from there (10 s means, older than the ring's oldest sample).
        """
        reply = cast("cpb.GetDeviceResponse", await self._one("GetDevice", request, context))
        if self.history is None or not request.limit or len(reply.history) >= request.limit:
            return reply
        before = reply.history[0].timestamp_ns if reply.history else time.time_ns()
        metric = model.METRICS[(request.metric or pb.METRIC_POWER_W) - 1]
        older = await self.history.older(
            request.uuid, metric, before_ns=before, want=request.limit - len(reply.history)
        )
        if not older:
            return reply
        points = [cpb.Point(timestamp_ns=t, value=v) for t, v in older]
        return cpb.GetDeviceResponse(device=reply.device, history=[*points, *reply.history])

    async def Cordon(self, request: cpb.CordonRequest, context: Context) -> cpb.CordonResponse:  # noqa: N802 - gRPC method name
        """On the shard that has the device or node."""
        return cast("cpb.CordonResponse", await self._one("Cordon", request, context))

    async def Uncordon(self, request: cpb.CordonRequest, context: Context) -> cpb.CordonResponse:  # noqa: N802 - gRPC method name
        """On the shard that has the device or node."""
        return cast("cpb.CordonResponse", await self._one("Uncordon", request, context))

    async def SetPriority(self, request: cpb.SetPriorityRequest, context: Context) -> cpb.SetPriorityResponse:  # noqa: N802 - gRPC method name
        """On the shard that has the device or node."""
        return cast("cpb.SetPriorityResponse", await self._one("SetPriority", request, context))

    async def ReleaseDevice(self, request: cpb.ReleaseDeviceRequest, context: Context) -> cpb.ReleaseDeviceResponse:  # noqa: N802 - gRPC method name
        """On the shard that has the device."""
        return cast("cpb.ReleaseDeviceResponse", await self._one("ReleaseDevice", request, context))

    async def StartJob(self, request: cpb.StartJobRequest, context: Context) -> cpb.StartJobResponse:  # noqa: N802
        """On the shard that has the node."""
        return cast("cpb.StartJobResponse", await self._one("StartJob", request, context))

    async def EndJob(self, request: cpb.EndJobRequest, context: Context) -> cpb.Job:  # noqa: N802
        """On the shard that has the job's part on the node."""
        return cast("cpb.Job", await self._one("EndJob", request, context))

    async def ListJobs(self, request: cpb.ListJobsRequest, context: Context) -> cpb.ListJobsResponse:  # noqa: N802
        """Every shard's jobs, a job on nodes of several shards as one."""
        parts: list[cpb.ListJobsResponse] = await self._all("ListJobs", request, context)
        return cpb.ListJobsResponse(jobs=merge_jobs([j for p in parts for j in p.jobs]))

    async def GetPowerBudget(self, request: cpb.GetPowerBudgetRequest, context: Context) -> cpb.PowerBudget:  # noqa: N802
        """The sum of the shards' budgets (none unless every shard has one) and power."""
        parts: list[cpb.PowerBudget] = await self._all("GetPowerBudget", request, context)
        out = cpb.PowerBudget(power_w=sum(p.power_w for p in parts), feasible=all(p.feasible for p in parts))
        if all(p.HasField("budget_w") for p in parts):
            out.budget_w = sum(p.budget_w for p in parts)
        try:  # a site under a root allocator: its budget is the site's, not the sum of the grants
            kv = await self.owners.client.get(etcd.SiteKeys(self.owners.prefix).budget)
            if kv is not None:
                out.budget_w = msgspec.json.decode(bytes(kv.value), type=etcd.SiteBudget).budget_w  # type: ignore[attr-defined]
        except (grpc.aio.AioRpcError, msgspec.DecodeError):
            pass
        return out

    async def SetPowerBudget(self, request: cpb.SetPowerBudgetRequest, context: Context) -> cpb.PowerBudget:  # noqa: N802
        """The site budget, which the root allocator splits over the shards (`xpu-controller root`, issue 15)."""
        watts = request.budget_w
        if not math.isfinite(watts) or watts <= 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"site budget {watts!r} W: give a positive number of watts (a site always has a budget)",
            )
        keys = etcd.SiteKeys(self.owners.prefix)
        try:
            await self.owners.client.put(keys.budget, msgspec.json.encode(etcd.SiteBudget(watts)))
        except grpc.aio.AioRpcError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"etcd {exc.code().name}: {exc.details()}; not set")
        log.info("site budget set to %.0f W", watts)
        out = await self.GetPowerBudget(cpb.GetPowerBudgetRequest(), context)
        out.budget_w = watts  # the site's; the shards follow within a root period or two
        return out

    async def WatchEvents(self, request: cpb.WatchEventsRequest, context: Context) -> AsyncIterator[cpb.Event]:  # noqa: N802
        """Every shard's events as they come, each naming its shard (see the module docstring)."""
        md = self._metadata(context)
        request.after_id = 0  # shards number their events apart: a watcher resumes by time here
        if request.history_only:
            parts = {}
            try:
                parts = await self._each(lambda s: _collect(s.WatchEvents(request, metadata=md)))
            except ShardError as exc:
                await self._fail(context, exc)
            merged = [e for shard, evs in parts.items() for e in _named(evs, shard)]
            for e in sorted(merged, key=lambda e: e.timestamp_ns):
                yield e
            return
        queue: asyncio.Queue[cpb.Event] = asyncio.Queue(maxsize=10_000)
        followers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                for shard in self.owners.known:  # shards that appear later are followed too
                    if shard not in followers:
                        followers[shard] = asyncio.create_task(
                            self._follow(shard, request, md, queue), name=f"gateway.watch[{shard}]"
                        )
                try:
                    event = await asyncio.wait_for(queue.get(), self.owners.refresh_s)
                except TimeoutError:
                    continue
                yield event
        finally:
            for task in followers.values():
                task.cancel()
            await asyncio.gather(*followers.values(), return_exceptions=True)

    async def _follow(
        self,
        shard: str,
        request: cpb.WatchEventsRequest,
        md: tuple[tuple[str, str], ...],
        queue: asyncio.Queue[cpb.Event],
    ) -> None:
        """One shard's events into `queue`, across owner changes, from the time of the last one on
        (a live-only watch resumes from when it began: the new owner's kept events since then).
        """
        first, since = True, request.since_ns or time.time_ns()
        seen_at_since: set[bytes] = set()  # events of the last timestamp: a reopened stream repeats them
        while True:
            address = self.owners.known.get(shard, ("", 0))[0]
            asked = cpb.WatchEventsRequest()
            asked.CopyFrom(request)
            asked.since_ns = request.since_ns if first else since
            first = False
            try:
                async for e in self.owners.stub(address).WatchEvents(asked, metadata=md):
                    key = e.SerializeToString()
                    if e.timestamp_ns == since and key in seen_at_since:
                        continue
                    if e.timestamp_ns > since:
                        since, seen_at_since = e.timestamp_ns, set()
                    seen_at_since.add(key)
                    e.shard, e.id = shard, 0  # ids are the shard's own (see _named)
                    with contextlib.suppress(asyncio.QueueFull):  # a slow watcher loses events, not the gateway
                        queue.put_nowait(e)
            except grpc.aio.AioRpcError as exc:
                log.info("events of shard %s from %s ended (%s); following its owner", shard, address, exc.code().name)
            await asyncio.sleep(0.5)
            await self.owners.refresh()


async def _collect(stream: AsyncIterator[cpb.Event]) -> list[cpb.Event]:
    return [e async for e in stream]


def _named(evs: list[cpb.Event], shard: str) -> list[cpb.Event]:
    for e in evs:
        e.shard = shard
        e.id = 0  # each shard numbers its own events: an id would mean nothing across them
    return evs


def merge_jobs(parts: list[cpb.Job]) -> list[cpb.Job]:
    """Jobs of several shards, one per job id: devices together, the earliest start, the latest end
    (none while a part runs), energy added, duration and mean power again from those.
    """
    by_id: dict[str, cpb.Job] = {}
    for j in parts:
        have = by_id.get(j.job_id)
        if have is None:
            by_id[j.job_id] = cpb.Job()
            by_id[j.job_id].CopyFrom(j)
            continue
        running = not have.ended_ns or not j.ended_ns
        have.devices.extend(j.devices)
        have.user = have.user or j.user
        have.started_ns = min(have.started_ns, j.started_ns)
        have.ended_ns = 0 if running else max(have.ended_ns, j.ended_ns)
        have.energy_j += j.energy_j
        have.duration_s = max(0.0, ((have.ended_ns or time.time_ns()) - have.started_ns) / 1e9)
        have.mean_power_w = have.energy_j / have.duration_s if have.duration_s > 0 else 0.0
        have.method = "+".join(sorted({*have.method.split("+"), *j.method.split("+")} - {""}))
    return sorted(by_id.values(), key=lambda j: j.started_ns)


def merge_summaries(parts: list[cpb.Summary]) -> cpb.Summary:
    """One summary of several shards': counts added, latencies the worst, a budget only if all have one."""
    out = cpb.Summary()
    for p in parts:
        for name in ("nodes", "nodes_online", "nodes_stale", "nodes_offline", "devices", "anomalies_open"):
            setattr(out, name, getattr(out, name) + getattr(p, name))
        out.power_w += p.power_w
        for k, v in p.devices_by_vendor.items():
            out.devices_by_vendor[k] += v
        for k, v in p.devices_by_health.items():
            out.devices_by_health[k] += v
        i, pi = out.ingest, p.ingest
        for name in ("batches_total", "samples_total", "duplicate_batches_total", "gap_batches_total", "streams_open"):
            setattr(i, name, getattr(i, name) + getattr(pi, name))
        for k, v in pi.rejected_by_reason.items():
            i.rejected_by_reason[k] += v
        i.ingest_p50_ms = max(i.ingest_p50_ms, pi.ingest_p50_ms)
        i.ingest_p99_ms = max(i.ingest_p99_ms, pi.ingest_p99_ms)
    if parts and all(p.HasField("budget_w") for p in parts):
        out.budget_w = sum(p.budget_w for p in parts)
    return out


def merge_device_pages(parts: list[cpb.ListDevicesResponse], page_size: int) -> cpb.ListDevicesResponse:
    """The first `page_size` devices (0: all) of the shards' pages in uuid order, and the next token.

    Each shard gave at most `page_size` devices after the same token; the merged page ends at the
    `page_size`-th uuid, and there is more when any shard had more than what was taken of it.
    """
    devices = sorted((d for p in parts for d in p.devices), key=lambda d: d.info.uuid)
    if not page_size:
        return cpb.ListDevicesResponse(devices=devices)
    page = devices[:page_size]
    more = len(devices) > page_size or any(p.next_page_token for p in parts)
    return cpb.ListDevicesResponse(devices=page, next_page_token=page[-1].info.uuid if more and page else "")


async def serve(
    *,
    etcd_urls: str,
    listen: str,
    prefix: str,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
    history_url: str | None = None,
) -> None:
    """Run a gateway until `stop` is set; `on_ready(port)` once it serves.

    Raises:
        etcd.EndpointError: a bad `--etcd`.
        OSError: the address cannot be bound.
    """
    client = etcd.Etcd(etcd_urls, timeout_s=2.0)
    owners = Owners(client, prefix=prefix)
    server = grpc.aio.server(options=grpc_server.SERVER_OPTIONS)
    reader = history.Reader(history_url) if history_url else None  # raises ValueError on a bad URL
    cgrpc.add_ClusterServicer_to_server(Gateway(owners, reader), server)
    health_servicer: grpc_server.HealthServicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        msg = f"cannot listen on {listen}"
        raise OSError(msg)
    await owners.refresh()
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("xpu-controller gateway on port %d; shards from etcd %s (prefix %s)", port, etcd_urls, prefix)
    refresher = asyncio.create_task(owners.run(), name="gateway.owners")
    if on_ready is not None:
        on_ready(port)
    try:
        await stop.wait()
    finally:
        refresher.cancel()
        await asyncio.gather(refresher, return_exceptions=True)
        await server.stop(1.0)
        await owners.close()
        await client.close()
