"""Telemetry.Stream over raw bytes (DESIGN 4).

Served through a generic handler that receives raw bytes, so that a message that is not valid
protobuf gets our INVALID_ARGUMENT and a counter rather than gRPC's INTERNAL.

Batches are stored in steps across streams (issue 13): each stream's handler reads its message,
checks it (`codec.stage`, `Ingest.admit`: a protocol violation still ends that stream at once) and
hands it to the `Batcher`, then waits for the step that stores it. A step stores every batch handed
in since the last one with one frame of arrays (`codec.frame`, `Hub.batches`), so the numpy calls
of validation, the ring store and the critical path are paid per step, not per batch. A step runs
STEP_DELAY_S after its first batch, or at once when STEP_BATCHES are waiting, when every open
stream is waiting (nothing more can come), or when a batch belongs to a backlog an agent replays
after a reconnect (`ingest.Limits.backlog_after_s`: its stream would otherwise drain at one batch
per step). A batch that may be hot (a temperature near a device's slowdown, or an error event)
does not wait: it is stored on its own in its handler's turn, and the critical path sees it as
before. Each handler then writes its Ack as before (cumulative: see `ingest.Limits.ack_every_batches`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from xpuctl.common import tls
from xpuctl.controller import errors, hub
from xpuctl.controller.adapters import codec
from xpuctl.controller.core import access, ingest, registry
from xpuctl.controller.errors import ProtocolViolation
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

log = logging.getLogger("xpu.controller.grpc")

# trailing metadata of a FAILED_PRECONDITION from a standby: the owner's address (issue 14.3)
OWNER_METADATA = "xpu-owner"
SERVICE = pb.DESCRIPTOR.services_by_name["Telemetry"].full_name
STEP_DELAY_S = 0.02  # the longest a batch waits for its step (ingest latency, not the critical path)
STEP_BATCHES = 512  # a step runs at once when this many batches wait


class Batcher:
    """Batches of every stream, admitted and waiting for the step that stores them together."""

    def __init__(self, state: hub.Hub) -> None:
        """Store into `state`."""
        self.state = state
        self.nodes: list[registry.NodeState] = []
        self.staged: list[codec.Staged] = []
        self.waiting: list[asyncio.Future[ingest.Answer]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.hot: dict[str, float] = {}  # node id -> its devices' hot_above_c, at registry version
        self.hot_version = -1

    def add(self, node: registry.NodeState, staged: codec.Staged, now_ns: int) -> asyncio.Future[ingest.Answer]:
        """Queue an admitted batch; its answer once stored."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ingest.Answer] = loop.create_future()
        if self._maybe_hot(node, staged):  # stored in this handler's turn: the critical path waits for nothing
            self._store([node], [staged], [done])
            return done
        self.nodes.append(node)
        self.staged.append(staged)
        self.waiting.append(done)
        n = len(self.staged)
        behind = staged.rows and staged.timestamp_ns[0] < self.state.ingest.backlog_before_ns(now_ns)  # more follows
        if n >= STEP_BATCHES or n >= self.state.streams_open or behind:
            self.step()
        elif self.timer is None:
            self.timer = loop.call_later(STEP_DELAY_S, self.step)
        return done

    def _maybe_hot(self, node: registry.NodeState, staged: codec.Staged) -> bool:
        """Whether the critical path could act on this batch (errors, or a temperature at or
        above the lowest at which one of its node's devices is urgent).
        """
        if staged.errors:
            return True
        if self.hot_version != self.state.registry.version:
            self.hot.clear()
            self.hot_version = self.state.registry.version
        hot_above_c = self.hot.get(node.node_id)
        if hot_above_c is None:
            hot_above_c = self.hot[node.node_id] = self.state.control.hot_above_c(node.slots)
        return staged.hottest_c >= hot_above_c

    def step(self) -> None:
        """Store every waiting batch; answer each one's handler."""
        nodes, staged, waiting = self.nodes, self.staged, self.waiting
        self.nodes, self.staged, self.waiting = [], [], []
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if staged:
            self._store(nodes, staged, waiting)

    def _store(
        self, nodes: list[registry.NodeState], staged: list[codec.Staged], waiting: list[asyncio.Future[ingest.Answer]]
    ) -> None:
        try:
            answers = self.state.batches(nodes, codec.frame(staged), time.time_ns())
        except Exception:  # a defect: every handler of this step ends its stream, the others go on
            log.exception("storing %d batches failed", len(staged))
            for done in waiting:
                if not done.done():
                    why = "the controller failed to store the batch; see its log"
                    done.set_exception(ProtocolViolation("INTERNAL", "internal", why))
            return
        for done, answer in zip(waiting, answers, strict=True):
            if not done.done():  # its handler is gone (the stream was cancelled): stored all the same
                done.set_result(answer)


class TelemetryService:
    """Telemetry.Stream over raw bytes."""

    def __init__(self, state: hub.Hub) -> None:
        """Serve `state`."""
        self.state = state
        self.batcher = Batcher(state)

    def handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        """The generic handler to add to a server."""
        return grpc.method_handlers_generic_handler(
            SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(self.stream)}
        )

    async def stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        """One agent's stream: Hello, then Batches; Acks (cumulative: see `ingest.Limits.ack_every_batches`)."""
        st = self.state
        stream = ingest.StreamState()
        stream.peer = context.peer()
        identities = tls.peer_identities(context) if st.policy.enforced else frozenset()
        st.streams_open += 1
        held: ingest.Answer | None = None  # an answer not written yet (a later Ack carries it)
        try:
            async for raw in requests:
                now_ns = time.time_ns()
                try:
                    answer = self._handle(stream, raw, now_ns, identities)
                    if not isinstance(answer, ingest.Answer):
                        answer = await answer  # stored by the batcher's next step
                except ProtocolViolation as v:
                    st.ingest.counters.reject(v.reason)
                    st.refused(v, peer=stream.peer, now_ns=now_ns)
                    node = stream.node.node_id if stream.node else "?"
                    if isinstance(v, errors.NotOwner):
                        if v.owner:  # machine-readable, for agents that follow the owner
                            context.set_trailing_metadata(((OWNER_METADATA, v.owner),))
                        log.info("stream from %s (%s) refused: %s", context.peer(), node, v.message)
                    else:
                        log.warning("stream from %s (%s) ended: %s: %s", context.peer(), node, v.code, v.message)
                    await context.abort(getattr(grpc.StatusCode, v.code), errors.bounded(v.message))
                if st.ingest.answer_now(stream, answer, now_ns):
                    held = None
                    yield codec.ack(answer)
                else:
                    held = answer
            st.ingest.goodbye(stream, time.time_ns())  # the agent closed its side: it is stopping
            if held is not None:
                yield codec.ack(held)  # what it sent last is stored: say so before the end
        finally:
            st.streams_open -= 1
            st.ingest.stream_closed(stream)

    def _handle(
        self, stream: ingest.StreamState, raw: bytes, now_ns: int, identities: frozenset[str]
    ) -> ingest.Answer | asyncio.Future[ingest.Answer]:
        """The answer to a Hello or a duplicate; for a batch to store, the batcher's promise of it."""
        limit = self.state.ingest.limits.max_message_bytes
        if len(raw) > limit:
            why = f"message of {len(raw)} bytes exceeds the limit of {limit} bytes"
            raise ProtocolViolation("RESOURCE_EXHAUSTED", "oversize", why)
        msg = codec.decode_agent_message(raw)
        if msg.WhichOneof("kind") == "hello":
            facts = codec.hello_facts(msg.hello)
            if (denial := access.check_node(self.state.policy, facts.node_id, identities)) is not None:
                raise ProtocolViolation(denial.code, "identity_mismatch", denial.message)
            if (refusal := self.state.admission(facts.node_id)) is not None:
                raise refusal
            self.batcher.step()  # what waits is stored before a Hello can supersede its stream
            return self.state.hello(stream, facts, now_ns)
        if self.state.ownership is not None and (refusal := self.state.admission(None)) is not None:
            raise refusal  # fenced while the stream was up: end it, the agent finds the owner
        staged = codec.stage(msg.batch, self.state.ingest.limits)
        node = self.state.ingest.admit(stream, staged.seq, staged.rows, staged.dropped_total, now_ns)
        if isinstance(node, ingest.Answer):
            return node  # a duplicate: answered at once
        return self.batcher.add(node, staged, now_ns)
