"""MQTT over TLS on a real Mosquitto: client certificates whose CN is the MQTT username
(`use_identity_as_username`), the shipped ACL on top, and both programs connecting with
`mqtts://...?ca=&cert=&key=` URLs. Certificates are minted by trustme for each test.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
from collections.abc import Iterator

import aiomqtt
import pytest
import trustme

from tests.helpers import ROOT, Mosquitto, Processes, RunningService, free_port, wait_until
from tests.pki import Pki
from xpuctl.common import mqtt_session, tls
from xpuctl.controller import config, service
from xpuctl.controller.core import registry
from xpuctl.protos.xpu.v1 import bus

pytestmark = pytest.mark.slow  # end-to-end: real processes, brokers or servers

ACL = ROOT / "deploy" / "mosquitto" / "xpuctl.acl"


class TlsBroker(Mosquitto):
    """The test Mosquitto with its listener on TLS, requiring a certificate from the site CA."""

    def __init__(self, d: pathlib.Path) -> None:
        """Mint the site's certificates and write the config (the listener line is already in it)."""
        super().__init__(d)
        self.d = d
        pki = Pki(d)
        self.ca_file = pki.ca_file
        pki.issue("broker", "127.0.0.1")
        for name in ("controller", "node-a", "node-b"):
            pki.issue(name, name, common_name=name)
        pki.issue("stranger", "node-a", common_name="node-a", ca=trustme.CA())
        run_as = "user root\n" if os.geteuid() == 0 else ""  # mosquitto drops to `mosquitto`, which cannot read tmp
        self.conf.write_text(
            self.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
            + f"{run_as}cafile {self.ca_file}\ncertfile {d / 'broker.pem'}\nkeyfile {d / 'broker.key'}\n"
            f"require_certificate true\nuse_identity_as_username true\nacl_file {ACL}\n"
        )

    def tls_url(self, who: str | None) -> str:
        base = f"mqtts://127.0.0.1:{self.port}?ca={self.ca_file}&protocol=5"
        return base if who is None else f"{base}&cert={self.d / who}.pem&key={self.d / who}.key"


@pytest.fixture
def broker(tmp_path: pathlib.Path) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path)
    b.start()
    yield b
    b.stop()


def client(url: str, ident: str) -> aiomqtt.Client:
    u = bus.parse_url(url)
    return aiomqtt.Client(
        u.host,
        u.port,
        identifier=ident,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
        **mqtt_session.connect_kwargs(u),
    )


async def test_certificate_identity_confines_a_node(broker: TlsBroker) -> None:
    async with client(broker.tls_url("controller"), "t-ctl") as ctl, client(broker.tls_url("node-a"), "t-a") as a:
        await a.subscribe("xpu/v1/cmd/node-a/req", qos=1)
        await a.subscribe("xpu/v1/cmd/node-b/req", qos=1)  # the ACL makes this deliver nothing
        await a.subscribe("#", qos=1)
        await ctl.publish("xpu/v1/cmd/node-b/req", b"for b", qos=1)
        await ctl.publish("xpu/v1/cmd/node-a/req", b"for a", qos=1)
        async with asyncio.timeout(10):
            async for msg in a.messages:
                # B's command was published first: had the ACL let it through, it would arrive first
                assert msg.payload == b"for a", f"node-a read {msg.topic}"
                break


@pytest.mark.parametrize("who", [None, "stranger"])
async def test_the_broker_refuses_without_a_certificate_of_the_site(broker: TlsBroker, who: str | None) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker.tls_url(who), f"t-{who}"):
            pass


def test_bad_tls_files_are_named() -> None:
    u = bus.parse_url("mqtts://127.0.0.1?ca=/nonexistent/ca.pem")
    with pytest.raises(tls.TlsError, match=re.escape("CA file '/nonexistent/ca.pem': cannot read it")):
        mqtt_session.connect_kwargs(u)
    with pytest.raises(ValueError, match="need mqtts://"):
        bus.parse_url("mqtt://127.0.0.1?ca=/x.pem")
    with pytest.raises(ValueError, match="cert= and key= together"):
        bus.parse_url("mqtts://127.0.0.1?cert=/x.pem")
    with pytest.raises(ValueError, match="password_file="):
        bus.parse_url("mqtts://user:secret@127.0.0.1")
    u = bus.parse_url("mqtts://node-a@broker:8884?password_file=/p&protocol=3.1.1")
    assert (u.username, u.password_file, u.port, u.protocol, u.tls) == ("node-a", "/p", 8884, "3.1.1", True)


async def test_controller_and_agent_over_mqtts(broker: TlsBroker, processes: Processes) -> None:
    """The closed loop with both programs on TLS URLs: the agent applies the controller's caps."""
    cfg = config.Config(
        power=config.Power(budget_w=1500.0, period_s=0.5),
        bus=config.Bus(url=broker.tls_url("controller"), heartbeat_s=0.5),
    )
    svc = service.Service(
        cfg, listen=f"127.0.0.1:{free_port()}", liveness=registry.Liveness(stale_after_s=3.0, offline_after_s=10.0)
    )
    ctl = await RunningService(svc).start()
    try:
        processes.start(
            "xpuctl.agent.cli",
            "run",
            "--node-id",
            "node-a",
            "--controller",
            ctl.target,
            "--mqtt",
            broker.tls_url("node-a"),
            "--sim-vendor",
            "nvidia",
            "--sim-devices",
            "4",
            "--sim-workload",
            "training",
            "--reconnect-max-s",
            "0.5",
        )
        await wait_until(
            lambda: svc.node_bus_status.get("node-a") == "online", timeout_s=60, what="node-a online over mqtts"
        )
        await wait_until(
            lambda: (s := svc.node_states.get("node-a")) is not None and s.commands_applied > 0,
            timeout_s=60,
            what="a cap applied by node-a",
        )
        state = svc.node_states["node-a"]
        assert not state.fail_safe
        assert any(
            d.power_limit_w is not None and d.default_w is not None and d.power_limit_w < d.default_w
            for d in state.devices
        ), state
    finally:
        await ctl.stop()
