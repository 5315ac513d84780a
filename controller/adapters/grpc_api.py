"""The controller's gRPC server: Telemetry ingest, the Cluster API, health and reflection.

Telemetry.Stream is served through a generic handler that receives raw bytes, so that a message
that is not valid protobuf gets our INVALID_ARGUMENT and a counter rather than gRPC's INTERNAL.
Every decision is in controller/core; this module only moves bytes and maps errors to statuses.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xpuctl.controller.adapters import codec
from xpuctl.controller import config
from xpuctl.controller.core import access, control, events, ingest, registry, ring, views
from xpuctl.controller.errors import ProtocolViolation
from xpuctl.common import tls
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

log = logging.getLogger("xpu.controller.grpc")

TELEMETRY = pb.DESCRIPTOR.services_by_name["Telemetry"].full_name
CLUSTER = cpb.DESCRIPTOR.services_by_name["Cluster"].full_name

# Keepalive matched to the agents' (notes A2): accept pings every 10 s, ping idle agents each minute.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class State:
    """Everything the controller holds, shared by the servicers (owned by the event loop)."""

    def __init__(
        self,
        *,
        window: int = 600,
        liveness: registry.Liveness | None = None,
        limits: ingest.Limits | None = None,
        budget_w: float | None = None,
        cfg: config.Config | None = None,
        prefix: str = "c",
    ) -> None:
        """Empty registry and ring store; the loop's rules with `cfg` (budget_w overrides it)."""
        cfg = cfg or config.Config()
        if budget_w is not None:
            cfg = config.Config(detect=cfg.detect, power=config.Power(**{**_fields(cfg.power), "budget_w": budget_w}), bus=cfg.bus)
        self.cfg = cfg
        self.registry = registry.Registry()
        self.store = ring.RingStore(n_metrics=ingest.model.N_STORED, window=window)
        self.ingest = ingest.Ingest(self.registry, self.store, limits=limits)
        self.liveness = liveness or registry.Liveness()
        self.views = views.Views(self.registry, self.store, self.liveness)
        self.control = control.Control(self.registry, self.store, self.ingest, self.liveness, cfg, prefix=prefix)
        self.views.anomalies_of = self.control.detectors.open_kinds
        self.streams_open = 0
        # set by the service: called after each stored batch, and for every event
        self.after_batch: Callable[[int], None] | None = None
        self.recent_events: collections.deque[events.Event] = collections.deque(maxlen=1000)
        self.watchers: set[asyncio.Queue[events.Event]] = set()
        self.events_dropped = 0
        self.forward: Callable[[events.Event], None] | None = None  # e.g. to xpu/v1/events
        self.event_counts: dict[str, int] = {}  # by kind, since start
        self.raised_by_detector: dict[str, int] = {}  # anomaly.raised by detector, since start
        self.policy = access.Policy()  # who may do what; set by the service when TLS is on
        self.denied: dict[str, int] = {}  # refused Cluster calls, by status code name

    @property
    def budget_w(self) -> float | None:
        """The cluster power budget (None: no budget)."""
        return self.control.power.budget_w

    def publish(self, evs: list[events.Event]) -> None:
        """Hand events to WatchEvents streams (a slow watcher loses events, counted)."""
        for e in evs:
            self.recent_events.append(e)
            self.event_counts[e.kind] = self.event_counts.get(e.kind, 0) + 1
            if e.kind == "anomaly.raised":
                self.raised_by_detector[e.detector] = self.raised_by_detector.get(e.detector, 0) + 1
            if self.forward is not None:
                self.forward(e)
            for q in self.watchers:
                try:
                    q.put_nowait(e)
                except asyncio.QueueFull:
                    self.events_dropped += 1


def _fields(s: config.Power) -> dict[str, object]:
    return {f: getattr(s, f) for f in s.__struct_fields__}


class TelemetryService:
    """Telemetry.Stream over raw bytes."""

    def __init__(self, state: State) -> None:
        """Serve `state`."""
        self.state = state

    async def stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """One agent's stream: Hello, then Batches; an Ack for each."""
        st = self.state
        stream = ingest.StreamState()
        identities = tls.peer_identities(context) if st.policy.enforced else frozenset()
        st.streams_open += 1
        try:
            async for raw in requests:
                now_ns = time.time_ns()
                try:
                    answer = self._handle(stream, raw, now_ns, identities)
                except ProtocolViolation as v:
                    st.ingest.counters.reject(v.reason)
                    node = stream.node.node_id if stream.node else "?"
                    log.warning("stream from %s (%s) ended: %s: %s", context.peer(), node, v.code, v.message)
                    await context.abort(getattr(grpc.StatusCode, v.code), v.message)
                yield codec.ack(answer)
        finally:
            st.streams_open -= 1
            st.ingest.stream_closed(stream)

    def _handle(self, stream: ingest.StreamState, raw: bytes, now_ns: int, identities: frozenset[str]) -> ingest.Answer:
        limit = self.state.ingest.limits.max_message_bytes
        if len(raw) > limit:
            msg = f"message of {len(raw)} bytes exceeds the limit of {limit} bytes"
            raise ProtocolViolation("RESOURCE_EXHAUSTED", "oversize", msg)
        msg = codec.decode_agent_message(raw)
        if msg.WhichOneof("kind") == "hello":
            facts = codec.hello_facts(msg.hello)
            if (denial := access.check_node(self.state.policy, facts.node_id, identities)) is not None:
                raise ProtocolViolation(denial.code, "identity_mismatch", denial.message)
            return self.state.ingest.hello(stream, facts, now_ns)
        answer = self.state.ingest.batch(stream, codec.batch_columns(msg.batch), now_ns)
        if self.state.after_batch is not None:
            self.state.after_batch(now_ns)
        return answer


class ClusterService(cluster_pb2_grpc.ClusterServicer):
    """The Cluster API (read side for now)."""

    def __init__(self, state: State) -> None:
        """Serve `state`."""
        self.state = state

    async def GetSummary(  # noqa: N802 - gRPC method name
        self, request: cpb.GetSummaryRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Summary:
        """Cluster totals and ingest statistics."""
        st = self.state
        p50, p99 = st.ingest.latency.quantiles()
        return codec.summary_pb(
            st.views.summary(time.time_ns()),
            st.ingest.counters,
            p50,
            p99,
            st.streams_open,
            st.budget_w,
            st.control.anomalies_open(),
        )

    async def ListNodes(  # noqa: N802
        self, request: cpb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListNodesResponse:
        """Every node with liveness and delivery counters."""
        return cpb.ListNodesResponse(nodes=[codec.node_pb(n) for n in self.state.views.nodes(time.time_ns())])

    async def ListDevices(  # noqa: N802
        self, request: cpb.ListDevicesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListDevicesResponse:
        """Devices with their latest sample, filtered."""
        if request.vendor and request.vendor not in ingest.model.VENDORS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown vendor {request.vendor!r}; use one of {', '.join(sorted(ingest.model.VENDORS))}",
            )
        flt = codec.device_filter(request)
        devices = self.state.views.devices(time.time_ns(), flt)
        return cpb.ListDevicesResponse(devices=[codec.device_pb(d) for d in devices])

    # The rest of the API arrives with the operator surfaces; until then each says so clearly.

    async def GetDevice(  # noqa: N802
        self, request: cpb.GetDeviceRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetDeviceResponse:
        """One device with the recent history of one metric (default: power) from the ring store."""
        st = self.state
        slot = st.registry.slot_of_uuid.get(request.uuid)
        if slot is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.uuid!r}; `xpuctl devices` lists them")
        metric = request.metric or 3  # METRIC_POWER_W
        if not 1 <= metric <= len(ingest.model.METRICS):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"metric {metric} is not one of 1..{len(ingest.model.METRICS)}"
            )
        limit = request.limit or st.store.window
        now_ns = time.time_ns()
        view = st.views.devices(now_ns, views.DeviceFilter(node_id=st.registry.node_of_slot[slot]))  # type: ignore[index]
        device = next(v for v in view if v.info.uuid == request.uuid)
        ts, values = st.store.history(slot, metric - 1, limit)  # type: ignore[arg-type]
        return cpb.GetDeviceResponse(
            device=codec.device_pb(device),
            history=[cpb.Point(timestamp_ns=int(t), value=float(v)) for t, v in zip(ts, values, strict=True) if v == v],
        )

    async def WatchEvents(  # noqa: N802
        self, request: cpb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.Event]:
        """Events as they happen, filtered by kind prefix and node."""
        q: asyncio.Queue[events.Event] = asyncio.Queue(maxsize=10_000)
        self.state.watchers.add(q)
        kinds = tuple(request.kinds)
        try:
            while True:
                e = await q.get()
                if kinds and not e.kind.startswith(kinds):
                    continue
                if request.node_id and e.node_id != request.node_id:
                    continue
                yield codec.event_pb(e)
        finally:
            self.state.watchers.discard(q)

    async def GetPowerBudget(  # noqa: N802
        self, request: cpb.GetPowerBudgetRequest, context: grpc.aio.ServicerContext
    ) -> cpb.PowerBudget:
        """The budget, the cluster's power now, and whether the budget is feasible."""
        return self._budget_pb()

    def _budget_pb(self) -> cpb.PowerBudget:
        st = self.state
        total = st.views.summary(time.time_ns()).power_w
        out = cpb.PowerBudget(power_w=total, feasible=st.control.feasible)
        if st.budget_w is not None:
            out.budget_w = st.budget_w
        return out

    async def SetPowerBudget(  # noqa: N802
        self, request: cpb.SetPowerBudgetRequest, context: grpc.aio.ServicerContext
    ) -> cpb.PowerBudget:
        """Set the budget in watts; 0 removes it."""
        w = request.budget_w
        if not math.isfinite(w) or w < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"budget_w {w!r} must be a finite number of watts >= 0 (0 = no budget)"
            )
        out = self.state.control.set_budget(w or None, time.time_ns())
        self.state.publish(out.events)
        return self._budget_pb()

    async def SetPriority(  # noqa: N802
        self, request: cpb.SetPriorityRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetPriorityResponse:
        """Weight of a device or of a node's devices in the power allocation (default 1)."""
        w = request.weight
        if not (math.isfinite(w) and 0 < w <= 1000):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"weight {w!r} must be in (0, 1000]; 1 is the default")
        ctl = self.state.control
        if request.device_uuid:
            slot = self.state.registry.slot_of_uuid.get(request.device_uuid)
            if slot is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_uuid!r}")
            ctl.device_weight[slot] = w  # type: ignore[index]
        elif request.node_id:
            if request.node_id not in self.state.registry.nodes:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no node {request.node_id!r}")
            ctl.node_weight[request.node_id] = w
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name a device_uuid or a node_id")
        return cpb.SetPriorityResponse()

    async def Cordon(self, request: cpb.CordonRequest, context: grpc.aio.ServicerContext) -> cpb.CordonResponse:  # noqa: N802
        """Mark a device, or every device of a node, as not for new work (with a reason)."""
        return await self._cordon(request, context, cordoned=True)

    async def Uncordon(self, request: cpb.CordonRequest, context: grpc.aio.ServicerContext) -> cpb.CordonResponse:  # noqa: N802
        """Undo Cordon."""
        return await self._cordon(request, context, cordoned=False)

    async def _cordon(
        self, request: cpb.CordonRequest, context: grpc.aio.ServicerContext, *, cordoned: bool
    ) -> cpb.CordonResponse:
        reg = self.state.registry
        if request.device_uuid:
            slot = reg.slot_of_uuid.get(request.device_uuid)
            if slot is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_uuid!r}")
            slots = [slot]
        elif request.node_id:
            if request.node_id not in reg.nodes:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no node {request.node_id!r}")
            slots = reg.slots_of(request.node_id).tolist()
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name a device_uuid or a node_id")
        if cordoned and not request.reason.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a cordon needs a reason (e.g. --reason 'ECC storm')")
        evs = []
        now_ns = time.time_ns()
        for slot in slots:  # type: ignore[union-attr]
            reg.cordoned[slot] = cordoned
            reg.cordon_reason[slot] = request.reason if cordoned else ""
            evs.append(
                events.Event(
                    timestamp_ns=now_ns,
                    kind="device.cordoned" if cordoned else "device.uncordoned",
                    node_id=reg.node_of_slot[slot],
                    device_uuid=reg.infos[slot].uuid,
                    message=(f"cordoned: {request.reason}" if cordoned else "uncordoned"),
                )
            )
        self.state.publish(evs)
        return cpb.CordonResponse(devices=len(slots))  # type: ignore[arg-type]


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Applies controller/core/access.py to every Cluster call before its handler runs.

    An interceptor sees the method and the metadata but not the peer's certificate, so it wraps
    the handler: the wrapper reads the auth context, asks the rules, and aborts or goes on.
    """

    def __init__(self, state: State) -> None:
        """Check calls against `state.policy`."""
        self.state = state

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The handler, wrapped when the call is a Cluster call and access is enforced."""
        handler = await continuation(details)
        method_path: str = details.method  # type: ignore[attr-defined]
        if handler is None or not self.state.policy.enforced or not method_path.startswith(f"/{CLUSTER}/"):
            return handler
        method = method_path.rsplit("/", 1)[1]
        token = _bearer(details.invocation_metadata)  # type: ignore[attr-defined]

        async def check(context: grpc.aio.ServicerContext) -> None:
            """Abort the call (abort raises) when the rules refuse it."""
            denial = access.check_call(self.state.policy, method, tls.peer_identities(context), token)
            if denial is not None:
                self.state.denied[denial.code] = self.state.denied.get(denial.code, 0) + 1
                log.warning("refused %s from %s: %s", method, context.peer(), denial.message)
                await context.abort(getattr(grpc.StatusCode, denial.code), denial.message)

        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def streaming(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
                await check(context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streaming, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
            )
        inner = handler.unary_unary

        async def unary(request: object, context: grpc.aio.ServicerContext) -> object:
            await check(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an `authorization: Bearer TOKEN` header, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def build_server(
    state: State, listen: str, *, reflection_on: bool = True, tls_files: tls.ServerFiles | None = None
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every service added, bound to `listen`; returns it and its port.

    With `tls_files` the port is mTLS and `state.policy` is enforced.

    Raises:
        OSError: the address cannot be bound.
        tls.TlsError: a TLS file cannot be used.
    """
    limit = state.ingest.limits.max_message_bytes
    credentials = tls.server_credentials(tls_files) if tls_files is not None else None
    server = grpc.aio.server(
        interceptors=[AccessInterceptor(state)],
        options=[
            *SERVER_OPTIONS,
            # gRPC's own limit sits above ours, so that oversize messages reach our check and counter
            ("grpc.max_receive_message_length", 2 * limit),
        ]
    )
    telemetry = TelemetryService(state)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                TELEMETRY,
                {"Stream": grpc.stream_stream_rpc_method_handler(telemetry.stream)},
            ),
        )
    )
    cluster_pb2_grpc.add_ClusterServicer_to_server(ClusterService(state), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [TELEMETRY, CLUSTER, health.SERVICE_NAME]
    if reflection_on:
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    if port == 0:
        msg = f"cannot listen on {listen!r}: address in use or not valid (expected HOST:PORT)"
        raise OSError(msg)
    server.health = health_servicer  # type: ignore[attr-defined]
    server.service_names = names  # type: ignore[attr-defined]
    return server, port


async def set_serving(server: grpc.aio.Server, serving: bool) -> None:
    """Flip every service's health status."""
    h: health.aio.HealthServicer = server.health  # type: ignore[attr-defined]
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *server.service_names]:  # type: ignore[attr-defined]
        await h.set(name, status)
