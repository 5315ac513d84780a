"""`xpu-agent`: run | once | fleet (DESIGN section 6). The only place that sets up logging and uvloop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import re
import signal
import socket
import sys
import time
from collections.abc import Sequence
from importlib import resources

import msgspec

from xpuctl.agent import config as agent_config
from xpuctl.agent.adapters.sampler import Sampler
from xpuctl.agent.core import model
from xpuctl.agent.drivers import base, registry
from xpuctl.agent.drivers.sim import faults
from xpuctl.agent.runtime import Agent
from xpuctl.common import cli, exits, logs, mqtt_session, pipes, systemd, tls

log = logging.getLogger("xpu.agent")


def _fault(text: str) -> faults.Fault:
    try:
        return faults.parse(text)
    except faults.FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _vendor(text: str) -> str:
    text = text.strip().lower()  # `NVIDIA`, `Ascend`: the same vendor
    if text not in model.VENDORS:
        msg = f"unknown vendor {text!r}; use one of: {', '.join(model.VENDORS)}"
        raise argparse.ArgumentTypeError(msg)
    return text


def _vendor_or_auto(text: str) -> str:
    return text if text == "auto" else _vendor(text)


def _node_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", text):
        msg = f"node id {text!r} must be 1-128 of [A-Za-z0-9._-], starting with a letter or digit"
        raise argparse.ArgumentTypeError(msg)
    if text == "controller":
        msg = "node id 'controller' is reserved: xpu/v1/status/controller is the controller's lease"
        raise argparse.ArgumentTypeError(msg)
    return text


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"label {text!r} must be KEY=VALUE"
        raise argparse.ArgumentTypeError(msg)
    return key, value


def _add_driver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--driver",
        default=None,
        help="device driver: auto (the default: every vendor library and tool on PATH), a vendor (nvidia, "
        "ascend, cambricon, metax, iluvatar, kunlunxin, moorethreads, enflame, amd, hygon, thead), or sim "
        "(simulated devices of --sim-vendor; any --sim-* flag asks for it too)",
    )
    p.add_argument("--sim-vendor", type=_vendor, default="nvidia", help="vendor to simulate")
    p.add_argument("--sim-devices", type=cli.positive(int), default=8, help="simulated devices")
    p.add_argument("--sim-seed", type=int, default=0, help="seed of the simulation")
    p.add_argument(
        "--sim-fault",
        type=_fault,
        action="append",
        default=[],
        metavar="SPEC",
        help="KIND[:dev=I][:at=SECONDS][:for=SECONDS]; KIND one of " + ", ".join(faults.FAULT_KINDS),
    )


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="xpu-agent", description="xpuctl node agent")
    cli.add_version(parser)
    parser.add_global("--log-level", default="INFO", choices=logs.LEVELS)
    parser.add_global(
        "--log-format", default="json", choices=logs.FORMATS, help="JSON lines (default) or text for people"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="sample devices and stream them to the controller")
    run.add_argument("--node-id", type=_node_id, default=socket.gethostname())
    run.add_argument(
        "--controller",
        type=cli.addresses,
        default=None,
        metavar="HOST[:PORT][,...]",
        help="required here or in --config (the port defaults to 50051); a shard's candidates, comma-separated: "
        "the agent follows the one that owns the shard",
    )
    run.add_argument(
        "--shard",
        default=None,
        metavar="ID",
        help="the shard whose owner's lease this node follows (status/controller/ID); without it, the one controller's",
    )
    run.add_argument("--config", default=None, metavar="FILE", help="TOML settings, [agent] table")
    run.add_argument(
        "--mqtt",
        type=cli.bus_url,
        default=None,
        help="action bus: mqtt://HOST[:PORT] or mqtts://[USER@]HOST[:PORT]?ca=PEM&cert=PEM&key=PEM "
        "(also password_file=FILE, protocol=5|3.1.1); without it the agent only reports",
    )
    run.add_argument(
        "--failsafe-after-s",
        type=cli.positive(float),
        default=15.0,
        help="restore default caps when the controller has been silent this long",
    )
    run.add_argument(
        "--max-command-lifetime-s",
        type=cli.positive(float),
        default=300.0,
        help="refuse a command whose expiry is further ahead than this (default 300 s)",
    )
    run.add_argument(
        "--sim-workload",
        choices=["mixed", "idle", "training", "inference"],
        default="mixed",
        help="workload of the simulated devices",
    )
    run.add_argument("--interval-s", type=cli.positive(float), default=1.0)
    run.add_argument("--driver-timeout-s", type=cli.positive(float), default=5.0)
    run.add_argument(
        "--rediscover-s",
        type=cli.positive(float),
        default=30.0,
        help="try drivers whose discovery failed again this often (their devices join as a new boot)",
    )
    run.add_argument("--buffer-batches", type=cli.positive(int), default=600)
    run.add_argument(
        "--reconnect-max-s", type=cli.positive(float), default=5.0, help="cap of the reconnect backoff (jittered)"
    )
    run.add_argument("--label", type=_label, action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--tls-ca-file", default=None, metavar="PEM", help="CA of the controller; turns TLS on")
    run.add_argument("--tls-cert-file", default=None, metavar="PEM", help="this node's certificate (mTLS)")
    run.add_argument("--tls-key-file", default=None, metavar="PEM", help="its key")
    run.add_argument("--tls-server-name", default=None, help="name in the controller's certificate, if not its host")
    _add_driver_args(run)

    once = sub.add_parser("once", help="print one normalised sample per device as JSON")
    once.add_argument("--node-id", default=socket.gethostname())
    once.add_argument("--driver-timeout-s", type=cli.positive(float), default=5.0)
    _add_driver_args(once)

    validate = sub.add_parser("validate", help="check a config file (exit 78 when it is bad)")
    validate.add_argument("--config", default=None, metavar="FILE")

    example = sub.add_parser("config", help="print the example config file: every key, its default and meaning")
    example.add_argument(
        "what",
        choices=["example", "cap-paths"],
        help="example: every key with its default; cap-paths: a systemd drop-in that lets the unit "
        "write the caps of this node's AMD and Hygon GPUs (ROCm SMI writes them under /sys)",
    )
    example.add_argument("--sysfs", default="/sys", help=argparse.SUPPRESS)  # tests: a fake /sys
    parse = sub.add_parser("parse", help="a captured management-tool output to normalised JSON")
    parse.add_argument("vendor", type=_vendor_or_auto, help="the vendor whose tool printed it, or auto (recognised)")
    parse.add_argument("file", help="the capture; - for standard input")

    cap = sub.add_parser(
        "capture", help="run this node's vendor tools and save what they print, for a bug report (read-only)"
    )
    cap.add_argument("--out", default=None, metavar="FILE.tar.gz", help="default: xpu-capture-HOST-TIME.tar.gz here")
    cap.add_argument("--timeout-s", type=cli.positive(float), default=20.0, help="per command (killed after)")

    fleet = sub.add_parser("fleet", help="many simulated agents in one process (load generator)")
    fleet.add_argument("--controller", type=cli.addresses, required=True, metavar="HOST[:PORT][,...]")
    fleet.add_argument("--shard", default="", metavar="ID", help="the shard whose owner's lease the nodes follow")
    fleet.add_argument("--nodes", type=cli.positive(int), required=True)
    fleet.add_argument("--devices-per-node", type=cli.positive(int), default=8)
    fleet.add_argument(
        "--vendors",
        default=",".join(model.VENDORS),
        help="comma-separated vendors, assigned to nodes in turn",
    )
    fleet.add_argument("--interval-s", type=cli.positive(float), default=1.0)
    fleet.add_argument("--mqtt", type=cli.bus_url, default=None, help="action bus URL (see `run --help`)")
    fleet.add_argument("--failsafe-after-s", type=cli.positive(float), default=15.0)
    fleet.add_argument(
        "--workloads",
        default="mixed",
        help="comma-separated workloads (mixed, idle, training, inference), assigned to nodes in turn",
    )
    fleet.add_argument("--ramp-s", type=float, default=0.0, help="start the nodes over this time")
    fleet.add_argument("--seed", type=int, default=0)
    fleet.add_argument("--node-prefix", default="sim")
    fleet.add_argument("--buffer-batches", type=cli.positive(int), default=600)
    fleet.add_argument(
        "--sim-fault",
        type=_fault,
        action="append",
        default=[],
        metavar="SPEC",
        help="fault spec applied to the first node (see `run --help`)",
    )
    parser.share_globals(sub)
    return parser


def driver_choice(args: argparse.Namespace) -> str:
    """`--driver` as given; else `sim` when a --sim-* flag asks for simulated devices; else `auto`
    (issue 12: a real node with no flag must read its real devices, never invent eight H100s).
    """
    return args.driver or ("sim" if getattr(args, "sim_asked", False) else "auto")


def _select(args: argparse.Namespace, node_id: str) -> list[base.Driver]:
    """The drivers of the choice.

    Raises:
        registry.DriverChoiceError: the choice reads nothing on this node.
    """
    sim = registry.SimSpec(
        vendor=args.sim_vendor,
        devices=args.sim_devices,
        seed=args.sim_seed,
        faults=args.sim_fault,
        workload=getattr(args, "sim_workload", "mixed"),
    )
    return registry.select(driver_choice(args), node_id=node_id, sim=sim, timeout_s=args.driver_timeout_s)


def _drivers(args: argparse.Namespace, node_id: str) -> list[base.Driver]:
    """The drivers of the choice; one that reads nothing ends the program (exit 1) with the reason."""
    try:
        return _select(args, node_id)
    except registry.DriverChoiceError as exc:
        raise SystemExit(f"xpu-agent: {exc}") from None


async def _drivers_when_found(
    args: argparse.Namespace, notifier: systemd.Notifier, stop: asyncio.Event
) -> list[base.Driver] | None:
    """`run`: the drivers; with `auto` and no device on this node yet, look again every
    `rediscover_s` (a driver installed later is picked up) until there is one, or None on stop.
    """
    said = False
    while True:
        try:
            return _select(args, args.node_id)
        except registry.DriverChoiceError as exc:
            if driver_choice(args) != "auto":
                raise SystemExit(f"xpu-agent: {exc}") from None
            level = logging.INFO if said else logging.ERROR
            log.log(
                level,
                "node %s: no devices to report: %s; looking again every %gs",
                args.node_id,
                exc,
                args.rediscover_s,
            )
            notifier.status(f"no devices found (looking again every {args.rediscover_s:g}s): {exc}")
            said = True
        try:
            async with asyncio.timeout(args.rediscover_s):
                await stop.wait()
        except TimeoutError:
            continue
        return None


async def _once(args: argparse.Namespace) -> int:
    sampler = Sampler(_drivers(args, args.node_id), timeout_s=args.driver_timeout_s)
    try:
        devices = await sampler.discover()
        samples, rows = await sampler.sample(time.time_ns())
    finally:
        sampler.close()
    if not devices and sampler.why_missing:
        for why in sampler.why_missing.values():
            print(f"xpu-agent once: no device: {why}", file=sys.stderr)
        return 1
    by_row = dict(zip(rows, samples, strict=True))
    out = [model.as_json_row(d, by_row.get(i)) for i, d in enumerate(devices)]
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


async def _run(args: argparse.Namespace) -> int:
    """Run one agent until SIGTERM/SIGINT, telling systemd (when it is there) how it goes.

    READY once the devices are discovered and the controller has acknowledged the stream's
    Hello; WATCHDOG from the event loop; STOPPING when the signal arrives.
    """
    notifier = systemd.Notifier(os.environ)
    tls_files = _agent_tls(args)
    if args.mqtt is not None:
        mqtt_session.connect_kwargs(args.mqtt)  # a bad CA, certificate or password file stops the start
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(notifier.watchdog_loop(), name="agent.sd_watchdog_search")
    try:
        drivers = await _drivers_when_found(args, notifier, stop)
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
    if drivers is None:
        log.info("node %s: stopping on signal", args.node_id)
        return 0
    sampler = Sampler(drivers, timeout_s=args.driver_timeout_s)
    the_agent = Agent(
        node_id=args.node_id,
        controller=args.controller,
        sampler=sampler,
        interval_s=args.interval_s,
        buffer_batches=args.buffer_batches,
        labels=dict(args.label),
        backoff_cap_s=args.reconnect_max_s,
        bus_url=args.mqtt,
        failsafe_after_s=args.failsafe_after_s,
        max_command_lifetime_s=args.max_command_lifetime_s,
        tls_files=tls_files,
        rediscover_s=args.rediscover_s,
        shard=args.shard or "",
    )

    async def announce() -> None:
        while True:  # `systemctl status` shows why a start takes long
            try:
                async with asyncio.timeout(5.0):
                    await the_agent.link.up.wait()
                break
            except TimeoutError:
                why = the_agent.link.last_error or ("discovering devices" if not the_agent.devices else "connecting")
                notifier.status(f"waiting for the controller at {args.controller}: {why}")
        notifier.ready(f"streaming {len(the_agent.devices)} device(s) to {args.controller}")

    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(the_agent.run(), name=f"agent[{args.node_id}]")
        side = [
            tg.create_task(announce(), name="agent.sd_ready"),
            tg.create_task(notifier.watchdog_loop(), name="agent.sd_watchdog"),
        ]
        stopped = tg.create_task(stop.wait(), name="agent.stop")
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("node %s: stopping on signal", args.node_id)
            notifier.stopping()
            await the_agent.leave()
        for task in (running, stopped, *side):
            task.cancel()
    return 0


def _agent_tls(args: argparse.Namespace) -> tls.ClientFiles | None:
    """The stream's TLS files, loaded once here so that a bad file stops the start (exit 78)."""
    if args.tls_ca_file is None:
        if args.tls_cert_file or args.tls_key_file:
            raise tls.TlsError("client certificate", args.tls_cert_file or args.tls_key_file, "set tls_ca_file too")
        return None
    files = tls.ClientFiles(
        ca_file=args.tls_ca_file,
        cert_file=args.tls_cert_file,
        key_file=args.tls_key_file,
        server_name=args.tls_server_name,
    )
    tls.channel_credentials(files)
    return files


async def _fleet(args: argparse.Namespace) -> int:
    from xpuctl.agent import fleet  # noqa: PLC0415 - the load generator (and numpy) only for this command

    vendors = [v.strip() for v in args.vendors.split(",") if v.strip()]
    for v in vendors:
        _vendor_or_exit(v)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in fleet.WORKLOADS:
            msg = f"xpu-agent fleet: --workloads: unknown workload {w!r}; use mixed, idle, training or inference"
            raise SystemExit(msg)
    spec = fleet.FleetSpec(
        controller=args.controller,
        nodes=args.nodes,
        devices_per_node=args.devices_per_node,
        vendors=vendors,
        workloads=workloads,
        interval_s=args.interval_s,
        mqtt=args.mqtt,
        failsafe_after_s=args.failsafe_after_s,
        ramp_s=args.ramp_s,
        seed=args.seed,
        node_prefix=args.node_prefix,
        buffer_batches=args.buffer_batches,
        faults=args.sim_fault,
        shard=args.shard,
    )
    await fleet.run(spec)
    return exits.OK


def _parse(args: argparse.Namespace) -> int:
    """`xpu-agent parse VENDOR|auto FILE|-`: exit 0 with the JSON array, 1 when the capture cannot be read."""
    from xpuctl.agent.core import parse  # noqa: PLC0415 - only this command needs the parsers

    try:
        text = sys.stdin.read() if args.file == "-" else pathlib.Path(args.file).read_text(errors="replace")
    except OSError as exc:
        print(f"xpu-agent parse: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    vendor = args.vendor
    if vendor == "auto":
        found = parse.detect.vendor_of(text)
        if found is None:
            print(
                f"xpu-agent parse: cannot tell which tool printed {args.file} (no banner, label or model name of "
                "a tool xpuctl reads); name its vendor: xpu-agent parse VENDOR FILE",
                file=sys.stderr,
            )
            return 1
        print(f"xpu-agent parse: read as {found} output", file=sys.stderr)
        vendor = found
    try:
        devices = parse.parse(vendor, text)
    except (parse.ParseError, KeyError) as exc:
        print(f"xpu-agent parse: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1
    for warning in dict.fromkeys(w for d in devices for w in d.warnings):  # each once, in order
        print(f"xpu-agent parse: warning: {warning}", file=sys.stderr)
    json.dump([model.as_json_row(d.info, d.sample) for d in devices], sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _capture(args: argparse.Namespace) -> int:
    """`xpu-agent capture`: exit 0 with the archive written, 1 when no vendor tool is on PATH."""
    from xpuctl.agent.drivers import capture  # noqa: PLC0415 - only this command runs the tools so

    out = args.out or f"xpu-capture-{socket.gethostname()}-{time.strftime('%Y%m%dT%H%M%S')}.tar.gz"
    print(f"xpu-agent capture: running the vendor tools found on PATH ({args.timeout_s:g}s each)...", file=sys.stderr)
    try:
        runs = capture.capture(out, timeout_s=args.timeout_s)
    except OSError as exc:
        print(f"xpu-agent capture: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 1
    if not runs:
        names = ", ".join(sorted({argv[0] for forms in capture.FORMS.values() for argv in forms}))
        print(f"xpu-agent capture: no vendor tool on PATH (looked for {names}); nothing written", file=sys.stderr)
        return 1
    for run in runs:
        code = "timed out" if run.exit_code is None else f"exit {run.exit_code}"
        print(f"{' '.join(run.argv)[:60]:<60}  {code:<10} {run.seconds:6.2f}s  {run.parsed[:160]}")
    print(f"xpu-agent capture: {len(runs)} command(s) saved in {out}; attach it to the bug report", file=sys.stderr)
    return 0


def _vendor_or_exit(v: str) -> None:
    try:
        _vendor(v)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"xpu-agent fleet: --vendors: {exc}") from None


def _with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; for `run`, settings from --config and XPU_AGENT_* fill what the flags leave unset."""
    args = parser.parse_args(argv)
    words = list(argv if argv is not None else sys.argv[1:])
    args.sim_asked = any(a.startswith("--sim-") for a in words)
    devices = getattr(args, "sim_devices", None) or getattr(args, "devices_per_node", None)
    for fault in getattr(args, "sim_fault", []):
        if devices is not None and fault.device is not None and fault.device >= devices:
            what = "--sim-devices" if hasattr(args, "sim_devices") else "--devices-per-node"
            parser.error(
                f"argument --sim-fault: dev={fault.device} is beyond the {devices} simulated device(s) "
                f"(0..{devices - 1}; {what} {devices})"
            )
    if args.command != "run":
        return args
    cfg = agent_config.load(args.config, os.environ).agent
    given = {a.split("=", 1)[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
    for field in cfg.__struct_fields__:
        value = getattr(cfg, field)
        flag = "--" + field.replace("_", "-")
        if flag in given or value is None:
            continue
        if field == "driver" and args.sim_asked:
            continue  # --sim-* flags ask for the simulator, whatever the config's driver
        if field == "mqtt":
            value = cli.bus_url(value)
        if field == "controller":
            value = cli.addresses(value)
        setattr(args, field, value)
    if args.controller is None:
        where = args.config or "flags"
        raise agent_config.ConfigError(
            where, "no controller address: give --controller HOST[:PORT] or `controller` in [agent]"
        )
    return args


def _cap_paths(sysfs: str) -> int:
    from xpuctl.agent.drivers import rsmi  # noqa: PLC0415

    paths = rsmi.cap_paths(sysfs)
    print("# /etc/systemd/system/xpu-agent.service.d/caps.conf, from `xpu-agent config cap-paths`:")
    print("# ROCm SMI sets AMD and Hygon caps by writing hwmon/hwmonN/power1_cap of each GPU, and the")
    print("# unit's ProtectKernelTunables=yes makes /sys read-only: these are this node's GPUs' hwmon")
    print("# directories, nothing more. Run it again after a GPU is added or moved.")
    print("[Service]")
    for path in paths:
        print(f"ReadWritePaths=-{path}")
    if not paths:
        print("# (no AMD or Hygon GPU with a hwmon directory on this node: nothing to allow)")
    return 0


@pipes.quiet_when_the_reader_leaves
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `xpu-agent`."""
    parser = _parser()
    try:
        args = _with_config(parser, argv)  # the config merge is `run`'s only
    except agent_config.ConfigError as exc:
        print(f"xpu-agent: {exc}", file=sys.stderr)
        return exits.CONFIG
    except argparse.ArgumentTypeError as exc:
        print(f"xpu-agent: config: {exc}", file=sys.stderr)
        return exits.CONFIG
    if args.command == "config":
        if args.what == "example":
            sys.stdout.write(resources.files("xpuctl.agent").joinpath("xpu-agent.example.toml").read_text())
            return 0
        return _cap_paths(args.sysfs)
    if args.command == "validate":
        try:
            cfg = agent_config.load(args.config, os.environ)
        except agent_config.ConfigError as exc:
            print(f"xpu-agent validate: {exc}", file=sys.stderr)
            return exits.CONFIG
        json.dump(msgspec.to_builtins(cfg), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    logs.setup(args.log_level, args.log_format, os.environ)
    if not cli.install_uvloop() and args.command in ("run", "once", "fleet"):
        log.info("uvloop is not installed: asyncio's own event loop runs (pip install 'xpuctl[fast]' for uvloop)")
    if args.command == "parse":
        return _parse(args)
    if args.command == "capture":
        return _capture(args)
    command = {"run": _run, "once": _once, "fleet": _fleet}[args.command]
    try:
        return asyncio.run(command(args))
    except tls.TlsError as exc:
        log.error("%s", exc)
        return exits.CONFIG  # the fix is in the config, a restart will not help
    except KeyboardInterrupt:
        return exits.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
