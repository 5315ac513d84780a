"""mTLS and the access rules on a real gRPC server on 127.0.0.1, with certificates minted by trustme.

One site CA signs the controller (127.0.0.1), two nodes and an operator; a second CA plays the
stranger. Refusals are checked by status code and by the counters the controller keeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
import trustme

from tests.helpers import Processes, RawStream, RunningService, free_port, wait_until, xpuctl
from tests.pki import Pki
from xpuctl.agent.adapters import codec
from xpuctl.agent.core import model
from xpuctl.common import tls
from xpuctl.controller import config, service
from xpuctl.controller.adapters import metrics
from xpuctl.controller.core import registry
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb
from xpuctl.protos.xpu.v1 import cluster_pb2_grpc
from xpuctl.protos.xpu.v1 import telemetry_pb2 as pb

pytestmark = pytest.mark.slow  # end-to-end: real processes, brokers or servers

TOKEN = "tok-" + "0123456789abcdef" * 2


class Site(Pki):
    """The controller (127.0.0.1), two nodes, an operator, a foreign and an expired certificate, a token file."""

    def __init__(self, d: pathlib.Path) -> None:
        """Mint everything."""
        super().__init__(d)
        self.issue("controller", "127.0.0.1", "localhost")
        for name in ("node-a", "node-b", "alice"):
            self.issue(name, name, common_name=name)
        self.issue("stranger-node-a", "node-a", common_name="node-a", ca=trustme.CA(organization_name="somebody else"))
        past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
        self.issue("expired-node-a", "node-a", not_before=past, not_after=past + dt.timedelta(days=1))
        self.tokens = self.write("tokens", f"# operators\nalice-token {TOKEN}\n".encode())

    def client(self, name: str | None) -> tls.ClientFiles:
        """A client that trusts the site CA and presents `name`'s certificate (None: none)."""
        if name is None:
            return tls.ClientFiles(ca_file=self.ca_file)
        return tls.ClientFiles(ca_file=self.ca_file, cert_file=self.cert(name), key_file=self.key(name))


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Site:
    return Site(tmp_path)


def tls_config(p: Site, *, open_reads: bool = False) -> config.Config:
    return config.Config(
        tls=config.Tls(cert_file=p.cert("controller"), key_file=p.key("controller"), client_ca_file=p.ca_file),
        auth=config.Auth(operator_identities=("alice",), operator_tokens_file=p.tokens, open_reads=open_reads),
    )


@pytest.fixture
async def running(pki: Site) -> AsyncIterator[RunningService]:
    svc = service.Service(
        tls_config(pki),
        listen=f"127.0.0.1:{free_port()}",
        liveness=registry.Liveness(stale_after_s=3.0, offline_after_s=10.0),
    )
    r = await RunningService(svc).start()
    yield r
    await r.stop()


def hello(node_id: str) -> bytes:
    info = model.DeviceInfo(uuid=f"{node_id}-0", index=0, vendor="nvidia", model="H100")
    return codec.hello(
        node_id=node_id,
        boot_id=str(uuid.uuid4()),
        agent_version="t",
        devices=[info],
        labels={},
        interval_s=1.0,
        acked_seq=0,
    )


async def stream_hello(target: str, files: tls.ClientFiles, node_id: str) -> pb.ControllerMessage:
    """Open Telemetry.Stream with `files`, say Hello as `node_id`, return the first answer (or raise)."""
    async with tls.secure_channel(target, files) as ch:
        s = RawStream(ch)
        try:
            return await s.exchange(hello(node_id))
        finally:
            s.call.cancel()


async def test_a_node_streams_as_itself_over_mtls(running: RunningService, pki: Site) -> None:
    first = await stream_hello(running.target, pki.client("node-a"), "node-a")
    assert first.WhichOneof("kind") == "ack"
    assert "node-a" in running.svc.state.registry.nodes


@pytest.mark.parametrize(
    ("who", "why"),
    [
        (None, "no client certificate"),
        ("stranger-node-a", "a certificate from another CA"),
        ("expired-node-a", "an expired certificate"),
    ],
)
async def test_the_handshake_refuses(running: RunningService, pki: Site, who: str | None, why: str) -> None:
    files = pki.client(who)
    if who == "stranger-node-a":  # it still trusts our controller; only its own certificate is foreign
        files = tls.ClientFiles(ca_file=pki.ca_file, cert_file=pki.cert(who), key_file=pki.key(who))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stream_hello(running.target, files, "node-a")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, why
    assert "node-a" not in running.svc.state.registry.nodes


async def test_node_a_cannot_stream_as_node_b(running: RunningService, pki: Site) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stream_hello(running.target, pki.client("node-a"), "node-b")
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'node-b' is not in this stream's certificate (node-a)" in (exc.value.details() or "")
    st = running.svc.state
    assert "node-b" not in st.registry.nodes
    assert st.ingest.counters.rejected_by_reason.get("identity_mismatch") == 1
    # the server keeps serving: the honest node still gets in
    assert (await stream_hello(running.target, pki.client("node-b"), "node-b")).WhichOneof("kind") == "ack"


async def cluster_call(target: str, files: tls.ClientFiles, token: str | None, call: str) -> grpc.StatusCode:
    creds = tls.operator_credentials(files, token)
    async with grpc.aio.secure_channel(target, creds) as ch:
        stub = cluster_pb2_grpc.ClusterStub(ch)
        try:
            if call == "set_budget":
                await stub.SetPowerBudget(cpb.SetPowerBudgetRequest(budget_w=5000.0), timeout=10)
            elif call == "cordon":
                await stub.Cordon(cpb.CordonRequest(node_id="node-a", reason="t"), timeout=10)
            elif call == "summary":
                await stub.GetSummary(cpb.GetSummaryRequest(), timeout=10)
            else:
                watch = stub.WatchEvents(cpb.WatchEventsRequest())
                await asyncio.wait_for(watch.read(), 0.5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        except TimeoutError:  # the watch is open and simply has nothing to say yet
            return grpc.StatusCode.OK
        return grpc.StatusCode.OK


OK, UNAUTH, DENIED = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("cert", "token", "call", "expected"),
    [
        ("alice", None, "set_budget", OK),  # operator certificate
        ("node-a", TOKEN, "set_budget", OK),  # operator token, from any certificate
        ("node-a", None, "set_budget", DENIED),  # a node is not an operator
        ("node-a", "tok-wrong-0123456789abcdef", "cordon", UNAUTH),  # a token that matches nobody
        ("node-a", None, "cordon", DENIED),
        ("node-a", None, "summary", DENIED),  # reads are closed unless auth.open_reads
        ("node-a", None, "watch", DENIED),
        ("alice", None, "summary", OK),
        ("alice", None, "watch", OK),
    ],
)
async def test_cluster_calls_need_an_operator(
    running: RunningService, pki: Site, cert: str, token: str | None, call: str, expected: grpc.StatusCode
) -> None:
    assert await cluster_call(running.target, pki.client(cert), token, call) == expected
    st = running.svc.state
    assert sum(st.denied.values()) == (0 if expected == OK else 1)
    if expected != OK:  # counted where Prometheus sees it
        assert f'xpu_api_denied_total{{code="{expected.name}"}} 1' in metrics.render(st, 0)
    if call == "set_budget":
        assert (st.budget_w == 5000.0) == (expected == OK)


async def test_open_reads(pki: Site) -> None:
    svc = service.Service(tls_config(pki, open_reads=True), listen=f"127.0.0.1:{free_port()}")
    r = await RunningService(svc).start()
    try:
        assert await cluster_call(r.target, pki.client("node-a"), None, "summary") == OK
        assert await cluster_call(r.target, pki.client("node-a"), None, "set_budget") == DENIED
    finally:
        await r.stop()


async def test_agent_controller_and_xpuctl_processes_over_mtls(
    pki: Site, tmp_path: pathlib.Path, processes: Processes
) -> None:
    """The programs as an operator runs them: config file, agent flags, xpuctl with a token file."""
    port = free_port()
    conf = tmp_path / "controller.toml"
    conf.write_text(
        f'[tls]\ncert_file = "{pki.cert("controller")}"\nkey_file = "{pki.key("controller")}"\n'
        f'client_ca_file = "{pki.ca_file}"\n[auth]\noperator_tokens_file = "{pki.tokens}"\n'
    )
    target = f"127.0.0.1:{port}"
    processes.start("xpuctl.controller.cli", "serve", "--listen", target, "--config", str(conf))
    processes.start(
        "xpuctl.agent.cli",
        "run",
        "--node-id",
        "node-a",
        "--controller",
        target,
        "--sim-devices",
        "2",
        "--reconnect-max-s",
        "0.5",
        "--tls-ca-file",
        pki.ca_file,
        "--tls-cert-file",
        pki.cert("node-a"),
        "--tls-key-file",
        pki.key("node-a"),
    )
    token_file = tmp_path / "alice.token"
    token_file.write_text(TOKEN + "\n")
    tls_flags = [
        "--tls-ca-file",
        pki.ca_file,
        "--tls-cert-file",
        pki.cert("node-b"),
        "--tls-key-file",
        pki.key("node-b"),
    ]

    async def node_a_listed() -> bool:
        rc, out, _ = await xpuctl(target, *tls_flags, "--token-file", str(token_file), "nodes")
        return rc == 0 and "node-a" in out

    for _ in range(100):
        if await node_a_listed():
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("node-a never appeared in `xpuctl nodes` over mTLS")
    rc, _, err = await xpuctl(target, *tls_flags, "budget", "4000")  # node-b's certificate, no token
    assert rc == 5 and "PERMISSION_DENIED" in err and "operator" in err
    rc, out, err = await xpuctl(target, *tls_flags, "--token-file", str(token_file), "budget", "4000")
    assert rc == 0, err
    assert "4,000" in out or "4000" in out
    rc, _, err = await xpuctl(target, "--token-file", str(token_file), "summary")  # a token in the clear: refused here
    assert rc == 2 and "needs --tls-ca-file" in err


def hello_with(node_id: str, uuids: list[str]) -> bytes:
    """A Hello as `node_id` declaring these device ids."""
    infos = [model.DeviceInfo(uuid=u, index=i, vendor="nvidia", model="H100") for i, u in enumerate(uuids)]
    return codec.hello(
        node_id=node_id,
        boot_id=str(uuid.uuid4()),
        agent_version="t",
        devices=infos,
        labels={},
        interval_s=1.0,
        acked_seq=0,
    )


async def test_node_a_cannot_take_node_bs_devices(running: RunningService, pki: Site) -> None:
    # Issue 19.1: with its own certificate, node-a declared node-b's device ids and took them over:
    # node-b listed 0 devices, node-a's values landed in node-b-0's history.
    st = running.svc.state
    async with tls.secure_channel(running.target, pki.client("node-b")) as b_channel:
        b = RawStream(b_channel)
        assert (await b.exchange(hello_with("node-b", ["node-b-0", "node-b-1"]))).WhichOneof("kind") == "ack"
        async with tls.secure_channel(running.target, pki.client("node-a")) as a_channel:
            a = RawStream(a_channel)
            refused = await a.fails(hello_with("node-a", ["node-a-0", "node-b-0"]))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "device 'node-b-0' belongs to node 'node-b'" in (refused.details() or "")
        assert st.ingest.counters.rejected_by_reason.get("device_owned") == 1
        assert st.registry.node_of_slot[st.registry.slot_of_uuid["node-b-0"]] == "node-b"
        assert sorted(v.info.uuid for v in st.views.devices(time.time_ns()) if v.node_id == "node-b") == [
            "node-b-0",
            "node-b-1",
        ]
        # an operator cannot release it from under a node that streams and lists it
        async with tls.secure_channel(running.target, pki.client("alice")) as ch:
            stub = cluster_pb2_grpc.ClusterStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as busy:
                await stub.ReleaseDevice(cpb.ReleaseDeviceRequest(device_uuid="node-b-0", reason="moved"), timeout=5)
            assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        b.call.cancel()
    await wait_until(lambda: st.registry.nodes["node-b"].streams == 0, timeout_s=10, what="node-b's stream to end")

    # node-b is down and the card moved: a node cannot release it, an operator can (audited)
    async with tls.secure_channel(running.target, pki.client("node-a")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await cluster_pb2_grpc.ClusterStub(ch).ReleaseDevice(
                cpb.ReleaseDeviceRequest(device_uuid="node-b-0", reason="mine now"), timeout=5
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with tls.secure_channel(running.target, pki.client("alice")) as ch:
        r = await cluster_pb2_grpc.ClusterStub(ch).ReleaseDevice(
            cpb.ReleaseDeviceRequest(device_uuid="node-b-0", reason="card moved to node-a"), timeout=5
        )
    assert r.node_id == "node-b"
    (audit,) = [e for e in st.recent_events if e.kind == "device.released"]
    assert audit.message == "node-b-0 released from node node-b by cert:alice: card moved to node-a"
    async with tls.secure_channel(running.target, pki.client("node-a")) as ch:
        a = RawStream(ch)
        assert (await a.exchange(hello_with("node-a", ["node-a-0", "node-b-0"]))).WhichOneof("kind") == "ack"
        a.call.cancel()
    assert st.registry.node_of_slot[st.registry.slot_of_uuid["node-b-0"]] == "node-a"


async def get_metrics(port: int, ctx: ssl.SSLContext | None) -> str:
    """GET /metrics on 127.0.0.1:port (HTTPS with `ctx`); the response text."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None), 10
    )
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.read(), 10)).decode()
    finally:
        writer.close()


async def page(port: int, ctx: ssl.SSLContext | None) -> bool:
    """Whether GET /metrics returns the page."""
    try:
        return "xpu_devices" in await get_metrics(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return False


async def test_metrics_demand_a_client_certificate_under_mtls(pki: Site) -> None:
    # Issue 19: /metrics stayed plaintext and open (listing every device id) with mTLS on.
    svc = service.Service(tls_config(pki), listen=f"127.0.0.1:{free_port()}", metrics_listen=f"127.0.0.1:{free_port()}")
    r = await RunningService(svc).start()
    try:
        await stream_hello(r.target, pki.client("node-a"), "node-a")
        with_cert = tls.ssl_context(pki.ca_file, pki.cert("node-b"), pki.key("node-b"))
        assert "xpu_devices 1" in await get_metrics(svc.metrics_port, with_cert)
        # without a client certificate (TLS 1.3 says so after the handshake) or over plain HTTP: no page
        assert not await page(svc.metrics_port, tls.ssl_context(pki.ca_file, None, None))
        assert not await page(svc.metrics_port, None)
    finally:
        await r.stop()
