"""The MQTT half of the wire contract (DESIGN 5): topics and JSON payloads of the action bus.

Hand-written (the gRPC half is generated from the .proto files). Both the agent and the
controller import it; it holds types and names only, no behaviour. Every meaning is in the JSON
payload (id, expiry, reply topic by convention), so the bus works on MQTT 3.1.1 brokers; MQTT 5
properties (message expiry, response topic, correlation data) are added where the broker has them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# A cap in watts: positive and below any real device (a guard against garbage like 1e300).
CapW = Annotated[float, msgspec.Meta(gt=0, lt=100_000)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Uuid = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]

ONLINE, LOST, OFFLINE = "online", "lost", "offline"


class SetPowerCap(msgspec.Struct, frozen=True, kw_only=True, tag="set_power_cap", tag_field="kind"):
    """Cap one device at `power_cap_w` (the agent clamps it to the device's range)."""

    id: Id
    device_uuid: Uuid
    power_cap_w: CapW
    reason: Text = ""
    issued_at_ns: int
    expires_at_ns: int


class RestoreDefault(msgspec.Struct, frozen=True, kw_only=True, tag="restore_default", tag_field="kind"):
    """Put one device back on its default cap."""

    id: Id
    device_uuid: Uuid
    reason: Text = ""
    issued_at_ns: int
    expires_at_ns: int


Command = SetPowerCap | RestoreDefault


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's answer on `cmd/<node>/res`. `id` is empty when the command could not be read."""

    id: str
    ok: bool
    applied_cap_w: float | None = None
    error: str = ""


class DeviceState(msgspec.Struct, frozen=True, kw_only=True):
    """One device in a node's reported state."""

    uuid: str
    power_limit_w: float | None
    default_w: float | None
    fail_safe: bool


class NodeState(msgspec.Struct, frozen=True, kw_only=True):
    """A node's reported state (`state/<node>`, retained): enforced caps and fail-safe."""

    node_id: str
    at_ns: int
    fail_safe: bool
    devices: list[DeviceState]
    commands_applied: int = 0
    commands_rejected: int = 0


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """`status/<node>` and `status/controller` (retained, with a last will saying `lost`)."""

    state: str
    boot_id: str = ""
    at_ns: int = 0
    lease_s: float = 0.0


class Topics:
    """Topic names under a root (default `xpu/v1`)."""

    def __init__(self, root: str = "xpu/v1") -> None:
        """Names under `root`."""
        self.root = root.rstrip("/")

    def cmd_req(self, node_id: str) -> str:
        """Commands for a node."""
        return f"{self.root}/cmd/{node_id}/req"

    def cmd_res(self, node_id: str) -> str:
        """A node's answers."""
        return f"{self.root}/cmd/{node_id}/res"

    def state(self, node_id: str) -> str:
        """A node's reported state."""
        return f"{self.root}/state/{node_id}"

    def status(self, node_id: str) -> str:
        """A node's (or, with node_id `controller`, the controller's) liveness."""
        return f"{self.root}/status/{node_id}"

    @property
    def controller_status(self) -> str:
        """The controller's lease."""
        return self.status("controller")

    @property
    def events(self) -> str:
        """Every event of WatchEvents."""
        return f"{self.root}/events"

    def node_of(self, topic: str) -> str:
        """The node level of a `<root>/<kind>/<node>[/...]` topic ('' when it is not one)."""
        parts = topic[len(self.root) + 1 :].split("/") if topic.startswith(self.root + "/") else []
        return parts[1] if len(parts) >= 2 else ""


class BusUrl(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed `--mqtt` value."""

    host: str
    port: int
    tls: bool = False
    protocol: str = "auto"  # auto (MQTT 5, else 3.1.1) | 5 | 3.1.1


def parse_url(text: str) -> BusUrl:
    """Parse `mqtt://host[:port][?protocol=5|3.1.1]` or `mqtts://...` (DESIGN 6).

    Raises:
        ValueError: the message names the bad part and the expected form.
    """
    expected = "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], optionally ?protocol=5|3.1.1"
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        msg = f"bad MQTT URL {text!r}: scheme must be mqtt or mqtts; {expected}"
        raise ValueError(msg)
    rest, _, query = rest.partition("?")
    protocol = "auto"
    if query:
        key, _, value = query.partition("=")
        if key != "protocol" or value not in ("5", "3.1.1"):
            msg = f"bad MQTT URL {text!r}: unknown option {query!r}; {expected}"
            raise ValueError(msg)
        protocol = value
    host, colon, port_text = rest.rstrip("/").rpartition(":")
    if not colon:
        host, port_text = rest.rstrip("/"), ""
    if not host:
        msg = f"bad MQTT URL {text!r}: no host; {expected}"
        raise ValueError(msg)
    tls = scheme == "mqtts"
    try:
        port = int(port_text) if port_text else (8883 if tls else 1883)
    except ValueError:
        msg = f"bad MQTT URL {text!r}: port {port_text!r} is not a number; {expected}"
        raise ValueError(msg) from None
    if not 0 < port < 65536:
        msg = f"bad MQTT URL {text!r}: port {port} is out of range; {expected}"
        raise ValueError(msg)
    return BusUrl(host=host.strip("[]"), port=port, tls=tls, protocol=protocol)
