"""Telemetry.Stream over raw bytes (DESIGN 4).

Served through a generic handler that receives raw bytes, so that a message that is not valid
protobuf gets our INVALID_ARGUMENT and a counter rather than gRPC's INTERNAL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from xpuctl.common import tls
from xpuctl.controller import errors, hub
from xpuctl.controller.adapters import codec
from xpuctl.controller.core import access, ingest
from xpuctl.controller.errors import ProtocolViolation
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

log = logging.getLogger("xpu.controller.grpc")

# trailing metadata of a FAILED_PRECONDITION from a standby: the owner's address (issue 14.3)
OWNER_METADATA = "xpu-owner"
SERVICE = pb.DESCRIPTOR.services_by_name["Telemetry"].full_name


class TelemetryService:
    """Telemetry.Stream over raw bytes."""

    def __init__(self, state: hub.Hub) -> None:
        """Serve `state`."""
        self.state = state

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

    def _handle(self, stream: ingest.StreamState, raw: bytes, now_ns: int, identities: frozenset[str]) -> ingest.Answer:
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
            return self.state.hello(stream, facts, now_ns)
        if self.state.ownership is not None and (refusal := self.state.admission(None)) is not None:
            raise refusal  # fenced while the stream was up: end it, the agent finds the owner
        return self.state.batch(stream, codec.batch_columns(msg.batch, self.state.ingest.limits), now_ns)
