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
    shard: str = ""  # a sharded controller's shard and fencing epoch (DESIGN 11); "" and 0 otherwise
    epoch: Annotated[int, msgspec.Meta(ge=0)] = 0


class RestoreDefault(msgspec.Struct, frozen=True, kw_only=True, tag="restore_default", tag_field="kind"):
    """Put one device back on its default cap."""

    id: Id
    device_uuid: Uuid
    reason: Text = ""
    issued_at_ns: int
    expires_at_ns: int
    shard: str = ""
    epoch: Annotated[int, msgspec.Meta(ge=0)] = 0


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
    address: str = ""  # a shard owner's lease: where agents reach it (DESIGN 11)


class SafeCaps(msgspec.Struct, frozen=True, kw_only=True):
    """`safe/<node>` (retained): the caps a node of a shard goes to when it loses its owner too
    long, pushed in advance by the owner so that the shard's devices together stay within its
    static share of the site budget (DESIGN 8, 11). Devices not named restore their default.
    """

    shard: str
    epoch: Annotated[int, msgspec.Meta(ge=0)]
    at_ns: int = 0
    caps: dict[Uuid, CapW] = msgspec.field(default_factory=dict)


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

    def lease(self, shard: str = "") -> str:
        """The lease of a shard's owner (`status/controller/<shard>`), or of the one controller."""
        return f"{self.controller_status}/{shard}" if shard else self.controller_status

    def safe(self, node_id: str) -> str:
        """A node's site-safe caps (sharded deployments)."""
        return f"{self.root}/safe/{node_id}"

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
    ca_file: str | None = None  # mqtts: the broker's CA (default: the system's CAs)
    cert_file: str | None = None  # mqtts: our client certificate (its CN is our MQTT username)
    key_file: str | None = None
    username: str | None = None
    password_file: str | None = None  # first line is the password (never in the URL: `ps` shows it)


URL_OPTIONS = ("protocol", "ca", "cert", "key", "password_file")


def parse_url(text: str) -> BusUrl:
    """Parse `mqtt[s]://[USER@]HOST[:PORT][?OPTION=VALUE&...]` (DESIGN 6).

    Options: `protocol=5|3.1.1`; for mqtts `ca=`, `cert=`, `key=` (PEM files); `password_file=`.

    Raises:
        ValueError: the message names the bad part and the expected form.
    """
    expected = (
        "expected mqtt[s]://[USER@]HOST[:PORT][?OPTION=VALUE&...] with options protocol=5|3.1.1, "
        "ca=, cert=, key= (PEM files, mqtts only), password_file="
    )
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        msg = f"bad MQTT URL {text!r}: scheme must be mqtt or mqtts; {expected}"
        raise ValueError(msg)
    rest, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in URL_OPTIONS or not eq or not value:
            msg = f"bad MQTT URL {text!r}: unknown or empty option {item!r}; {expected}"
            raise ValueError(msg)
        options[key] = value
    protocol = options.get("protocol", "auto")
    if protocol not in ("auto", "5", "3.1.1"):
        msg = f"bad MQTT URL {text!r}: protocol={protocol!r}; {expected}"
        raise ValueError(msg)
    user, at, rest = rest.rpartition("@")
    if at and (not user or ":" in user):
        msg = f"bad MQTT URL {text!r}: give the user as USER@ and the password with password_file=; {expected}"
        raise ValueError(msg)
    host, colon, port_text = rest.rstrip("/").rpartition(":")
    if not colon:
        host, port_text = rest.rstrip("/"), ""
    if not host:
        msg = f"bad MQTT URL {text!r}: no host; {expected}"
        raise ValueError(msg)
    tls = scheme == "mqtts"
    if not tls and any(k in options for k in ("ca", "cert", "key")):
        msg = f"bad MQTT URL {text!r}: ca=, cert= and key= need mqtts://; {expected}"
        raise ValueError(msg)
    if ("cert" in options) != ("key" in options):
        msg = f"bad MQTT URL {text!r}: give cert= and key= together; {expected}"
        raise ValueError(msg)
    try:
        port = int(port_text) if port_text else (8883 if tls else 1883)
    except ValueError:
        msg = f"bad MQTT URL {text!r}: port {port_text!r} is not a number; {expected}"
        raise ValueError(msg) from None
    if not 0 < port < 65536:
        msg = f"bad MQTT URL {text!r}: port {port} is out of range; {expected}"
        raise ValueError(msg)
    return BusUrl(
        host=host.strip("[]"),
        port=port,
        tls=tls,
        protocol=protocol,
        ca_file=options.get("ca"),
        cert_file=options.get("cert"),
        key_file=options.get("key"),
        username=user or None,
        password_file=options.get("password_file"),
    )
