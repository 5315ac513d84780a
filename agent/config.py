"""Agent settings from TOML (`[agent]`), with `XPU_AGENT_<KEY>` environment variables on top;
flags on the command line win over both (DESIGN 6). Unknown keys are errors naming the key.
Nothing else in the agent reads files or the environment for settings.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Annotated

import msgspec

from xpuctl.common import settings

# finite, sane ranges: inf and NaN fail these bounds (as in the controller's config)
Positive = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Count = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]


class Agent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`xpu-agent run` settings; each is also a flag of the same name."""

    node_id: str | None = None
    """Node identity (default: the host name); with mTLS it must match the certificate."""
    controller: str | None = None
    """Controller address HOST:PORT, or a shard's candidates HOST:PORT,HOST:PORT,... (the agent follows the owner)."""
    shard: str | None = None
    """The shard whose owner's lease (`status/controller/<shard>`) this node follows; none: the one controller's."""
    mqtt: str | None = None
    """Action bus URL (mqtt://HOST:PORT or mqtts://...); without it the agent only reports."""
    driver: str = "auto"
    """auto (every vendor library and tool on PATH), a vendor (nvidia, ascend, cambricon, metax,
    iluvatar, kunlunxin, moorethreads, enflame, amd, hygon, thead), or sim (simulated devices)."""
    interval_s: Positive = 1.0
    """Sampling interval."""
    driver_timeout_s: Positive = 5.0
    """A driver call longer than this makes its devices unknown."""
    rediscover_s: Positive = 30.0
    """A driver whose discovery failed (tool broken, driver not loaded yet) is tried again this often."""
    buffer_batches: Count = 600
    """Batches kept while the controller is unreachable (then the oldest are dropped, counted)."""
    reconnect_max_s: Positive = 5.0
    """Cap of the reconnect backoff (jittered): a restarted controller has its agents back within it."""
    failsafe_after_s: Positive = 15.0
    """Restore default caps when the controller has been silent this long."""
    max_command_lifetime_s: Positive = 300.0
    """Refuse a command that would stay valid longer than this (the controller's default is 10 s): a
    command with a far expiry could be replayed long after it was meant."""
    tls_ca_file: str | None = None
    """CA of the controller's certificate (PEM); setting it turns TLS on for the gRPC stream."""
    tls_cert_file: str | None = None
    """This node's certificate (PEM) for mTLS; its SAN or CN must be the node id."""
    tls_key_file: str | None = None
    """The key of tls_cert_file (PEM)."""
    tls_server_name: str | None = None
    """Name expected in the controller's certificate when it differs from the host in `controller`."""


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every agent setting."""

    agent: Agent = msgspec.field(default_factory=Agent)


class ConfigError(ValueError):
    """A config that cannot be used; names the file (or variable), the key and the problem."""

    def __init__(self, where: str, problem: str) -> None:
        """Keep the facts; build the message."""
        super().__init__(f"config {where}: {problem}")
        self.where, self.problem = where, problem


def load(path: str | pathlib.Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """The file (optional) with `XPU_AGENT_<KEY>` on top.

    Raises:
        ConfigError: unreadable file, bad TOML, an unknown key or a bad value (with its path).
    """
    try:
        raw, where = settings.layered(path, environ, ["agent"])
    except settings.SettingsError as exc:
        raise ConfigError(exc.where, exc.problem) from exc
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(where, f"{exc}; `xpu-agent config example` prints every key") from exc
