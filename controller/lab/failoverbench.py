"""`xpu-controller bench --scenario failover`: shards x candidates x simulated nodes on this machine,
the owner of each shard killed in turn (issue 14.7).

Starts a private 3-member etcd and a private Mosquitto on free loopback ports, `--candidates`
controller processes per shard (`serve --shard sK`, nodes `sK-*`) and one `xpu-agent fleet` per
shard given every candidate. Once every node streams, it kills each shard's owner in turn
(SIGKILL, or with `--freeze` SIGSTOP past the lease TTL and SIGCONT after) and measures:
- takeover: the kill to a new owner's key in etcd;
- streams back: the kill to every node of the shard streaming to the new owner;
- batches: what the new owner lacks (`gap_batches`, seqs never received) against what the agents
  say they dropped (`dropped_total`), and batches stored twice (`duplicate_batches`);
- stale epochs: answers on the bus in which an agent refused a command of a deposed owner.
Everything it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiomqtt
import grpc
import grpc.aio
import msgspec

from xpuctl.common import ports
from xpuctl.controller.adapters import etcd
from xpuctl.controller.lab import bench, etcdcluster
from xpuctl.protos.xpu.v1 import bus
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc as cgrpc

TTL_S = 5.0  # the controller's default lease TTL


def shards_of(args: argparse.Namespace) -> int:
    """`--shards`, 2 when not given."""
    return int(args.shards or 2)


def _say(text: str, *, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


async def _connected(address: str) -> list[cpb.Node]:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await cgrpc.ClusterStub(channel).ListNodes(cpb.ListNodesRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return []
    return [n for n in reply.nodes if n.connected]


class Stale:
    """Counts agents' answers that refuse a command for its stale epoch (a subscriber on the broker)."""

    def __init__(self, port: int) -> None:
        """Not connected until `run`."""
        self.port = port
        self.count = 0
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Count until cancelled."""
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="bench-failover") as client:
            await client.subscribe("xpu/v1/cmd/+/res", qos=1)
            self.ready.set()
            async for m in client.messages:
                with contextlib.suppress(msgspec.DecodeError):
                    result = msgspec.json.decode(m.payload if isinstance(m.payload, bytes) else b"", type=bus.Result)
                    self.count += "stale epoch" in result.error


async def _until(check: Any, timeout_s: float, what: str) -> float:  # noqa: ANN401 - an async predicate
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            msg = f"timed out after {timeout_s:g}s waiting for {what}"
            raise TimeoutError(msg)
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _start(
    args: argparse.Namespace, work: pathlib.Path, etcd_urls: str, procs: list[subprocess.Popen[bytes]]
) -> tuple[int, dict[str, dict[str, subprocess.Popen[bytes]]]]:
    """Mosquitto, the candidates and one fleet per shard: the broker's port and each shard's candidates.

    Raises:
        RuntimeError: Mosquitto is missing or does not listen.
    """
    py = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    binary = bench.mosquitto_binary()
    if binary is None:
        msg = "mosquitto is not installed: apt-get install mosquitto (scripts/test does it)"
        raise RuntimeError(msg)
    mqtt_port = ports.free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(bench.MOSQUITTO_CONF.format(port=mqtt_port))
    procs.append(subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL))  # noqa: S603
    bench.wait_port(mqtt_port, procs[-1], "mosquitto")
    mqtt = f"mqtt://127.0.0.1:{mqtt_port}"
    addresses: dict[str, dict[str, subprocess.Popen[bytes]]] = {}
    for k in range(shards_of(args)):
        shard = f"s{k + 1}"
        (work / f"{shard}.toml").write_text(f'[shard]\nnodes = ["{shard}-*"]\n')
        addresses[shard] = {}
        for _ in range(args.candidates):
            address = f"127.0.0.1:{ports.free_port()}"
            argv = [py, "-m", "xpuctl.controller.cli", "--log-level", "ERROR", "serve", "--listen", address]
            argv += ["--config", str(work / f"{shard}.toml"), "--mqtt", mqtt, "--state-dir", "none"]
            argv += ["--shard", shard, "--etcd", etcd_urls, "--advertise", address]
            with (work / f"{shard}-{address.rsplit(':', 1)[1]}.log").open("ab") as log:
                procs.append(subprocess.Popen(argv, env=env, stderr=log))  # noqa: S603 - our own program
            addresses[shard][address] = procs[-1]
        fleet = [py, "-m", "xpuctl.agent.cli", "--log-level", "ERROR", "fleet", "--shard", shard]
        fleet += ["--controller", ",".join(addresses[shard]), "--nodes", str(args.nodes), "--node-prefix", shard]
        fleet += ["--mqtt", mqtt, "--vendors", "nvidia,amd,ascend", "--failsafe-after-s", "30"]
        with (work / f"{shard}-fleet.log").open("ab") as log:  # a killed owner's peers complain: kept, not shown
            procs.append(subprocess.Popen(fleet, env=env, stderr=log))  # noqa: S603 - our own program
    return mqtt_port, addresses


async def _measure(
    args: argparse.Namespace, etcd_urls: str, mqtt_port: int, addresses: dict[str, dict[str, subprocess.Popen[bytes]]]
) -> dict[str, Any]:
    """Wait for every node, then fail each shard's owner over in turn."""
    quiet = args.json
    client = etcd.Etcd(etcd_urls)
    stale = Stale(mqtt_port)
    counter = asyncio.create_task(stale.run())
    try:
        await asyncio.wait_for(stale.ready.wait(), 10)
        owners: dict[str, tuple[str, int]] = {}

        async def all_streaming() -> bool:
            nonlocal owners
            owners = await client.owners("/xpu/v1")
            if len(owners) < shards_of(args):
                return False
            counts = [len(await _connected(a)) for a, _ in owners.values()]
            return all(c == args.nodes for c in counts)

        await _until(all_streaming, 120, "every node to stream to its shard's owner")
        rows = [
            await _fail_over(args, client, shard, owners[shard], addresses[shard], quiet=quiet)
            for shard in sorted(owners)
        ]
    finally:
        counter.cancel()
        await asyncio.gather(counter, return_exceptions=True)
        await client.close()
    return _report(args, rows, stale.count)


async def _fail_over(
    args: argparse.Namespace,
    client: etcd.Etcd,
    shard: str,
    owner: tuple[str, int],
    candidates: dict[str, subprocess.Popen[bytes]],
    *,
    quiet: bool,
) -> dict[str, Any]:
    address, epoch = owner
    proc = candidates[address]
    how = "SIGSTOP" if args.freeze else "SIGKILL"
    _say(f"bench: {shard}: {how} to the owner {address} (epoch {epoch})", quiet=quiet)
    os.kill(proc.pid, signal.SIGSTOP if args.freeze else signal.SIGKILL)
    started = time.monotonic()
    new: tuple[str, int] = ("", 0)

    async def taken() -> bool:
        nonlocal new
        new = (await client.owners("/xpu/v1")).get(shard, ("", 0))
        return new[0] not in ("", address)

    takeover_s = await _until(taken, 4 * TTL_S, f"a new owner of {shard}")

    async def back() -> bool:
        return len(await _connected(new[0])) == int(args.nodes)

    streams_s = takeover_s + await _until(back, 60, f"every node of {shard} streaming to {new[0]}")
    if args.freeze:
        await asyncio.sleep(max(0.0, TTL_S + 2 - (time.monotonic() - started)))
        os.kill(proc.pid, signal.SIGCONT)
    await asyncio.sleep(3.0)  # resent batches settle
    nodes = await _connected(new[0])
    row = {
        "shard": shard,
        "takeover_s": round(takeover_s, 2),
        "streams_back_s": round(streams_s, 2),
        "old_epoch": epoch,
        "new_epoch": new[1],
        "gap_batches": sum(n.gap_batches for n in nodes),
        "dropped_reported": sum(n.dropped_total for n in nodes),
        "duplicate_batches": sum(n.duplicate_batches for n in nodes),
    }
    _say(
        f"bench: {shard}: new owner {new[0]} after {takeover_s:.2f} s, every node back after {streams_s:.2f} s; "
        f"gap {row['gap_batches']}, dropped {row['dropped_reported']}, duplicates {row['duplicate_batches']}",
        quiet=quiet,
    )
    return row


def _report(args: argparse.Namespace, rows: list[dict[str, Any]], stale: int) -> dict[str, Any]:
    takeovers = [r["takeover_s"] for r in rows]
    streams = [r["streams_back_s"] for r in rows]
    return {
        "scenario": "failover",
        "how": "sigstop" if args.freeze else "sigkill",
        "shards": shards_of(args),
        "candidates": args.candidates,
        "nodes_per_shard": args.nodes,
        "devices": shards_of(args) * args.nodes * 8,
        "lease_ttl_s": TTL_S,
        "takeover_s_median": round(statistics.median(takeovers), 2),
        "takeover_s_max": max(takeovers),
        "streams_back_s_median": round(statistics.median(streams), 2),
        "streams_back_s_max": max(streams),
        "gap_batches": sum(r["gap_batches"] for r in rows),
        "dropped_reported": sum(r["dropped_reported"] for r in rows),
        "duplicate_batches": sum(r["duplicate_batches"] for r in rows),
        "stale_epoch_refused": stale,
        "per_shard": rows,
    }


def run(args: argparse.Namespace) -> int:
    """Run the scenario; print the report (a table, or one JSON object with --json)."""
    args.nodes = args.nodes or 64  # simulated nodes per shard (the bench's --nodes has no default)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="xpu-failover-") as tmp:
        cluster: etcdcluster.EtcdCluster | None = None
        try:
            cluster = etcdcluster.EtcdCluster(pathlib.Path(tmp))
            cluster.start()
            cluster.wait_healthy()
            _say(f"bench: etcd (3 members) at {cluster.urls}", quiet=args.json)
            mqtt_port, addresses = _start(args, pathlib.Path(tmp), cluster.urls, procs)
            _say(
                f"bench: {shards_of(args)} shard(s) x {args.candidates} candidate(s), {args.nodes} simulated node(s) "
                "of 8 devices each per shard; waiting for every node to stream",
                quiet=args.json,
            )
            report = asyncio.run(_measure(args, cluster.urls, mqtt_port, addresses))
        except (etcdcluster.EtcdError, RuntimeError, TimeoutError) as exc:
            print(f"xpu-controller bench --scenario failover: {exc}", file=sys.stderr)
            return 1
        finally:
            if cluster is not None:
                cluster.stop()
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGCONT)
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"failover ({report['how']}): {report['shards']} shard(s) x {report['candidates']} candidate(s), "
        f"{report['devices']} devices, lease TTL {TTL_S:g} s"
    )
    print(
        f"  takeover (kill to new owner)      median {report['takeover_s_median']:.2f} s, max {report['takeover_s_max']:.2f} s"
    )
    print(
        f"  every node streaming again         median {report['streams_back_s_median']:.2f} s, "
        f"max {report['streams_back_s_max']:.2f} s"
    )
    print(
        f"  batches the new owners lack        {report['gap_batches']} "
        f"(agents reported {report['dropped_reported']} dropped); stored twice: {report['duplicate_batches']}"
    )
    print(f"  commands refused for a stale epoch {report['stale_epoch_refused']}")
    return 0
