"""`xpu-controller`: serve | bench (DESIGN section 6). Sets up logging and uvloop, nothing else."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources

import msgspec

from xpuctl.common import cli, exits, logs, pipes, systemd, tls
from xpuctl.controller import config, gateway, root, service
from xpuctl.controller.adapters import etcd, statefile
from xpuctl.controller.adapters.grpc_api import server as grpc_server
from xpuctl.controller.core import desired, ingest, ownership, registry
from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.controller")


def _listen(text: str) -> str:
    try:
        grpc_server.listen_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _bus_url(text: str) -> str:
    if text == "embedded":
        return text
    try:
        bus.parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _config(args: argparse.Namespace) -> config.Config:
    """The file's settings with the flags on top (flags win), checked against the same ranges.

    Raises:
        config.ConfigError: a bad file, or a flag outside its setting's range.
    """
    cfg = config.load(args.config, os.environ)
    power = msgspec.structs.replace(
        cfg.power,
        **{k: v for k, v in (("budget_w", args.budget_w), ("period_s", args.control_period_s)) if v is not None},
    )
    bus_cfg = msgspec.structs.replace(cfg.bus, url=args.mqtt) if args.mqtt else cfg.bus
    state = msgspec.structs.replace(cfg.state, dir=args.state_dir) if args.state_dir else cfg.state
    shard = msgspec.structs.replace(
        cfg.shard,
        **{
            k: v
            for k, flag in (("id", "shard"), ("etcd", "etcd"), ("advertise", "advertise"))
            if (v := getattr(args, flag, None)) is not None  # only `serve` has these flags
        },
    )
    history_url = getattr(args, "history_url", None)
    hist = msgspec.structs.replace(cfg.history, url=history_url) if history_url else cfg.history
    merged = msgspec.structs.replace(cfg, power=power, bus=bus_cfg, state=state, shard=shard, history=hist)
    try:  # replace() does not check constraints: a flag must meet its setting's range too
        checked = msgspec.convert(msgspec.to_builtins(merged), config.Config)
    except msgspec.ValidationError as exc:
        raise config.ConfigError("command-line flags", f"{exc} (--budget-w, --control-period-s)") from exc
    config.check_shard(checked, "command-line flags")
    return checked


def state_dir(cfg: config.Config, environ: Mapping[str, str]) -> pathlib.Path | None:
    """Where the desired state lives (None: nowhere); see `config.State.dir`."""
    chosen = cfg.state.dir
    if chosen is not None:
        return None if chosen == "none" else pathlib.Path(chosen)
    if environ.get("STATE_DIRECTORY"):  # systemd's StateDirectory=; the first of a list
        return pathlib.Path(environ["STATE_DIRECTORY"].split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(pathlib.Path("~/.local/state").expanduser())
    return pathlib.Path(base) / "xpu-controller"


def _store(cfg: config.Config) -> statefile.FileStore | None:
    where = state_dir(cfg, os.environ)
    return None if where is None else statefile.FileStore(where)


def fractions(text: str) -> list[float]:
    """An argument type: one fraction or several, comma-separated (0.5,0.7,0.85)."""
    return [cli.fraction(part) for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="xpu-controller", description="xpuctl controller")
    cli.add_version(parser)
    parser.add_global("--log-level", default="INFO", choices=logs.LEVELS)
    parser.add_global(
        "--log-format",
        default=None,
        choices=logs.FORMATS,
        help="JSON lines (default for serve) or text for people (default for demo and bench)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="ingest telemetry and serve the Cluster API")
    serve.add_argument("--listen", type=_listen, default="127.0.0.1:50051", metavar="HOST:PORT")
    serve.add_argument(
        "--mqtt",
        type=_bus_url,
        default=None,
        help="action bus: mqtt://HOST[:PORT], mqtts://..., or `embedded` (an in-process broker)",
    )
    serve.add_argument("--embedded-port", type=cli.positive(int), default=1883, help="port of --mqtt embedded")
    serve.add_argument("--budget-w", type=cli.positive(float), default=None, help="cluster power budget")
    serve.add_argument("--control-period-s", type=cli.positive(float), default=None, help="default 1 s")
    serve.add_argument("--config", default=None, metavar="FILE", help="TOML settings (see README)")
    serve.add_argument(
        "--metrics-listen", type=_listen, default=None, metavar="HOST:PORT", help="serve /metrics for Prometheus"
    )
    serve.add_argument("--window", type=cli.positive(int), default=600, help="samples kept per device")
    serve.add_argument("--stale-after-s", type=cli.positive(float), default=5.0)
    serve.add_argument("--offline-after-s", type=cli.positive(float), default=30.0)
    serve.add_argument(
        "--forget-after-s",
        type=cli.positive(float),
        default=3600.0,
        help="release a gone device's slot, and forget a silent node, after this long (default 1 h)",
    )
    serve.add_argument("--no-reflection", action="store_true", help="turn gRPC server reflection off")
    serve.add_argument(
        "--history-url",
        default=None,
        metavar="URL",
        help="export 10 s aggregates to VictoriaMetrics at http://HOST:PORT ([history] in the config)",
    )
    serve.add_argument("--shard", default=None, metavar="ID", help="run as a candidate owner of this shard (DESIGN 11)")
    serve.add_argument(
        "--etcd", default=None, metavar="URL[,URL...]", help="with --shard: every etcd member, http://HOST:PORT"
    )
    serve.add_argument(
        "--advertise", default=None, metavar="HOST:PORT", help="with --shard: where agents reach this controller"
    )
    serve.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where budget, cordons, priorities and open commands are kept across restarts "
        "(default: $STATE_DIRECTORY, else ~/.local/state/xpu-controller; `none`: keep nothing)",
    )

    demo = sub.add_parser("demo", help="a controller and a simulated mixed fleet, shown live")
    demo.add_argument(
        "--listen",
        type=_listen,
        default=None,
        metavar="HOST:PORT",
        help="default 127.0.0.1:50051 when free (xpuctl attaches with no flag), else a free port",
    )
    demo.add_argument("--nodes", type=cli.positive(int), default=16)
    demo.add_argument("--devices-per-node", type=cli.positive(int), default=8)
    demo.add_argument("--duration-s", type=cli.positive(float), default=None, help="stop after this long")
    demo.add_argument("--headless", action="store_true", help="no dashboard; print a summary at the end")
    demo.add_argument("--json", action="store_true", help="with --headless: the summary as one JSON object")
    demo.add_argument(
        "--budget-w", type=cli.positive(float), default=None, help="default: 85%% of the fleet's draw after 15 s"
    )

    gw = sub.add_parser("gateway", help="serve the Cluster API over every shard (DESIGN 11)")
    gw.add_argument("--etcd", required=True, metavar="URL[,URL...]", help="every etcd member, http://HOST:PORT")
    gw.add_argument("--listen", type=_listen, default="127.0.0.1:50050", metavar="HOST:PORT")
    gw.add_argument("--prefix", default="/xpu/v1", help="root of xpuctl's keys in etcd (the shards' [shard] prefix)")
    gw.add_argument(
        "--history-url",
        default=None,
        metavar="URL",
        help="VictoriaMetrics the shards export to: history beyond the ring",
    )
    rt = sub.add_parser("root", help="run a candidate root allocator of the site budget (issue 15)")
    rt.add_argument("--etcd", required=True, metavar="URL[,URL...]", help="every etcd member, http://HOST:PORT")
    rt.add_argument("--advertise", required=True, metavar="NAME", help="this candidate's name (unique per candidate)")
    rt.add_argument(
        "--budget-w", type=cli.positive(float), default=None, help="the site budget, when etcd has none yet"
    )
    rt.add_argument("--period-s", type=cli.positive(float), default=5.0, help="allocation period; grants last 3")
    rt.add_argument("--static-frac", type=cli.fraction, default=0.5, help="share of the headroom kept as static shares")
    rt.add_argument("--prefix", default="/xpu/v1", help="root of xpuctl's keys in etcd")
    validate = sub.add_parser("validate", help="check a config file (exit 78 when it is bad)")
    validate.add_argument("--config", default=None, metavar="FILE")

    example = sub.add_parser("config", help="print the example config file: every key, its default and meaning")
    example.add_argument("what", choices=["example"])
    bench = sub.add_parser(
        "bench",
        help="capacity (ingest: samples/s, latency, memory) or policy (power: xpuctl vs the static cap)",
    )
    bench.add_argument("--scenario", choices=["ingest", "power", "detect", "failover"], default="ingest")
    bench.add_argument(
        "--shards", type=cli.positive(int), default=None, help="failover: shards (2); power: also run in N shards"
    )
    bench.add_argument(
        "--candidates", type=cli.positive(int), default=2, help="failover scenario: candidates per shard"
    )
    bench.add_argument(
        "--freeze", action="store_true", help="failover scenario: SIGSTOP the owners past the TTL instead of SIGKILL"
    )
    bench.add_argument(
        "--nodes", type=cli.positive(int), default=None, help="power, detect, failover: simulated nodes (32; 64)"
    )
    bench.add_argument(
        "--simulated-s",
        type=cli.positive(int),
        default=None,
        help="power, detect: length of a run (600 s; detect 1800)",
    )
    bench.add_argument(
        "--budget-frac",
        type=fractions,
        default=None,
        metavar="F[,F...]",
        help="power scenario: budget / demand, one or several (default 0.5,0.7,0.85; detect: ignored)",
    )
    bench.add_argument("--seed", type=int, default=0, help="power, detect: seed of the simulation (the first)")
    bench.add_argument(
        "--seeds", type=cli.positive(int), default=None, help="power scenario: this many seeds (default 3)"
    )
    bench.add_argument(
        "--plan",
        choices=["peak", "mean"],
        default="mean",
        help="power scenario: what xpuctl's loop plans devices on ([power] plan; default mean)",
    )
    bench.add_argument(
        "--capacity",
        action="store_true",
        help="power scenario: also how many devices a feed of the TDP of --nodes carries, by policy (5%% work lost)",
    )
    bench.add_argument(
        "--alpha-sweep",
        action="store_true",
        help="power scenario: also the results across the throughput curve's plausible range (first seed)",
    )
    bench.add_argument("--devices", type=cli.positive(int), default=10_000)
    bench.add_argument("--devices-per-node", type=cli.positive(int), default=8)
    bench.add_argument("--interval-s", type=cli.positive(float), default=1.0)
    bench.add_argument("--duration-s", type=cli.positive(float), default=30.0)
    bench.add_argument("--ramp-s", type=float, default=None, help="default: a quarter of the duration")
    bench.add_argument("--window", type=cli.positive(int), default=600)
    bench.add_argument(
        "--loadgen",
        choices=["preencoded", "fleet"],
        default="preencoded",
        help="ingest: messages encoded once (controller/lab/loadgen.py), or real agents (xpu-agent fleet)",
    )
    bench.add_argument("--loadgen-procs", type=cli.positive(int), default=1, help="pre-encoded load generators")
    bench.add_argument("--flat-out", action="store_true", help="ingest: every stream writes as fast as it can")
    bench.add_argument("--streams", type=cli.positive(int), default=100, help="--flat-out: nodes streaming")
    bench.add_argument(
        "--hot-per-s", type=float, default=10.0, help="ingest: critical samples per second (times the commands)"
    )
    bench.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.share_globals(sub)
    return parser


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets (call from inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(args: argparse.Namespace) -> int:
    """Run the controller until SIGINT/SIGTERM, telling systemd (when it is there) how it goes.

    READY once the gRPC port serves (health SERVING) and the loops run; WATCHDOG from the event
    loop; STOPPING when the signal arrives.
    """
    notifier = systemd.Notifier(os.environ)
    store = None
    try:
        cfg = _config(args)
        store = None if cfg.shard.id else _store(cfg)  # a shard keeps its decisions in etcd
        svc = service.Service(
            cfg,
            listen=args.listen,
            window=args.window,
            liveness=registry.Liveness(
                stale_after_s=args.stale_after_s,
                offline_after_s=args.offline_after_s,
                forget_after_s=args.forget_after_s,
            ),
            limits=ingest.Limits(**msgspec.structs.asdict(cfg.limits)),
            reflection_on=not args.no_reflection,
            embedded_port=args.embedded_port,
            metrics_listen=args.metrics_listen,
            store=store,
        )
    except statefile.StateDirError as exc:
        log.error("%s", exc)
        return exits.FAILURE if exc.in_use else exits.CONFIG
    except (config.ConfigError, desired.Corrupt) as exc:
        if store is not None:
            store.close()
        log.error("%s", exc)
        return exits.CONFIG
    stop = stop_on_signals()

    async def announce() -> None:
        await svc.ready.wait()
        notifier.ready(f"serving on port {svc.port}; bus {svc.bus_url or 'off'}")
        await stop.wait()
        notifier.stopping()

    side: list[asyncio.Task[None]] = []
    try:
        side = [
            asyncio.create_task(announce(), name="controller.sd_ready"),
            asyncio.create_task(notifier.watchdog_loop(), name="controller.sd_watchdog"),
        ]
        await svc.run(stop)
    except tls.TlsError as exc:
        log.error("%s", exc)
        return exits.CONFIG
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        if store is not None:
            store.close()
    log.info("shut down")
    return 0


async def run_gateway(args: argparse.Namespace) -> int:
    """Run `xpu-controller gateway` until SIGINT/SIGTERM."""
    notifier = systemd.Notifier(os.environ)
    stop = stop_on_signals()
    watchdog = asyncio.create_task(notifier.watchdog_loop(), name="gateway.sd_watchdog")
    try:
        await gateway.serve(
            etcd_urls=args.etcd,
            listen=args.listen,
            prefix=args.prefix,
            stop=stop,
            on_ready=lambda port: notifier.ready(f"gateway serving on port {port}"),
            history_url=args.history_url,
        )
    except etcd.EndpointError as exc:
        log.error("--etcd: %s", exc)
        return exits.CONFIG
    except ValueError as exc:
        log.error("%s", exc)
        return exits.CONFIG
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
    log.info("shut down")
    return 0


async def run_root(args: argparse.Namespace) -> int:
    """Run `xpu-controller root` until SIGINT/SIGTERM."""
    try:
        client = etcd.Etcd(args.etcd)
        own = ownership.Ownership("site", args.advertise)
    except ValueError as exc:
        log.error("%s", exc)
        return exits.CONFIG
    allocator = root.RootService(
        client,
        own,
        boot_id=str(uuid.uuid4()),
        prefix=args.prefix,
        budget_w=args.budget_w,
        period_s=args.period_s,
        static_frac=args.static_frac,
    )
    stop = stop_on_signals()
    task = asyncio.create_task(allocator.run(), name="root")
    log.info("xpu-controller root %s: candidate root allocator (etcd %s)", args.advertise, args.etcd)
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()
    log.info("shut down")
    return 0


@pipes.quiet_when_the_reader_leaves
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `xpu-controller`."""
    args = _parser().parse_args(argv)
    fmt = args.log_format or ("json" if args.command == "serve" else "text")
    logs.setup(args.log_level, fmt, os.environ)
    if args.command == "config":
        sys.stdout.write(resources.files("xpuctl.controller").joinpath("xpu-controller.example.toml").read_text())
        return 0
    if args.command == "validate":
        try:
            cfg = config.load(args.config, os.environ)
        except config.ConfigError as exc:
            print(f"xpu-controller validate: {exc}", file=sys.stderr)
            return exits.CONFIG
        print(json.dumps(msgspec.to_builtins(cfg), indent=2))
        return 0
    if args.command == "bench" and args.scenario == "detect":
        from xpuctl.controller.lab import detectbench  # noqa: PLC0415 - only this bench needs the simulator

        return detectbench.run(args.nodes or 64, args.simulated_s or 1800, args.devices, args.seed, as_json=args.json)
    if args.command == "bench" and args.scenario == "power":
        from xpuctl.controller.lab import powerbench  # noqa: PLC0415 - only this bench needs the simulator

        return powerbench.run(
            args.nodes or 32,
            args.simulated_s or 600,
            args.budget_frac or [0.5, 0.7, 0.85],
            list(range(args.seed, args.seed + (args.seeds or 3))),
            as_json=args.json,
            shards=args.shards or 1,
            with_capacity=args.capacity,
            with_sweep=args.alpha_sweep,
            plan=args.plan,
        )
    if args.command == "bench" and args.scenario == "failover":
        from xpuctl.controller.lab import failoverbench  # noqa: PLC0415 - only this bench starts etcd

        return failoverbench.run(args)
    if args.command == "bench":
        from xpuctl.controller.lab import bench  # noqa: PLC0415 - only the bench needs it

        return bench.run(args)
    cli.install_uvloop()
    if args.command == "demo":
        from xpuctl.controller.lab import demo  # noqa: PLC0415 - only the demo needs rich Live

        command = demo.run
    elif args.command == "gateway":
        command = run_gateway
    elif args.command == "root":
        command = run_root
    else:
        command = serve
    try:
        return asyncio.run(command(args))
    except KeyboardInterrupt:
        return exits.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
