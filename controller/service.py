"""The controller process: gRPC server, action bus, and the control loop, wired together.

Plumbing only (STYLE 1): the decisions are in controller/core/, the state in the hub
(controller/hub.py). One control tick per period; the critical path runs inside the ingest of
each batch (`Hub.batch`), so a thermal event reaches the bus without waiting for the tick. Every event goes to WatchEvents streams and,
with a bus, to `xpu/v1/events`; every command the core wants sent goes out on the bus, and the
ledger hears when it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import pathlib
import time
import uuid
from typing import Any

import grpc.aio
import msgspec

from xpuctl.common import tls
from xpuctl.controller import config, errors, hub
from xpuctl.controller.adapters import broker, etcd, history, metrics, mqtt
from xpuctl.controller.adapters.grpc_api import server as grpc_server
from xpuctl.controller.core import access, desired, events, ingest, ledger, ownership, registry, site
from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.controller")


class GcPolicy:
    """When Python's cyclic garbage collector runs (issue 13.3).

    At 10,000 devices the controller holds some 250,000 long-lived objects (the registry, the
    streams, grpc's and asyncio's own), and a full collection walked them all: 20-100 ms with the
    event loop stopped, several times a minute, and a critical sample or a command that came
    meanwhile waited that long (with collections left on, 1 in 100 waited over 16 ms to be
    decided; with this policy 3-4 ms). After every tick, what survived is frozen (`gc.freeze`:
    moved out of the collector's sight; newer objects are still collected, the youngest
    generation after YOUNG_THRESHOLD allocations), and
    every `full_every_s` everything is unfrozen and collected once, so that cycles which became
    garbage after they were frozen are still freed: one pause of that length per period.
    """

    YOUNG_THRESHOLD = 50_000

    def __init__(self, full_every_s: float = 300.0) -> None:
        """Collect everything every `full_every_s`; collect the youngest generation after
        YOUNG_THRESHOLD net allocations instead of 700 (each pass cost about 4 ms here, several
        a second; what survives a tick is frozen anyway).
        """
        gc.set_threshold(self.YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.full_every_s = full_every_s
        self.last_full = time.monotonic()
        self.full_collections = 0

    def after_tick(self, now: float) -> None:
        """Freeze the survivors; now and then, first collect everything."""
        if now - self.last_full >= self.full_every_s:
            gc.unfreeze()
            started = time.perf_counter()
            gc.collect()
            log.debug("full garbage collection: %.0f ms", (time.perf_counter() - started) * 1e3)
            self.last_full = now
            self.full_collections += 1
        gc.freeze()


SHUTDOWN_BUS_S = 8.0  # longer than the MQTT client's own 5 s wait for the broker's disconnect ack


def server_files(cfg: config.Config) -> tls.ServerFiles | None:
    """The listener's TLS files, when [tls] is on."""
    t = cfg.tls
    if t.cert_file is None or t.key_file is None or t.client_ca_file is None:
        return None
    return tls.ServerFiles(cert_file=t.cert_file, key_file=t.key_file, client_ca_file=t.client_ca_file)


def policy(cfg: config.Config) -> access.Policy:
    """The access rules of `cfg` (reads the operator token file).

    Raises:
        config.ConfigError: the token file cannot be read or has a bad line.
    """
    tokens: dict[bytes, str] = {}
    path = cfg.auth.operator_tokens_file
    if path is not None:
        try:
            tokens = access.parse_tokens(pathlib.Path(path).read_text(), path)
        except OSError as exc:
            raise config.ConfigError(path, f"auth.operator_tokens_file: cannot read it: {exc.strerror}") from exc
        except access.TokenFileError as exc:
            raise config.ConfigError(
                path, f"auth.operator_tokens_file, line {exc.line_no}: {exc.problem}; each line is `NAME TOKEN`"
            ) from exc
    return access.Policy(
        enforced=cfg.tls.on,
        operator_identities=frozenset(cfg.auth.operator_identities),
        operator_tokens=tokens,
        open_reads=cfg.auth.open_reads,
    )


class Service:
    """A controller: state, servers, loops."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        listen: str = "127.0.0.1:50051",
        window: int = 600,
        liveness: registry.Liveness | None = None,
        limits: ingest.Limits | None = None,
        reflection_on: bool = True,
        embedded_port: int = 1883,
        metrics_listen: str | None = None,
        store: desired.Store | None = None,
    ) -> None:
        """Build the state, with what `store` saved; nothing listens until `run`.

        Raises:
            desired.Corrupt: the store holds something that cannot be read.
            config.ConfigError: a bad shard id or etcd endpoint.
        """
        self.cfg = cfg
        self.boot_id = str(uuid.uuid4())
        self.gc = GcPolicy()
        self.state = hub.Hub(window=window, liveness=liveness, limits=limits, cfg=cfg, prefix=self.boot_id[:8])
        self.state.policy = policy(cfg)
        self.history: history.Exporter | None = None
        self._history_from_ns = time.time_ns()
        if cfg.history.url is not None:
            try:
                self.history = history.Exporter(cfg.history.url, max_queued=cfg.history.max_queued)
            except ValueError as exc:
                raise config.ConfigError("history", str(exc)) from exc
            self.state.history_stats = lambda: msgspec.structs.asdict(self.history.stats) if self.history else {}
        self._static_w: float | None = None  # the shard's static share, under a site root
        self.elector: etcd.Elector | None = None
        self._etcd_store: etcd.EtcdStore | None = None
        sh = cfg.shard
        if sh.id is not None and sh.etcd is not None and sh.advertise is not None:
            try:
                own = ownership.Ownership(sh.id, sh.advertise, ttl_s=sh.lease_ttl_s)
                self.elector = etcd.Elector(
                    etcd.Etcd(sh.etcd), own, boot_id=self.boot_id, prefix=sh.prefix, on_change=self._on_ownership
                )
            except ValueError as exc:  # EndpointError too
                raise config.ConfigError("shard", str(exc)) from exc
            self.state.ownership = own
            self.state.shard_nodes = sh.nodes
            self.state.site_managed = sh.site
            # the shard's decisions live in etcd, read by each new owner (issue 14.4)
            store = self._etcd_store = etcd.EtcdStore(sh.etcd, shard=sh.id, prefix=sh.prefix, epoch=self._epoch)
        self.listen = listen
        self.reflection_on = reflection_on
        self.embedded_port = embedded_port
        self.metrics_listen = metrics_listen
        self.metrics_port = 0
        self.bus: mqtt.ControllerBus | None = None
        self.port = 0
        self.bus_url: str | None = None
        self.ready = asyncio.Event()
        self.node_states: dict[str, bus.NodeState] = {}
        self.node_bus_status: dict[str, str] = {}
        self.store = store
        self._wanted = 0  # save requests so far, and the last one a finished save covered
        self._covered = 0
        self._failed: tuple[int, str] = (0, "")  # the last request whose save failed, and why
        self._failing = False
        self._saved_version: tuple[int, int, int] | None = None
        self._dirty = asyncio.Event()
        self._saved = asyncio.Condition()
        if store is not None:
            saved = store.load() if self.elector is None else None  # a shard's: when it takes the shard over
            if saved is not None:
                self.state.restore(saved, where=store.where, now_ns=time.time_ns())
            self.state.persist = self._persist

    # -- the bus -----------------------------------------------------------------------------------

    def _send(self, entry: ledger.Entry, now_ns: int) -> bool:
        return self.bus is not None and self.bus.send_command(entry, now_ns)

    def _forward(self, e: events.Event) -> None:
        if self.bus is not None:
            self.bus.send_event(e)

    def _on_result(self, node_id: str, result: bus.Result, now_ns: int) -> None:
        self.state.result(
            now_ns,
            node_id=node_id,
            id=result.id,
            ok=result.ok,
            applied_cap_w=result.applied_cap_w,
            error=result.error,
        )
        if not result.ok and not result.id:
            log.warning("node %s could not read a command: %s", node_id, result.error, extra={"node_id": node_id})

    def _on_state(self, node_id: str, state: bus.NodeState) -> None:
        before = self.node_states.get(node_id)
        self.node_states[node_id] = state
        was = before is not None and before.fail_safe
        if state.fail_safe == was:
            return
        # telemetry shows the restored caps, and the loop caps the devices again (power.py,
        # reconcile_periods); the event says why the node's power jumped
        if state.fail_safe:
            kind, severity = "node.fail_safe", "warning"
            message = f"node {node_id} lost the controller's lease and restored its default caps"
            log.warning("node %s reports fail-safe: default caps restored", node_id, extra={"node_id": node_id})
        else:
            kind, severity = "node.fail_safe_ended", "info"
            message = f"node {node_id} hears the controller again; its caps are set by the loop"
        event = events.Event(
            timestamp_ns=time.time_ns(), kind=kind, node_id=node_id, severity=severity, message=message
        )
        self.state.publish([event])

    def _on_link(self, state: str, why: str) -> None:
        up = state == "up"
        kind, severity = ("bus.up", "info") if up else ("bus.down", "critical")
        what = "up" if up else f"down: {why}; commands wait in the ledger until it is back"
        self.state.publish(
            [events.Event(timestamp_ns=time.time_ns(), kind=kind, severity=severity, message=f"action bus {what}")]
        )

    def _bus_stats(self) -> dict[str, int]:
        """The bus counters for /metrics (the hub holds no adapter)."""
        if self.bus is None:
            return {}
        stats = msgspec.structs.asdict(self.bus.counters)
        stats["unknown_results"] = self.state.control.ledger.unknown_results
        stats["foreign_results"] = self.state.control.ledger.foreign_results
        stats["up"] = int(self.bus.client is not None)
        return stats

    def _on_status(self, node_id: str, status: bus.Status) -> None:
        self.node_bus_status[node_id] = status.state

    # -- the shard (issue 14) ----------------------------------------------------------------------

    def acting(self) -> bool:
        """Whether this controller acts now: always, unless it is a shard candidate that does not own."""
        own = self.state.ownership
        return own is None or own.acting(time.monotonic())

    def _epoch(self) -> int:
        own = self.state.ownership
        return own.epoch if own is not None else 0

    def _adopt_desired(self) -> None:
        """A new owner takes the shard's budget, cordons and priorities from etcd (not the previous
        owner's open commands: it adopts the caps agents report instead). One short blocking
        read, once per takeover.
        """
        if self.store is None:
            return
        try:
            saved = self.store.load()
        except desired.Corrupt as exc:
            self._state_event("state.restore_failed", "critical", f"{exc}; the shard runs on its config's settings")
            return
        if saved is not None:
            self.state.restore(
                msgspec.structs.replace(saved, commands=[]), where=self.store.where, now_ns=time.time_ns()
            )

    async def _safe_caps(self, period_s: float) -> None:
        """A shard's owner pushes each node the caps its agents fall back to without it: the
        devices together within the shard's static share of the site budget (under a root), or its
        own budget; sent again when they change by more than 1% (issue 15.3).
        """
        sent: dict[str, dict[str, float]] = {}
        while True:
            await asyncio.sleep(period_s)
            total = self._static_w if self.cfg.shard.site else self.state.budget_w
            if self.bus is None or total is None or not self.acting() or not len(self.state.registry):
                sent.clear()  # a new owner (or this one again) pushes everything afresh
                continue
            now_ns = time.time_ns()
            for node, caps in self.state.control.safe_caps(now_ns, total).items():
                before = sent.get(node)
                changed = (
                    before is None
                    or before.keys() != caps.keys()
                    or any(abs(caps[u] - before[u]) > 0.01 * before[u] for u in caps)
                )
                if changed and self.bus.send_safe_caps(node, caps, now_ns):
                    sent[node] = caps

    async def _site(self, elector: etcd.Elector) -> None:
        """A shard under the site's root (issue 15): every site period, report floor and demand,
        read the grant (a linearizable read; its lease runs from when the read was sent), run
        inside it, and acknowledge it once the caps in force fit it.
        """
        sh, keys = self.cfg.shard, etcd.SiteKeys(self.cfg.shard.prefix)
        assert sh.id is not None  # noqa: S101 - only started for a shard; narrows the type
        lease = site.Lease(floor_w=0.0)
        acked: tuple[int, int] | None = None
        while True:
            await asyncio.sleep(sh.site_period_s)
            own = elector.own
            if not own.acting(time.monotonic()):
                lease, acked = site.Lease(floor_w=0.0), None  # a new owner starts from the store
                continue
            d = self.state.control.last_decision
            floor = (d.floors_w + d.fixed_w) if d is not None else 0.0
            draw = self.state.views.summary(time.time_ns()).power_w
            report = site.Report(floor_w=floor, demand_w=d.demand_w if d is not None else 0.0, draw_w=draw)
            lease.floor_w = floor
            owner = etcd.owner_key(sh.prefix, sh.id)
            try:
                await elector.etcd.put_fenced(
                    keys.of(sh.id, "report"),
                    msgspec.json.encode(report),
                    owner=owner,
                    epoch=own.epoch,
                    lease=elector.lease_id,
                )
                sent = time.monotonic()
                kv = await elector.etcd.get(keys.of(sh.id, "grant"))
                if kv is not None:
                    lease.on_read(msgspec.json.decode(bytes(kv.value), type=site.Grant), sent)  # type: ignore[attr-defined]
            except (grpc.aio.AioRpcError, msgspec.DecodeError) as exc:
                log.warning("shard %s: site root's grant not read: %s", sh.id, exc)
            budget = lease.budget_w(time.monotonic())
            self._static_w = lease.static_w if lease.grant is not None else None
            old = self.state.budget_w
            if d is None or budget <= 0:  # no decision yet: nothing to run inside (the floor is unknown)
                continue
            if old is None or abs(budget - old) > max(1.0, 0.01 * old):
                self.state.publish(self.state.control.set_budget(budget, time.time_ns()).events)
            grant = lease.grant
            if grant is not None and grant.order != acked and d.caps_w <= budget * 1.001 + 1.0:
                try:  # the caps in force fit the grant: the root may count it, not the one before
                    if await elector.etcd.put_fenced(
                        keys.of(sh.id, "ack"), msgspec.json.encode(grant), owner=owner, epoch=own.epoch
                    ):
                        acked = grant.order
                except grpc.aio.AioRpcError as exc:
                    log.warning("shard %s: grant not acknowledged: %s", sh.id, exc)

    def _on_ownership(self, what: str, message: str) -> None:
        if what == "acquired":  # cold: no cap is raised before there is history to raise it on
            warmup_s = self.cfg.shard.warmup_s
            self.state.control.hold_raises_until_ns = time.time_ns() + int(warmup_s * 1e9)
            message += f"; raising no cap for {warmup_s:g}s while its history fills"
            self.state.publish(
                self.state.control.abandon_commands(time.time_ns(), "this controller took the shard again, new epoch")
            )
            self._adopt_desired()
        severity = {"acquired": "info", "observed": "info"}.get(what, "warning")
        log.log(logging.INFO if severity == "info" else logging.WARNING, "%s", message)
        self.state.publish(
            [events.Event(timestamp_ns=time.time_ns(), kind=f"shard.{what}", severity=severity, message=message)]
        )

    # -- the desired state (issue 18.2) ------------------------------------------------------------

    async def _persist(self) -> None:
        """Return once a save that began after this call has finished; raise if it failed."""
        self._wanted += 1
        mine = self._wanted
        self._dirty.set()
        async with self._saved:
            await self._saved.wait_for(lambda: self._covered >= mine)
        failed_upto, why = self._failed
        if failed_upto >= mine:
            raise errors.NotSaved(self.store.where if self.store else "?", why)

    async def _saver(self, store: desired.Store) -> None:
        """Write the desired state whenever it changed: one write at a time, off the event loop."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            upto = self._wanted
            version = self.state.desired_version()
            try:
                await asyncio.to_thread(store.save, self.state.snapshot(time.time_ns()))
            except OSError as exc:
                self.state.save_errors += 1
                why = exc.strerror or str(exc)
                if not self._failing:  # said once; each tick tries again (the state stays changed)
                    self._failing = True
                    self._state_event(
                        "state.save_failed", "critical", f"cannot save the desired state to {store.where}: {why}"
                    )
                self._failed = (upto, why)
            else:
                self.state.saves += 1
                if self._failing:
                    self._failing = False
                    self._state_event("state.saved", "info", f"saving to {store.where} works again")
                self._saved_version = version
            async with self._saved:
                self._covered = upto
                self._saved.notify_all()

    def _state_event(self, kind: str, severity: str, message: str) -> None:
        log.log(logging.ERROR if severity == "critical" else logging.INFO, "%s", message)
        self.state.publish([events.Event(timestamp_ns=time.time_ns(), kind=kind, severity=severity, message=message)])

    def _save_if_changed(self) -> None:
        """After a tick: the ledger's open commands (or a decision) changed since the last save."""
        if self.store is not None and self.acting() and self.state.desired_version() != self._saved_version:
            self._dirty.set()

    def _final_save(self) -> None:
        """On the way out: the last state, written in place (the loops have stopped)."""
        if self.store is None or self.elector is not None:  # a shard's lease is gone by now: saved as it went
            return
        try:
            self.store.save(self.state.snapshot(time.time_ns()))
        except OSError as exc:
            log.error("cannot save the state to %s on shutdown: %s", self.store.where, exc.strerror or exc)

    # -- running ---------------------------------------------------------------------------------

    async def _export_history(self, now_ns: int) -> None:
        """Every [history] period: the period's aggregates into the exporter's queue, in steps."""
        if self.history is None or now_ns - self._history_from_ns < self.cfg.history.period_s * 1e9:
            return
        if self.acting():
            periods: list[history.Period] = []
            for _ in history.aggregate_steps(self.state, self._history_from_ns, now_ns, periods):
                await asyncio.sleep(0)  # batches and the critical path go on between the metrics
            for period in periods:
                self.history.offer(period)
        self._history_from_ns = now_ns

    async def _ticks(self) -> None:
        period = self.cfg.power.period_s
        next_at = time.monotonic()
        while True:
            now_ns = time.time_ns()
            if self.acting():  # a standby or fenced shard candidate decides nothing
                for _ in self.state.tick_steps(now_ns):
                    await asyncio.sleep(0)  # batches, the critical path and the bus go on between the steps
            self._save_if_changed()
            await self._export_history(now_ns)
            self.gc.after_tick(time.monotonic())
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set.

        Raises:
            OSError: the gRPC address or the embedded broker's port cannot be bound.
            ValueError: a bad MQTT URL.
        """
        async with contextlib.AsyncExitStack() as stack:
            url = self.cfg.bus.url
            if url == "embedded":
                url = await stack.enter_async_context(broker.embedded(port=self.embedded_port))
            self.bus_url = url
            if url is not None:
                self.state.forward = self._forward
                self.state.send = self._send
                self.bus = mqtt.ControllerBus(
                    url=bus.parse_url(url),
                    boot_id=self.boot_id,
                    on_result=self._on_result,
                    on_state=self._on_state,
                    on_status=self._on_status,
                    on_link=self._on_link,
                    topics=bus.Topics(self.cfg.bus.root),
                    heartbeat_s=self.cfg.bus.heartbeat_s,
                    max_queued=self.cfg.bus.max_queued,
                    shard=self.cfg.shard.id or "",
                    address=self.cfg.shard.advertise or "",
                )
                self.bus.current = self.state.control.ledger.is_open
                self.bus.gate = self.acting
                self.bus.epoch = self._epoch
                self.state.bus_stats = self._bus_stats
            if self.metrics_listen:
                msrv = await metrics.serve(self.state, self.metrics_listen, server_files(self.cfg))
                self.metrics_port = int(msrv.sockets[0].getsockname()[1])
                stack.push_async_callback(msrv.wait_closed)
                stack.callback(msrv.close)
                scheme = "https, client certificate required" if self.cfg.tls.on else "http"
                log.info("/metrics on port %d (%s)", self.metrics_port, scheme)
            server = grpc_server.build_server(
                self.state, self.listen, reflection_on=self.reflection_on, tls_files=server_files(self.cfg)
            )
            self.port = server.port
            await server.start()
            await server.set_serving(serving=True)
            log.info(
                "xpu-controller serving on port %d (%s); bus %s; budget %s%s",
                self.port,
                "mTLS, access rules enforced" if self.cfg.tls.on else "plaintext, no access control",
                url or "off",
                self.state.budget_w,
                f"; candidate owner of shard {self.cfg.shard.id} (etcd {self.cfg.shard.etcd})" if self.elector else "",
            )
            if not self.cfg.tls.on and not _loopback(self.listen.rpartition(":")[0].strip("[]")):
                log.warning(
                    "listening on %s in plaintext: anyone who reaches the port can set the budget, cordon "
                    "and release devices; set [tls] (deploy/README.md, 'Opening the controller')",
                    self.listen,
                )
            # the bus runs beside the TaskGroup: a broker that stopped answering must not hold
            # the shutdown (the task is cancelled and given SHUTDOWN_BUS_S to close)
            bus_task = asyncio.create_task(self.bus.run(), name="controller.mqtt") if self.bus else None
            try:
                async with asyncio.TaskGroup() as tg:
                    ticks = tg.create_task(self._ticks(), name="controller.ticks")
                    saver = tg.create_task(self._saver(self.store), name="controller.saver") if self.store else None
                    elector = tg.create_task(self.elector.run(), name="controller.elector") if self.elector else None
                    safe = (
                        tg.create_task(self._safe_caps(self.cfg.shard.site_period_s), name="controller.safe_caps")
                        if self.elector is not None
                        else None
                    )
                    on_site = (
                        tg.create_task(self._site(self.elector), name="controller.site")
                        if self.elector is not None and self.cfg.shard.site
                        else None
                    )
                    exporter = tg.create_task(self.history.run(), name="controller.history") if self.history else None
                    self.ready.set()
                    stopped = tg.create_task(stop.wait(), name="controller.stop")
                    waits: set[asyncio.Future[Any]] = {stopped}
                    if bus_task is not None:
                        waits.add(bus_task)
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    if bus_task is not None and bus_task.done():
                        stopped.cancel()
                        ticks.cancel()
                        bus_task.result()  # the bus ended on its own: say why
                    if self.bus is not None:
                        await self.bus.say_offline()  # while still connected; the will covers crashes
                    ticks.cancel()
                    if saver is not None:
                        saver.cancel()
                    if elector is not None:
                        elector.cancel()
                    if on_site is not None:
                        on_site.cancel()
                    if safe is not None:
                        safe.cancel()
                    if exporter is not None:
                        exporter.cancel()  # revokes the lease: a standby takes over at once
            finally:
                if bus_task is not None and not bus_task.done():
                    bus_task.cancel()
                    done, _ = await asyncio.wait({bus_task}, timeout=SHUTDOWN_BUS_S)
                    if not done:
                        log.warning("MQTT session did not close within %gs; leaving it", SHUTDOWN_BUS_S)
                await server.set_serving(serving=False)
                await server.stop(1.0)
                if self.elector is not None:
                    await self.elector.etcd.close()
                    if self._etcd_store is not None:
                        self._etcd_store.close()
                self._final_save()


def _loopback(host: str) -> bool:
    """Whether a listen host reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
