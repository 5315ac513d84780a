"""The agent's gRPC link: one bidirectional Telemetry.Stream, reconnected for ever.

Session: write Hello, wait for the controller's first Ack (it says what the controller already
holds for this boot), then send every buffered batch after that Ack and each new one as it comes.
Acks free the buffer. On any stream error: log it, wait (exponential backoff, full jitter), start
a new session, resend everything after the last Ack (at-least-once; the controller drops
duplicates). A Throttle pauses sending for the time it names.

Several targets (a shard's candidates, DESIGN 11): a standby refuses the stream with
FAILED_PRECONDITION and names the owner in the trailing metadata `xpu-owner`; the next session
goes to that owner if it is one of the targets (an address outside the list is never dialled), else
to the next target in turn, as after any other error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TypeAlias, cast

import grpc
import grpc.aio

from xpuctl.agent.core import buffer
from xpuctl.common import backoff, cli, tls
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

log = logging.getLogger("xpu.agent.link")

STREAM_METHOD = "/xpu.v1.Telemetry/Stream"
# Batches go out already encoded (bytes); answers come back decoded.
Stream: TypeAlias = "grpc.aio.StreamStreamMultiCallable[bytes, pb.ControllerMessage]"
Call: TypeAlias = "grpc.aio.StreamStreamCall[bytes, pb.ControllerMessage]"
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # the stubs lag grpc.aio

# gRPC keepalive for a long-lived stream (notes A2): ping every 30 s, give up after 10 s silence.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # each agent its own connection, even when a fleet shares a process
    ("grpc.use_local_subchannel_pool", 1),
]


# the reconnect backoff's cap (jittered): a restarted controller has its agents back within it
BACKOFF_CAP_S = 5.0
OWNER_METADATA = "xpu-owner"  # a standby's pointer to its shard's owner (controller telemetry.py)
REDIRECT_MAX_S = 0.5  # a session sent to the named owner starts within this (jittered)


class StreamClosedError(Exception):
    """The controller closed the stream without an error status."""


class OwnerMovedError(Exception):
    """The shard's lease names another owner than the one this session streams to."""


class Link:
    """Streams the batches of one agent's buffer to the controller."""

    def __init__(
        self,
        *,
        target: str,
        node_id: str,
        boot_id: str,
        make_hello: Callable[[int], bytes],
        batches: buffer.BatchBuffer,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = BACKOFF_CAP_S,
        rng: random.Random | None = None,
        channel: grpc.aio.Channel | None = None,
        tls_files: tls.ClientFiles | None = None,
    ) -> None:
        """`make_hello(acked_seq)` builds the encoded Hello for a new session; `tls_files` turn on (m)TLS.

        `target` is one address or several, comma-separated (`cli.addresses`).
        """
        self.targets = cli.split_addresses(target)
        self.target = self.targets[0]
        self.node_id = node_id
        self.boot_id = boot_id
        self.make_hello = make_hello
        self.batches = batches
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._channel = channel
        self.tls_files = tls_files
        self._wake = asyncio.Event()
        self._resume_at = 0.0
        self.connected = False
        self.up = asyncio.Event()  # set at the first session's first Ack, never cleared
        self.sessions_total = 0
        self.rejected_samples_total = 0
        self.redirects_total = 0  # sessions moved to the owner a standby (or its lease) named
        self._retry_now = asyncio.Event()
        self._moved = asyncio.Event()  # set by owner_is: the session's controller is no longer the owner
        self._moved_to = ""
        self.last_error = ""
        self._leaving = False  # goodbye() asked: end the stream as a stop
        self._session_ended = asyncio.Event()

    def wake(self) -> None:
        """Tell the sender a new batch is in the buffer."""
        self._wake.set()

    async def run(self) -> None:
        """Keep a session up until cancelled."""
        # gRPC's own connection backoff (1 s growing to 120 s) would hold new sessions back long
        # after the controller is back, and it adds to ours: keep it short (our jittered backoff
        # spreads the sessions; the channel's only re-dials the TCP connection)
        cap_ms = int(min(self.backoff_cap_s, 2.0) * 1000)
        options = [
            *CHANNEL_OPTIONS,
            ("grpc.initial_reconnect_backoff_ms", min(500, cap_ms)),
            ("grpc.max_reconnect_backoff_ms", cap_ms),
        ]
        channels: dict[str, grpc.aio.Channel] = {}
        attempt = 0
        untried = len(self.targets) - 1  # candidates not yet tried since the last success or backoff
        try:
            while True:
                if self._moved_to:  # the shard's lease named another candidate (owner_is)
                    self.target, self._moved_to = self._moved_to, ""
                channel = self._channel or channels.get(self.target)
                if channel is None:
                    channel = channels[self.target] = tls.secure_channel(self.target, self.tls_files, options)
                stream = channel.stream_stream(
                    STREAM_METHOD,
                    request_serializer=None,  # batches are encoded once, when sampled
                    response_deserializer=pb.ControllerMessage.FromString,
                )
                redirected = False
                try:
                    await self._session(stream)
                    raise StreamClosedError  # noqa: TRY301 - a normal end still means reconnect
                except* grpc.aio.AioRpcError as group:
                    exc = group.exceptions[0]
                    assert isinstance(exc, grpc.aio.AioRpcError)  # noqa: S101 - narrows the type: holds by construction
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        self._lost(f"{exc.code().name}: {exc.details()}")
                    redirected = self._next_target(exc)
                    if not redirected and exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        self._lost(f"{exc.code().name}: {exc.details()}")
                except* StreamClosedError:
                    self._lost("controller closed the stream")
                    self._rotate()
                except* OwnerMovedError:
                    log.info(
                        "node %s: the shard's owner is now %s; leaving %s",
                        self.node_id,
                        self._moved_to,
                        self.target,
                        extra={"node_id": self.node_id},
                    )
                    self.redirects_total += 1  # the next session goes there (the loop's first step)
                    redirected = True
                if self.connected:
                    attempt = 0
                    untried = len(self.targets) - 1
                self.connected = False
                if redirected or untried > 0:
                    # the named owner, or the next candidate of this round: at once (jittered); the
                    # backoff grows only once every candidate has failed in turn
                    untried -= 0 if redirected else 1
                    delay = self.rng.uniform(0.0, REDIRECT_MAX_S)
                else:
                    untried = len(self.targets) - 1
                    delay = backoff.delay_s(
                        attempt,
                        base_s=self.backoff_base_s,
                        cap_s=self.backoff_cap_s,
                        uniform01=self.rng.random(),
                    )
                    attempt += 1
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):  # an owner's lease on the bus cuts the wait short
                    await asyncio.wait_for(self._retry_now.wait(), delay)
        finally:
            for channel in channels.values():
                await channel.close(None)

    def owner_is(self, address: str) -> None:
        """The shard's owner says (in its lease on the bus) that it is at `address`: the next
        session goes there at once, and a session to another candidate (a deposed owner, which may
        be frozen and never answer again) ends. An address not in the targets is ignored.
        """
        owner = self._candidate(address)
        if not owner:
            return
        if self.connected:
            if owner != self.target:  # the one we stream to was deposed (frozen, cut off): leave it now
                self._moved_to = owner
                self._moved.set()
            return
        if owner != self.target:
            self.target = owner
            self.redirects_total += 1
        self._retry_now.set()

    def _candidate(self, address: str) -> str:
        """`address` as the targets spell it, when it is one of them; '' otherwise (never dialled)."""
        try:
            owner = cli.address(address)
        except argparse.ArgumentTypeError:
            return ""
        return owner if owner in self.targets else ""

    def _rotate(self) -> None:
        """The next target in turn (with one target, the same)."""
        self.target = self.targets[(self.targets.index(self.target) + 1) % len(self.targets)]

    def _next_target(self, exc: grpc.aio.AioRpcError) -> bool:
        """Choose the next session's target after `exc`; True when a standby named the owner."""
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            pairs = cast("list[tuple[str, str]]", list(exc.trailing_metadata() or ()))  # the stubs lag grpc.aio
            named = next((str(v) for k, v in pairs if k == OWNER_METADATA), "")
            owner = self._candidate(named)
            if owner and owner != self.target:
                log.info(
                    "node %s: %s is a standby; following the owner at %s",
                    self.node_id,
                    self.target,
                    owner,
                    extra={"node_id": self.node_id},
                )
                self.target = owner
                self.redirects_total += 1
                return True
            if named and not owner:
                log.warning(
                    "node %s: %s names %s as the owner, which is not in --controller; not dialling it",
                    self.node_id,
                    self.target,
                    named,
                    extra={"node_id": self.node_id},
                )
        self._rotate()
        return False

    async def goodbye(self, timeout_s: float = 2.0) -> None:
        """End the session as a stop, not a loss: close the sending side after the batch in flight,
        so that the controller shows the node offline at once, and wait (at most `timeout_s`)
        for the controller to end its side. Call before cancelling `run`.
        """
        if not self.connected:
            return
        self._leaving = True
        self._session_ended.clear()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._session_ended.wait()

    def _lost(self, reason: str) -> None:
        if self._leaving:
            return  # our own goodbye, not a loss
        if reason != self.last_error or self.connected:
            log.warning(
                "node %s: stream to %s lost: %s", self.node_id, self.target, reason, extra={"node_id": self.node_id}
            )
        self.last_error = reason

    async def _session(self, stream: Stream) -> None:
        self._moved.clear()
        call = stream(None)
        try:
            await call.write(self.make_hello(self.batches.acked_seq))
            first = await call.read()
            if first is EOF:
                raise StreamClosedError
            self._handle(cast("pb.ControllerMessage", first))
            self.sessions_total += 1
            if not self.connected:
                log.info("node %s: streaming to %s", self.node_id, self.target, extra={"node_id": self.node_id})
            self.connected = True
            self.up.set()
            self.last_error = ""
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._send(call), name=f"link[{self.node_id}].tx")
                tg.create_task(self._receive(call), name=f"link[{self.node_id}].rx")
                tg.create_task(self._until_moved(), name=f"link[{self.node_id}].owner")
        finally:
            call.cancel()
            self.batches.mark_sent(0)  # the next stream resends from the last Ack
            self._session_ended.set()

    def _handle(self, msg: pb.ControllerMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "ack":
            ack = msg.ack
            if ack.boot_id == self.boot_id:
                self.batches.ack(ack.acked_seq)
            if ack.rejected_samples:
                self.rejected_samples_total += ack.rejected_samples
                log.warning(
                    "node %s: controller rejected %d sample(s) of batch %d: %s",
                    self.node_id,
                    ack.rejected_samples,
                    ack.batch_seq,
                    ack.rejection,
                    extra={"node_id": self.node_id, "seq": ack.batch_seq},
                )
        elif kind == "throttle":
            self._resume_at = time.monotonic() + msg.throttle.retry_after_ms / 1000.0
            log.info(
                "node %s: throttled for %d ms",
                self.node_id,
                msg.throttle.retry_after_ms,
                extra={"node_id": self.node_id},
            )

    async def _until_moved(self) -> None:
        await self._moved.wait()
        raise OwnerMovedError

    async def _receive(self, call: Call) -> None:
        while True:
            msg = await call.read()
            if msg is EOF:
                raise StreamClosedError
            self._handle(cast("pb.ControllerMessage", msg))

    async def _send(self, call: Call) -> None:
        sent = self.batches.acked_seq
        while True:
            self._wake.clear()
            if self._leaving:
                await call.done_writing()
                return
            pending = list(self.batches.after(sent))
            if not pending:
                await self._wake.wait()
                continue
            for seq, payload in pending:
                pause_s = self._resume_at - time.monotonic()
                if pause_s > 0:
                    await asyncio.sleep(pause_s)
                self.batches.mark_sent(seq)  # in flight from now: a full buffer drops a newer one
                await call.write(payload)
                sent = seq
