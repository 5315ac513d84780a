"""Ingest rules: Hello and Batch in, what to store and what to answer out.

Theory of operation. Each stream has a `StreamState`. The first message must be a Hello: it
(re)registers the node's devices and says which seq the agent last saw acknowledged. Each Batch is
then checked in two tiers:

* protocol violations end the stream (`errors.ProtocolViolation`, with the gRPC code):
  a Batch before Hello or a second Hello (FAILED_PRECONDITION), a seq that does not increase on the
  stream or is 0, columns of the wrong length (INVALID_ARGUMENT), too many rows (RESOURCE_EXHAUSTED);
* bad values are a partial success (OTLP): rows with NaN/inf, negative quantities, a utilisation
  above 1, an unknown device or vendor, a repeated device, or a bad timestamp are dropped and
  counted by reason; the Ack names the first one (field and value); the good rows are stored.

Duplicates (a seq at or below the node's acked seq for the same boot, as after a reconnect) are
dropped and re-acknowledged. A seq above acked + 1 is a gap: batches the agent dropped before
sending them; counted, then acked past. All of it vectorised over the rows of a batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.controller.core import model, registry, ring
from xpuctl.controller.errors import ProtocolViolation

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# rejection reasons, in the order rows are checked (a row counts under its first reason)
REASONS: tuple[str, ...] = (
    "unknown_device",
    "unknown_vendor",
    "duplicate_device",
    "bad_timestamp",
    "bad_health",
    "not_finite",
    "negative",
    "out_of_range",
    "implausible_power",
    "implausible_temperature",
    "timestamp_out_of_range",
)

_NONNEG = np.array([name not in ("temperature_c", "memory_temperature_c") for name in model.METRICS], dtype=bool)
_MIN_TEMP_C = -273.15
_UTIL = model.M["utilization"]
_POWER = model.M["power_w"]
_TEMPS = [model.M["temperature_c"], model.M["memory_temperature_c"]]
_LOWER = np.where(_NONNEG, 0.0, _MIN_TEMP_C)  # per metric, the lowest value a good row may carry
# per metric, the highest value a good row may carry whatever the device: utilisation is a ratio, and
# the ring store keeps gauges as float32, which would turn anything larger into infinity. Power and
# temperatures have their own, lower bounds (implausible_power, implausible_temperature).
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_OUT_OF_RANGE = np.full(model.N_METRICS, _FLOAT32_MAX)
_OUT_OF_RANGE[_UTIL] = 1.0
_OUT_OF_RANGE[[_POWER, *_TEMPS]] = np.inf


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes beyond which a message ends its stream with RESOURCE_EXHAUSTED."""

    max_message_bytes: int = 4 << 20
    max_rows_per_batch: int = 4096
    max_devices_per_node: int = 1024
    # Seqs rise by 1 per batch within a boot, also while an agent drops what it cannot send, so a
    # gap can be long; this one is not a drop but a broken or hostile sender (and would overflow
    # the gap counters): 2**40 batches is 35,000 years at 1 Hz.
    max_seq_jump: int = 1 << 40
    # One batch with 400,000 error events held the event loop for 0.33 s (issue 18.10). A device
    # has a handful of events per tick; what is past these bounds is counted and dropped.
    max_error_events_per_batch: int = 256
    max_error_events_per_device: int = 8
    max_error_text_chars: int = 512
    # A Hello for a node id whose other boot streamed less than this ago is a second machine with
    # the same id (issue 18.8): refused. Longer silent, the old one is gone and the new boot takes over.
    takeover_after_s: float = 5.0
    # Memory grows with nodes and device ids and is not given back (issue 18.7): bound both, and
    # how often one node may say Hello (an agent reconnects a few times a minute at most).
    max_nodes: int = 20_000
    max_devices: int = 100_000
    max_hellos_per_node_per_min: int = 30
    # Values no device produces, rejected at ingest (issue 18.3: one 700,000 W reading, a mW value
    # read as W, floored the whole cluster): power above factor x the device's declared maximum
    # plus a margin (or above an absolute bound when it declares none), temperatures above a bound,
    # and samples stamped too far in the future or the past. A resent backlog is at most the
    # agents' buffer old; the past bound is far beyond it.
    implausible_power_factor: float = 2.0
    implausible_power_margin_w: float = 200.0
    max_power_w: float = 5_000.0
    max_temperature_c: float = 200.0
    max_future_s: float = 300.0
    max_past_s: float = 7 * 86_400.0
    # Acks are cumulative (acked_seq is the highest contiguous seq stored), so one answers every
    # batch before it: each Ack written costs the controller about as much CPU as a batch it
    # reads (issue 13). A stream is answered at once when there is news (its Hello, a rejection,
    # a duplicate), otherwise after `ack_every_batches` batches or `ack_interval_s`, whichever
    # comes first, and when the agent ends the stream. 0 and 1 answer every batch.
    ack_every_batches: int = 16
    ack_interval_s: float = 5.0
    # A batch sampled longer ago than this is a backlog an agent replays after a reconnect: its Ack
    # goes at once, so that the agent's buffer frees as fast as it drains (a full buffer drops its
    # oldest batch, even one in flight), and the adapter stores it without waiting for a step.
    backlog_after_s: float = 2.0


class HelloFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a Hello says, decoded."""

    node_id: str
    boot_id: str
    agent_version: str
    devices: list[model.DeviceInfo]
    labels: dict[str, str]
    interval_s: float
    acked_seq: int


class BatchColumns(msgspec.Struct, kw_only=True):
    """A Batch as arrays: `values` (rows, N_METRICS) with NaN where `present` is false."""

    seq: int
    dropped_total: int
    device: I64
    timestamp_ns: I64
    health: I64
    values: F64
    present: npt.NDArray[np.bool_]
    health_reason: list[str]
    errors: list[tuple[int, str, str]]
    errors_dropped: int = 0  # error events past max_error_events_per_batch, not decoded


class Frame(msgspec.Struct, kw_only=True):
    """Many batches decoded together (one step of the adapter's ingest batcher, issue 13): batch i
    has rows `starts[i]:starts[i + 1]` of the row arrays, laid out as in `BatchColumns`.
    """

    seq: list[int]
    dropped_total: list[int]
    starts: I64
    device: I64
    timestamp_ns: I64
    health: I64
    values: F64
    present: npt.NDArray[np.bool_]
    health_reason: list[list[str]]
    errors: list[list[tuple[int, str, str]]]
    errors_dropped: list[int]

    @classmethod
    def of(cls, batches: list[BatchColumns]) -> Frame:
        """Batches as one frame."""
        starts = np.zeros(len(batches) + 1, dtype=np.int64)
        np.cumsum([b.device.size for b in batches], out=starts[1:])
        return cls(
            seq=[b.seq for b in batches],
            dropped_total=[b.dropped_total for b in batches],
            starts=starts,
            device=np.concatenate([b.device for b in batches]),
            timestamp_ns=np.concatenate([b.timestamp_ns for b in batches]),
            health=np.concatenate([b.health for b in batches]),
            values=np.concatenate([b.values for b in batches]),
            present=np.concatenate([b.present for b in batches]),
            health_reason=[b.health_reason for b in batches],
            errors=[b.errors for b in batches],
            errors_dropped=[b.errors_dropped for b in batches],
        )

    def batch(self, i: int) -> BatchColumns:
        """Batch `i` alone."""
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        return BatchColumns(
            seq=self.seq[i],
            dropped_total=self.dropped_total[i],
            device=self.device[a:b],
            timestamp_ns=self.timestamp_ns[a:b],
            health=self.health[a:b],
            values=self.values[a:b],
            present=self.present[a:b],
            health_reason=self.health_reason[i],
            errors=self.errors[i],
            errors_dropped=self.errors_dropped[i],
        )


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What to send back: the Ack fields."""

    boot_id: str
    acked_seq: int
    batch_seq: int = 0
    rejected: int = 0
    rejection: str = ""
    duplicate: bool = False
    catching_up: bool = False  # the batch is part of a backlog (Limits.backlog_after_s): answer at once


ErrorEvent = tuple[int, str, int, str, str]
"""An error event as stored: (timestamp_ns, device uuid, slot, vendor code, text)."""


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """What one batch left in the store: the Ack's fields, and for the critical path the slots
    of the devices it stored and the error events it carried.
    """

    answer: Answer
    slots: I64 = msgspec.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    errors: list[ErrorEvent] = msgspec.field(default_factory=list)


class FrameStored(msgspec.Struct, frozen=True, kw_only=True):
    """What a frame left in the store: each batch's Ack fields, in order, and for the critical
    path the slots of every device stored and the error events.
    """

    answers: list[Answer]
    slots: I64
    errors: list[ErrorEvent]


class StreamState:
    """Per-stream protocol state."""

    def __init__(self) -> None:
        """A stream that has not said Hello yet."""
        self.node: registry.NodeState | None = None
        self.peer = ""  # the client's address, set by the adapter (for messages)
        self.boot_id = ""
        self.epoch = 0
        self.last_seq = 0
        self.unanswered = 0  # batches stored since the last Ack written
        self.answered_ns = 0  # when the last Ack was written


class Counters:
    """Ingest counters, for GetSummary and /metrics."""

    def __init__(self) -> None:
        """All zero."""
        self.batches_total = 0
        self.samples_total = 0
        self.duplicate_batches_total = 0
        self.gap_batches_total = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.error_events_total = 0

    def reject(self, reason: str, n: int = 1) -> None:
        """Count `n` rejections for `reason`."""
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + n


class LatencyWindow:
    """The most recent ingest latencies (ms) in a fixed ring, for p50/p99."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        """Keep the newest `capacity` values."""
        self.values = np.zeros(capacity)
        self.n = 0

    def record(self, latencies_ms: F64) -> None:
        """Add values (vectorised)."""
        k = latencies_ms.size
        cap = self.values.size
        if k >= cap:
            self.values[:] = latencies_ms[-cap:]
        else:
            idx = (self.n + np.arange(k)) % cap
            self.values[idx] = latencies_ms
        self.n += k

    def quantiles(self) -> tuple[float, float]:
        """(p50, p99) of what the window holds, or (0, 0) when empty."""
        filled = self.values[: min(self.n, self.values.size)]
        if filled.size == 0:
            return 0.0, 0.0
        p50, p99 = np.percentile(filled, [50, 99])
        return float(p50), float(p99)

    def reset(self) -> None:
        """Forget every value."""
        self.n = 0


class Ingest:
    """Applies Hellos and Batches to the registry and the ring store."""

    MAX_RECENT_ERRORS = 1000

    def __init__(
        self,
        reg: registry.Registry,
        store: ring.RingStore,
        *,
        limits: Limits | None = None,
    ) -> None:
        """Wire the rules to the state they change."""
        self.registry = reg
        self.store = store
        self.limits = limits or Limits()
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.recent_errors: list[ErrorEvent] = []
        # per metric, the highest value a good row may carry; power is bounded per device as well
        # (`_plausible_power_w`)
        self._upper = _OUT_OF_RANGE.copy()
        self._upper[_TEMPS] = self.limits.max_temperature_c

    @staticmethod
    def violation(code: str, reason: str, message: str, *, node_id: str = "") -> ProtocolViolation:
        """The error that ends the stream; the adapter counts it under `reason` when it ends it."""
        return ProtocolViolation(code, reason, message, node_id=node_id)

    # -- Hello -------------------------------------------------------------------------------------

    def hello(self, stream: StreamState, facts: HelloFacts, now_ns: int) -> Answer:
        """Register the node's devices; answer with what is stored for this boot.

        Raises:
            ProtocolViolation: second Hello, bad ids, or too many devices.
        """
        if stream.node is not None:
            raise self.violation(
                "FAILED_PRECONDITION", "second_hello", "a second Hello on one stream; open a new stream"
            )
        if not model.ID_PATTERN.match(facts.node_id):
            raise self.violation(
                "INVALID_ARGUMENT",
                "bad_node_id",
                f"node_id {facts.node_id!r} is not 1-128 of [A-Za-z0-9._-] starting alphanumeric",
            )
        if not facts.boot_id:
            raise self.violation("INVALID_ARGUMENT", "bad_boot_id", "boot_id is empty; send a UUID per agent start")
        if len(facts.devices) > self.limits.max_devices_per_node:
            raise self.violation(
                "RESOURCE_EXHAUSTED",
                "oversize",
                f"Hello declares {len(facts.devices)} devices; the limit is "
                f"{self.limits.max_devices_per_node} per node",
            )
        self._check_room(facts, now_ns)
        self._check_owners(facts)
        node = self.registry.node(facts.node_id)
        node.hello_ns.append(now_ns)
        if (
            node.streams > 0
            and node.boot_id
            and node.boot_id != facts.boot_id
            and now_ns - node.last_seen_ns < self.limits.takeover_after_s * 1e9
        ):
            raise self.violation(
                "ALREADY_EXISTS",
                "duplicate_node",
                f"node_id {facts.node_id!r} is streaming from {node.peer or 'another peer'} (boot "
                f"{node.boot_id[:8]}, last batch {(now_ns - node.last_seen_ns) / 1e9:.1f} s ago); two machines "
                "cannot share a node id: give each agent its own --node-id",
                node_id=facts.node_id,
            )
        if node.boot_id != facts.boot_id:
            node.boot_id = facts.boot_id
            node.acked_seq = facts.acked_seq  # a previous controller holds what came before
            node.first_seq = 0
            node.batches_stored = node.duplicate_batches = node.gap_batches = 0
            node.dropped_total = 0
        node.agent_version = facts.agent_version
        node.labels = dict(facts.labels)
        node.interval_s = facts.interval_s if facts.interval_s > 0 else 1.0
        node.last_hello_ns = now_ns
        node.left_ns = 0
        problems = self.registry.register(node, facts.devices, now_ns, keep_gone=self.limits.max_devices_per_node)
        self.store.ensure_capacity(len(self.registry))
        if problems:
            self.counters.reject("unknown_vendor", sum("unknown vendor" in p for p in problems.values()))
        node.stream_epoch += 1
        node.streams += 1
        node.peer = stream.peer
        stream.node = node
        stream.boot_id = facts.boot_id
        stream.epoch = node.stream_epoch
        first = next(iter(problems.values()), "")
        return Answer(boot_id=node.boot_id, acked_seq=node.acked_seq, rejected=len(problems), rejection=first)

    def _check_owners(self, facts: HelloFacts) -> None:
        """Refuse a Hello that declares another node's device (issue 19.1).

        A device id belongs to the node that registered it until its slot is released: by an
        operator (ReleaseDevice, `xpuctl release`), or after it was gone from that node's Hello
        (or the node silent) for `forget_after_s`. Without this rule a node could take over
        another's devices: their history, their commands and their share of the budget.

        Raises:
            ProtocolViolation: PERMISSION_DENIED naming the device and its owner.
        """
        reg = self.registry
        for d in facts.devices:
            slot = reg.slot_of_uuid.get(d.uuid)
            if slot is None:
                continue
            owner = reg.node_of_slot[slot]
            if owner and owner != facts.node_id and owner in reg.nodes:
                raise self.violation(
                    "PERMISSION_DENIED",
                    "device_owned",
                    f"device {d.uuid!r} belongs to node {owner!r}; node {facts.node_id!r} cannot declare it. "
                    f"If the card moved, an operator releases it (xpuctl release --device {d.uuid} --reason ...); "
                    "it is also released some time after it left its node's Hello",
                    node_id=facts.node_id,
                )

    def _check_room(self, facts: HelloFacts, now_ns: int) -> None:
        """Refuse a Hello that would pass the bounds on nodes, device ids or Hellos per minute.

        Raises:
            ProtocolViolation: RESOURCE_EXHAUSTED, naming the bound and the fix.
        """
        lim, reg = self.limits, self.registry
        known = reg.nodes.get(facts.node_id)
        if known is None and len(reg.nodes) >= lim.max_nodes:
            raise self.violation(
                "RESOURCE_EXHAUSTED",
                "too_many_nodes",
                f"this controller holds {len(reg.nodes)} nodes, its limit; node {facts.node_id!r} is refused: "
                "spread the nodes over shards, or raise the limit",
                node_id=facts.node_id,
            )
        new_ids = sum(1 for d in facts.devices if d.uuid not in reg.slot_of_uuid)
        if reg.in_use() + new_ids > lim.max_devices:
            raise self.violation(
                "RESOURCE_EXHAUSTED",
                "too_many_devices",
                f"Hello of node {facts.node_id!r} adds {new_ids} device ids to {reg.in_use()}; the limit is "
                f"{lim.max_devices}: device ids must be stable across restarts",
                node_id=facts.node_id,
            )
        if known is not None:
            minute_ago = now_ns - 60 * 10**9
            known.hello_ns = [t for t in known.hello_ns if t > minute_ago]
            if len(known.hello_ns) >= lim.max_hellos_per_node_per_min:
                raise self.violation(
                    "RESOURCE_EXHAUSTED",
                    "hello_rate",
                    f"node {facts.node_id!r} said Hello {len(known.hello_ns)} times in the last minute; "
                    f"the limit is {lim.max_hellos_per_node_per_min}: back off before reconnecting",
                    node_id=facts.node_id,
                )

    def answer_now(self, stream: StreamState, answer: Answer, now_ns: int) -> bool:
        """Whether to write `answer` now, or let a later Ack (cumulative) carry it; see
        `Limits.ack_every_batches`. The caller writes the last one held back when the stream ends.
        """
        lim = self.limits
        stream.unanswered += 1
        due = (
            answer.batch_seq == 0
            or answer.rejected > 0
            or answer.duplicate
            or answer.catching_up
            or stream.unanswered >= lim.ack_every_batches
            or now_ns - stream.answered_ns >= lim.ack_interval_s * 1e9
        )
        if due:
            stream.unanswered = 0
            stream.answered_ns = now_ns
        return due

    def goodbye(self, stream: StreamState, now_ns: int) -> None:
        """The agent ended its stream itself (it is stopping): its node is offline at once, not
        stale and then offline when the silence has lasted long enough.
        """
        if stream.node is not None and stream.node.streams == 1:
            stream.node.left_ns = now_ns

    def stream_closed(self, stream: StreamState) -> None:
        """Forget a stream."""
        if stream.node is not None:
            stream.node.streams -= 1
            stream.node = None

    # -- Batch -------------------------------------------------------------------------------------

    def batch(self, stream: StreamState, cols: BatchColumns, now_ns: int) -> Stored:
        """Validate and store one batch: `admit`, then `store_frame` of it alone.

        Returns:
            The answer, and what was stored (nothing for a duplicate).

        Raises:
            ProtocolViolation: see the module docstring.
        """
        node = self.admit(stream, cols.seq, cols.device.size, cols.dropped_total, now_ns)
        if isinstance(node, Answer):
            return Stored(answer=node)  # a duplicate
        done = self.store_frame([node], Frame.of([cols]), now_ns)
        return Stored(answer=done.answers[0], slots=done.slots, errors=done.errors)

    def admit(
        self, stream: StreamState, seq: int, rows: int, dropped_total: int, now_ns: int
    ) -> Answer | registry.NodeState:
        """A batch's protocol checks, and its duplicate and gap bookkeeping, before its rows are
        validated and stored (`store_frame`, which takes many admitted batches at once and moves
        each node's acked_seq). At most one admitted batch of a node may wait for `store_frame`
        (the adapter reads a stream's next message once its last is stored, and a Hello stores
        what waits first), so the checks against acked_seq here are exact.

        Returns:
            The answer to a duplicate (nothing to store), else the node to store the batch for.

        Raises:
            ProtocolViolation: see the module docstring.
        """
        node = stream.node
        if node is None:
            raise self.violation(
                "FAILED_PRECONDITION",
                "batch_before_hello",
                f"Batch seq {seq} before Hello; open the stream with Hello",
            )
        if node.stream_epoch != stream.epoch:
            raise self.violation("ABORTED", "superseded", f"node {node.node_id!r} opened a newer stream; this one ends")
        if seq == 0:
            raise self.violation("INVALID_ARGUMENT", "bad_seq", "Batch seq 0; seqs start at 1")
        if seq <= stream.last_seq:
            raise self.violation(
                "INVALID_ARGUMENT",
                "seq_backwards",
                f"Batch seq went backwards within boot {stream.boot_id}: {seq} after {stream.last_seq}",
            )
        if rows > self.limits.max_rows_per_batch:
            raise self.violation(
                "RESOURCE_EXHAUSTED",
                "oversize",
                f"Batch seq {seq} has {rows} rows; the limit is {self.limits.max_rows_per_batch}",
            )
        if seq - node.acked_seq - 1 > self.limits.max_seq_jump:
            raise self.violation(
                "INVALID_ARGUMENT",
                "seq_jump",
                f"Batch seq {seq} jumps {seq - node.acked_seq - 1} batches past the last stored seq "
                f"{node.acked_seq} of boot {stream.boot_id}; no sender drops more than "
                f"{self.limits.max_seq_jump}: start a new boot_id",
            )
        stream.last_seq = seq
        node.last_seen_ns = now_ns
        node.dropped_total = dropped_total
        self.counters.batches_total += 1
        if seq <= node.acked_seq:
            node.duplicate_batches += 1
            self.counters.duplicate_batches_total += 1
            return Answer(boot_id=node.boot_id, acked_seq=node.acked_seq, batch_seq=seq, duplicate=True)
        gap = seq - node.acked_seq - 1
        if gap:
            node.gap_batches += gap
            self.counters.gap_batches_total += gap
        return node

    def store_frame(self, nodes: list[registry.NodeState], frame: Frame, now_ns: int) -> FrameStored:
        """Validate and store admitted batches, batch i from `nodes[i]` (a node at most once).

        Every row of the frame is checked at once (`_good_rows`, a dozen array operations for
        any number of batches: nearly every batch is good, issue 13); the good batches are stored
        in one append. A batch with a failing row is checked again on its own (`_check_rows`: which
        rows fail and why) and its good rows are stored after the others.
        """
        slots, whole = self._good_rows(nodes, frame, now_ns)
        starts = frame.starts
        m = len(nodes)
        # the batches of the rows that failed (usually none): the last start at or before each row
        partial = np.unique(np.searchsorted(starts, np.flatnonzero(~whole), side="right") - 1).tolist()
        good = whole.copy()
        rejected, texts = [0] * m, [""] * m
        for i in partial:
            a, b = int(starts[i]), int(starts[i + 1])
            whole[a:b] = False
            mask, rejected[i], texts[i] = self._check_rows(nodes[i], frame.batch(i), now_ns)
            good[a:b] = mask
        self._append(slots, frame, np.flatnonzero(whole))
        for i in partial:
            a = int(starts[i])
            self._append(slots, frame, a + np.flatnonzero(good[a : int(starts[i + 1])]))
        errors = self._note_health_and_errors(frame, good, slots)
        n_good = int(np.count_nonzero(good))
        self.counters.samples_total += n_good
        if n_good:
            self.latency.record((now_ns - frame.timestamp_ns[good]) / 1e6)
        answers = []
        for node, seq, r, t, late in zip(nodes, frame.seq, rejected, texts, self._backlog(frame, now_ns), strict=True):
            if node.first_seq == 0:
                node.first_seq = seq
            node.acked_seq = seq
            node.batches_stored += 1
            answers.append(
                Answer(boot_id=node.boot_id, acked_seq=seq, batch_seq=seq, rejected=r, rejection=t, catching_up=late)
            )
        return FrameStored(answers=answers, slots=slots[good], errors=errors)

    def _backlog(self, frame: Frame, now_ns: int) -> list[bool]:
        """Per batch: whether its first row was sampled before `Limits.backlog_after_s` ago."""
        n_rows = frame.device.size
        if not n_rows:
            return [False] * len(frame.seq)
        first = frame.timestamp_ns[np.minimum(frame.starts[:-1], n_rows - 1)]
        late: list[bool] = ((np.diff(frame.starts) > 0) & (first < self.backlog_before_ns(now_ns))).tolist()
        return late

    def backlog_before_ns(self, now_ns: int) -> int:
        """A batch sampled before this is part of a backlog (`Limits.backlog_after_s`)."""
        return now_ns - int(self.limits.backlog_after_s * 1e9)

    def _good_rows(
        self, nodes: list[registry.NodeState], frame: Frame, now_ns: int
    ) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Per row: its device's slot (-1: unknown or rejected at Hello), and whether it passes
        every check of `_check_rows` (never a row `_check_rows` would reject). A device twice in
        the frame fails here on every row of it, and `_check_rows` says which is the repeat.
        """
        m, n_rows = len(nodes), frame.device.size
        sizes = np.fromiter((node.slots.size for node in nodes), np.int64, m)
        if not n_rows or not sizes.sum():
            return np.full(n_rows, -1, dtype=np.int64), np.zeros(n_rows, dtype=bool)
        msg_of_row = np.repeat(np.arange(m), np.diff(frame.starts))
        dev = frame.device
        known = (dev >= 0) & (dev < sizes[msg_of_row])
        # every node's row -> slot table end to end: row r of batch i is entry offset[i] + device
        at = np.minimum((np.cumsum(sizes) - sizes)[msg_of_row] + np.where(known, dev, 0), int(sizes.sum()) - 1)
        slots = np.where(known, np.concatenate([node.slots for node in nodes])[at], -1)
        declared = np.concatenate([node.declared_max_w for node in nodes])[at]
        ok = slots >= 0
        oldest, newest = self._stamp_window(now_ns)
        stamps, health = frame.timestamp_ns, frame.health
        good = ok & (stamps >= max(1, oldest)) & (stamps <= newest) & (health >= 1) & (health <= 4)
        vals = frame.values
        with np.errstate(invalid="ignore"):  # NaN: outside
            inside = (vals >= _LOWER) & (vals <= self._upper)
            inside[:, _POWER] &= vals[:, _POWER] <= self._plausible_power_w(declared)
        good &= (inside | ~frame.present).all(axis=1)
        seen = np.bincount(slots[ok], minlength=1)
        good &= ~(ok & (seen[np.maximum(slots, 0)] > 1))
        return slots, good

    def _append(self, slots: I64, frame: Frame, rows: I64) -> None:
        """Store `rows` of the frame, their health code in the store's HEALTH column."""
        if not rows.size:
            return
        out = np.empty((rows.size, model.N_STORED))
        out[:, : model.N_METRICS] = frame.values[rows]
        out[:, model.HEALTH] = frame.health[rows]
        self.store.append(slots[rows], frame.timestamp_ns[rows], out)

    def _note_health_and_errors(self, frame: Frame, good: npt.NDArray[np.bool_], slots: I64) -> list[ErrorEvent]:
        """Keep the good rows' health reasons; return (and remember) their error events."""
        reasons = self.registry.health_reason
        why: Iterable[str] = itertools.repeat("")
        if any(frame.health_reason):  # row order: a device in two batches keeps the later reason
            rows = np.diff(frame.starts).tolist()
            why = itertools.compress(
                itertools.chain.from_iterable(r or [""] * k for r, k in zip(frame.health_reason, rows, strict=True)),
                good.tolist(),
            )
        for slot, reason in zip(slots[good].tolist(), why, strict=False):
            reasons[slot] = reason
        stored: list[ErrorEvent] = []
        over = sum(frame.errors_dropped)
        for i, events in enumerate(frame.errors):
            if not events:
                continue
            a = int(frame.starts[i])
            per_row: dict[int, int] = {}
            for row, code, text in events:
                if not good[a + row]:
                    continue
                per_row[row] = per_row.get(row, 0) + 1
                if per_row[row] > self.limits.max_error_events_per_device:
                    over += 1
                    continue
                self.counters.error_events_total += 1
                slot = int(slots[a + row])
                stored.append((int(frame.timestamp_ns[a + row]), self.registry.infos[slot].uuid, slot, code, text))
        if over:
            self.counters.reject("error_events_over_limit", over)
        if stored:
            self.recent_errors.extend(stored)
            del self.recent_errors[: -self.MAX_RECENT_ERRORS]
        return stored

    def _plausible_power_w(self, declared_max_w: F64) -> F64:
        """The highest plausible power of devices that declared these maxima (NaN: none declared)."""
        lim = self.limits
        bound = np.where(
            np.isfinite(declared_max_w),
            lim.implausible_power_factor * declared_max_w + lim.implausible_power_margin_w,
            lim.max_power_w,
        )
        return np.minimum(bound, _FLOAT32_MAX)  # what the store's float32 holds

    def _stamp_window(self, now_ns: int) -> tuple[int, int]:
        """(oldest, newest) sample timestamp a good row may carry."""
        lim = self.limits
        return now_ns - int(lim.max_past_s * 1e9), now_ns + int(lim.max_future_s * 1e9)

    def _check_rows(
        self, node: registry.NodeState, cols: BatchColumns, now_ns: int
    ) -> tuple[npt.NDArray[np.bool_], int, str]:
        """Per row: the first failing check (0 = good); counts; the first reason's text."""
        k = cols.device.size
        reason = np.zeros(k, dtype=np.int64)

        def mark(code: int, mask: npt.NDArray[np.bool_]) -> None:
            fresh = mask & (reason == 0)
            reason[fresh] = code

        n_rows = node.slots.size
        unknown = cols.device >= n_rows
        mark(1, unknown)
        known_rows = np.where(unknown, 0, cols.device)
        bad_vendor = ~unknown & (node.slots[known_rows] < 0) if n_rows else np.zeros(k, dtype=bool)
        mark(2, bad_vendor)
        if len(set(cols.device.tolist())) < k:  # rare: find the repeats
            _, first_idx = np.unique(cols.device, return_index=True)
            dup = np.ones(k, dtype=bool)
            dup[first_idx] = False
            mark(3, dup)
        mark(4, cols.timestamp_ns <= 0)
        mark(5, (cols.health < 1) | (cols.health > 4))
        present = cols.present
        vals = cols.values
        not_finite = present & ~np.isfinite(vals)
        mark(6, np.asarray(not_finite.any(axis=1)))
        with np.errstate(invalid="ignore"):
            negative = present & ((_NONNEG[None, :] & (vals < 0)) | (~_NONNEG[None, :] & (vals < _MIN_TEMP_C)))
            out_of_range = present & (vals > _OUT_OF_RANGE)
        mark(7, np.asarray(negative.any(axis=1)))
        mark(8, np.asarray(out_of_range.any(axis=1)))
        lim = self.limits
        declared = node.declared_max_w[known_rows] if n_rows else np.full(k, np.nan)
        power_bound = self._plausible_power_w(declared)
        with np.errstate(invalid="ignore"):
            too_much = present[:, _POWER] & (vals[:, _POWER] > power_bound)
            too_hot = (present[:, _TEMPS] & (vals[:, _TEMPS] > lim.max_temperature_c)).any(axis=1)
        mark(9, too_much)
        mark(10, np.asarray(too_hot))
        past_ns, future_ns = self._stamp_window(now_ns)
        mark(11, (cols.timestamp_ns > future_ns) | (cols.timestamp_ns < past_ns))
        good = reason == 0
        rejected = int(k - good.sum())
        if not rejected:
            return good, 0, ""
        counts = np.bincount(reason, minlength=len(REASONS) + 1)
        for code, name in enumerate(REASONS, start=1):
            if counts[code]:
                self.counters.reject(name, int(counts[code]))
        row = int(np.flatnonzero(~good)[0])
        code = int(reason[row])
        dev = int(cols.device[row])
        where = f"row {row} (device {dev})"
        if code == 1:
            text = f"{where}: unknown device {dev}; the Hello declared {n_rows}"
        elif code == 2:
            text = f"{where}: {node.row_problems.get(dev, 'device rejected at Hello')}"
        elif code == 3:
            text = f"{where}: device {dev} appears twice in batch {cols.seq}"
        elif code == 4:
            text = f"{where}: timestamp_ns={int(cols.timestamp_ns[row])} must be > 0"
        elif code == 5:
            text = f"{where}: health={int(cols.health[row])} is not a known Health"
        elif code == 8 and out_of_range[row, _UTIL]:
            text = f"{where}: utilization={float(vals[row, _UTIL])!r} is above 1 (expected a ratio 0..1)"
        elif code == 8:
            m = int(np.flatnonzero(out_of_range[row])[0])
            text = f"{where}: {model.METRICS[m]}={float(vals[row, m])!r} is above {_FLOAT32_MAX:.4g}, more than any device reports"
        elif code == 9:
            text = (
                f"{where}: power_w={float(vals[row, _POWER])!r} is not plausible for a device declared up to "
                f"{float(declared[row])!r} W (above {float(power_bound[row]):.0f} W; a mW value read as W?)"
            )
        elif code == 10:
            text = f"{where}: a temperature above {lim.max_temperature_c:g} C is not plausible"
        elif code == 11:
            skew_s = (int(cols.timestamp_ns[row]) - now_ns) / 1e9
            text = (
                f"{where}: timestamp_ns={int(cols.timestamp_ns[row])} is {abs(skew_s):.0f} s in the "
                f"{'future' if skew_s > 0 else 'past'} of the controller's clock; check the node's clock (NTP)"
            )
        else:
            matrix = not_finite if code == 6 else negative
            m = int(np.flatnonzero(matrix[row])[0])
            what = "is not finite" if code == 6 else "is negative"
            if code == 7 and not _NONNEG[m]:
                what = "is below absolute zero"
            text = f"{where}: {model.METRICS[m]}={float(vals[row, m])!r} {what}"
        return good, rejected, text
