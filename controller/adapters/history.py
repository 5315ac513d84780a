"""History beyond the ring (issue 15.6): 10 s aggregates of every device metric to a time-series
database, VictoriaMetrics' `/api/v1/import/prometheus` (notes/scale-out 2.4).

Every period (10 s by default) the service computes, for each device that sent samples in that
period and for each metric of `/metrics`, the mean, the max and the last value over the period
(counters: the last only), in steps between which batches go on (`aggregate_steps`). The period
goes into a bounded queue; one sender writes it as Prometheus text lines with the `/metrics`
names and labels plus `agg="mean|max|last"`, stamped with the period's end, and posts it, both
in a thread (writing 160,000 lines takes about 0.2 s at 10,000 devices: never on the loop). A slow or dead database fills the queue, and then the
oldest period is dropped and counted (`xpuctl summary` shows it): ingest never waits on it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import struct
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator

import msgspec
import numpy as np
import numpy.typing as npt

from xpuctl.controller import hub
from xpuctl.controller.adapters import metrics
from xpuctl.controller.core import model

log = logging.getLogger("xpu.controller.history")

IMPORT_PATH = "/api/v1/import/prometheus"
REMOTE_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
POST_TIMEOUT_S = 5.0


class Stats(msgspec.Struct, kw_only=True):
    """What the exporter has done since start."""

    url: str
    exported: int = 0  # periods the database accepted
    dropped: int = 0  # periods dropped because the queue was full (the database too slow or gone)
    failed: int = 0  # posts that failed (each is tried again until its period is dropped)
    last_error: str = ""


def check_url(url: str) -> str:
    """The endpoint for a `--history-url`: `http://HOST:PORT` of VictoriaMetrics (its text import),
    or a Prometheus remote-write URL, one whose path ends in `/write` or `/push` (Prometheus's
    `/api/v1/write`, VictoriaMetrics' `/api/v1/write`, Mimir's and Cortex's `/api/v1/push`).

    Raises:
        ValueError: not http(s)://HOST:PORT[/path], naming the value.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"--history-url {url!r}: expected http://HOST:PORT of VictoriaMetrics, or a remote-write URL"
        raise ValueError(msg)
    path = parts.path.rstrip("/")
    if not path.endswith(("/prometheus", "/write", "/push")):
        path += IMPORT_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def remote_write(url: str) -> bool:
    """Whether an endpoint from `check_url` takes Prometheus remote write (else the text import)."""
    return urllib.parse.urlsplit(url).path.endswith(("/write", "/push"))


# -- Prometheus remote write: protobuf (prompb WriteRequest) in a snappy block, written by hand ----
# The wire facts: prometheus/prompb/remote.proto and types.proto (WriteRequest.timeseries = 1;
# TimeSeries.labels = 1, .samples = 2; Label.name = 1, .value = 2; Sample.value = 1 (double),
# .timestamp = 2 (int64, ms)); the snappy block format (google/snappy format_description.txt):
# the uncompressed length as a varint, then elements; a literal of n bytes is tag 0xF4 (61 << 2,
# then n - 1 in 2 little-endian bytes) and the bytes. Literals only: valid snappy, no compression.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _series(labels: list[tuple[str, str]], value: float, stamp_ms: int) -> bytes:
    body = b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(labels))
    sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(stamp_ms & 0xFFFFFFFFFFFFFFFF)
    return _field(1, body + _field(2, sample))


def snappy_literals(data: bytes) -> bytes:
    """`data` as a snappy block of literals (see above)."""
    out = [_varint(len(data))]
    for start in range(0, len(data), 65536):
        chunk = data[start : start + 65536]
        out.append(b"\xf4" + struct.pack("<H", len(chunk) - 1) + chunk)
    return b"".join(out)


class Period:
    """One period's aggregates, computed on the event loop, written out as text off it (`encode`)."""

    def __init__(self, stamp_ms: int, infos: list[model.DeviceInfo], nodes: list[str]) -> None:
        """Empty; `aggregate_steps` fills the columns."""
        self.stamp_ms = stamp_ms
        self.infos, self.nodes = infos, nodes
        # (Prometheus name, extra labels, agg, values per slot, whether the slot has a value)
        self.columns: list[tuple[str, str, str, npt.NDArray[np.float64], npt.NDArray[np.bool_]]] = []
        self.encoded: bytes | None = None
        self.written: bytes | None = None

    def encode_remote_write(self) -> bytes:
        """The period as a snappy-framed prompb WriteRequest (kept, like `encode`)."""
        if self.written is None:
            base = [
                [("hw_id", i.uuid), ("hw_vendor", i.vendor), ("hw_model", i.model), ("xpu_node", node)]
                for i, node in zip(self.infos, self.nodes, strict=True)
            ]
            parts = []
            for name, extra, agg, values, has in self.columns:
                more = [kv.split("=", 1) for kv in extra.split(",") if kv] if extra else []
                fixed = [("__name__", name), ("agg", agg), *((k, v.strip('"')) for k, v in more)]
                parts += [
                    _series(base[s] + fixed, v, self.stamp_ms)
                    for s, v in zip(np.flatnonzero(has).tolist(), values[has].tolist(), strict=True)
                ]
            self.written = snappy_literals(b"".join(parts))
        return self.written

    def encode(self) -> bytes:
        """The Prometheus text lines (kept: a retried post does not format again)."""
        if self.encoded is None:
            labels = [
                f'hw_id="{metrics.escape(i.uuid)}",hw_vendor="{i.vendor}",hw_model="{metrics.escape(i.model)}",'
                f'xpu_node="{metrics.escape(node)}"'
                for i, node in zip(self.infos, self.nodes, strict=True)
            ]
            out: list[str] = []
            for name, extra, agg, values, has in self.columns:
                sep = "," + extra if extra else ""
                out.extend(
                    f'{name}{{{labels[s]}{sep},agg="{agg}"}} {metrics.number(v)} {self.stamp_ms}'
                    for s, v in zip(np.flatnonzero(has).tolist(), values[has].tolist(), strict=True)
                )
            self.encoded = ("\n".join(out) + "\n").encode() if out else b""
        return self.encoded


def aggregate_steps(state: hub.Hub, since_ns: int, now_ns: int, out: list[Period]) -> Iterator[None]:
    """The aggregates of (since_ns, now_ns] into `out` (one Period; none when no device has a
    value), one metric per step: at 10,000 devices a step takes a few milliseconds, and the
    service lets batches in between (the text is written later, in the sender's thread).
    """
    reg, store = state.registry, state.store
    n = len(reg)
    if n == 0:
        return
    slots = np.arange(n, dtype=np.int64)
    # samples a period holds at the fastest interval any node streams at (+1 for the edge)
    fastest = min((node.interval_s for node in reg.nodes.values() if node.interval_s > 0), default=1.0)
    last = int(min(store.window, math.ceil((now_ns - since_ns) / 1e9 / fastest) + 1))
    period = Period(now_ns // 1_000_000, list(reg.infos), list(reg.node_of_slot))
    rows = np.arange(n)
    for metric, name, kind, _, extra in metrics.DEVICE_METRICS:
        w = store.window_view(slots, model.M[metric], last, since_ns=since_ns + 1)
        seen = ~np.isnan(w)
        has: npt.NDArray[np.bool_] = np.asarray(seen.any(axis=1))
        if has.any():
            newest = w[rows, np.where(has, w.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1), 0)]
            period.columns.append((name, extra, "last", newest, has))
            if kind != "counter":
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no sample in the period
                    period.columns.append((name, extra, "mean", np.nanmean(w, axis=1), has))
                    period.columns.append((name, extra, "max", np.nanmax(w, axis=1), has))
        yield
    if period.columns:
        out.append(period)


def render(state: hub.Hub, since_ns: int, now_ns: int) -> bytes:
    """The aggregates of (since_ns, now_ns] as Prometheus text lines, at once (empty when nothing came)."""
    periods: list[Period] = []
    for _ in aggregate_steps(state, since_ns, now_ns, periods):
        pass
    return periods[0].encode() if periods else b""


class Reader:
    """History beyond the ring, read back from VictoriaMetrics (`/api/v1/export`), for the gateway."""

    def __init__(self, url: str) -> None:
        """Read from VictoriaMetrics at `url` (see `check_url`; raises ValueError)."""
        check_url(url)
        parts = urllib.parse.urlsplit(url)
        self.base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.errors = 0

    def _export(self, selector: str, start_s: float, end_s: float) -> list[tuple[int, float]]:
        query = urllib.parse.urlencode({"match[]": selector, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}"})
        with urllib.request.urlopen(f"{self.base}/api/v1/export?{query}", timeout=POST_TIMEOUT_S) as reply:  # noqa: S310
            points: list[tuple[int, float]] = []
            for line in reply.read().decode().splitlines():
                series = json.loads(line) if line.strip() else {}
                points += [
                    (int(t) * 1_000_000, float(v))
                    for t, v in zip(series.get("timestamps", []), series.get("values", []), strict=False)
                ]
        return sorted(points)

    async def older(
        self, uuid: str, metric: str, *, before_ns: int, want: int, period_s: float = 10.0
    ) -> list[tuple[int, float]]:
        """Up to `want` (time ns, value) points of `metric` of device `uuid` before `before_ns`:
        the period means (counters: the last values). Empty when the metric is not exported or the
        database does not answer (counted, logged).
        """
        row = next((r for r in metrics.DEVICE_METRICS if r[0] == metric), None)
        if row is None or want <= 0:
            return []
        _, name, kind, _, extra = row
        agg = "last" if kind == "counter" else "mean"
        selector = f'{name}{{hw_id="{metrics.escape(uuid)}",agg="{agg}"{"," + extra if extra else ""}}}'
        end_s = before_ns / 1e9 - 0.001
        try:
            points = await asyncio.to_thread(self._export, selector, end_s - want * period_s * 1.5, end_s)
        except (OSError, ValueError) as exc:
            self.errors += 1
            log.warning("history: cannot read %s from %s: %s", selector, self.base, exc)
            return []
        return points[-want:]


class Exporter:
    """The bounded queue and its sender."""

    def __init__(self, url: str, *, max_queued: int = 30) -> None:
        """Post to `url` (see `check_url`; raises ValueError); keep at most `max_queued` periods."""
        self.endpoint = check_url(url)
        self.queue: collections.deque[Period] = collections.deque()
        self.max_queued = max_queued
        self.stats = Stats(url=url)
        self._wake = asyncio.Event()

    def offer(self, period: Period) -> None:
        """Queue one period; when full, the oldest is dropped (and counted)."""
        if len(self.queue) >= self.max_queued:
            self.queue.popleft()
            self.stats.dropped += 1
        self.queue.append(period)
        self._wake.set()

    def _post(self, period: Period) -> None:
        if remote_write(self.endpoint):
            data, headers = period.encode_remote_write(), REMOTE_WRITE_HEADERS
        else:
            data, headers = period.encode(), {}
        request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")  # noqa: S310 - the operator's URL, checked
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as reply:  # noqa: S310
            reply.read()

    async def run(self) -> None:
        """Send the queue, oldest first, until cancelled; a failed post waits and tries again."""
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            period = self.queue[0]
            try:
                await asyncio.to_thread(self._post, period)
            except (OSError, urllib.error.URLError) as exc:
                self.stats.failed += 1
                why = str(getattr(exc, "reason", exc))
                if why != self.stats.last_error:
                    log.warning("history: cannot post to %s: %s; periods wait in the queue", self.endpoint, why)
                self.stats.last_error = why
                await asyncio.sleep(min(POST_TIMEOUT_S, 1.0 + self.stats.failed % 5))
                continue
            if self.queue and self.queue[0] is period:
                self.queue.popleft()
            self.stats.exported += 1
            if self.stats.last_error:
                log.info("history: posting to %s works again", self.endpoint)
                self.stats.last_error = ""
