"""Controller settings: grouped, typed, frozen; loaded once at startup from TOML.

Every field has a default that works for the demo. A TOML file may set any of them under its
group (`[detect]`, `[power]`, `[bus]`, `[tls]`, `[auth]`, `[state]`, `[limits]`); an unknown key is an error that names the key.
Nothing else in the controller reads files or the environment for settings.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from xpuctl.common import settings
from xpuctl.controller.errors import XpuError

# Every number has a finite, sane range (issue 18.11): inf and NaN fail these bounds, and no
# setting can spin a core (a period of a nanosecond) or overflow a timer (an infinite TTL).
Positive = Annotated[float, msgspec.Meta(gt=0, le=1e6)]
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e6)]
Count = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0.01, le=86_400)]  # a duration: up to a day
Period = Annotated[float, msgspec.Meta(ge=0.05, le=3_600)]  # a loop period: at most 20 a second
Watts = Annotated[float, msgspec.Meta(gt=0, le=1e9)]  # a budget: up to a gigawatt


class Detect(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Thresholds of the anomaly detectors (DESIGN 8). Each raises at one level, clears at another."""

    thermal_margin_c: NonNegative = 3.0
    """Raise `thermal` at this far below the device's slowdown temperature."""
    thermal_clear_margin_c: NonNegative = 8.0
    """Clear `thermal` once this far below the slowdown temperature."""
    thermal_rise_c_per_s: Positive = 1.0
    """Raise `thermal_rise` when the temperature climbs this fast ..."""
    thermal_rise_window_c: Positive = 25.0
    """... while within this many degrees of the slowdown temperature (a cold start is no alarm)."""
    thermal_rise_samples: Count = 3
    """Samples over which the rate of rise is measured."""
    overcap_ratio: Positive = 1.05
    """Raise `power_over_cap` when power exceeds the enforced limit by this factor ..."""
    overcap_margin_w: NonNegative = 5.0
    """... plus this many watts ..."""
    overcap_samples: Count = 3
    """... on this many samples in a row."""
    ecc_storm_per_s: Positive = 100.0
    """Raise `ecc_storm` at this many corrected ECC errors per second ..."""
    ecc_storm_clear_per_s: NonNegative = 10.0
    """... and clear it below this rate."""
    ecc_window_samples: Count = 10
    """Samples over which ECC rates are measured."""
    ecc_clear_after_s: Seconds = 60.0
    """`ecc_uncorrected` clears after this long without a new uncorrected error."""
    error_clear_after_s: Seconds = 30.0
    """`error_event` clears this long after the device's last critical error event."""
    stale_after_s: Seconds = 5.0
    """A device whose newest sample is older than this is `stale`."""
    unknown_samples: Count = 3
    """A device whose health was `unknown` this many samples in a row is `stale` too."""
    stuck_samples: Count = 30
    """`stuck`: utilisation and power identical on this many samples in a row."""
    straggler_samples: Count = 10
    """`straggler`: utilisation smoothed over about this many samples (EWMA) ..."""
    straggler_mads: Positive = 4.0
    """... below the node median by this many MADs ..."""
    straggler_min_gap: Fraction = 0.2
    """... and by at least this much utilisation ..."""
    straggler_peers_busy: Fraction = 0.5
    """... while the node median is at least this busy ..."""
    straggler_min_peers: Count = 3
    """... on nodes with at least this many devices."""
    spike_alpha: Fraction = 0.1
    """EWMA weight of the newest power sample (`spike`)."""
    spike_z: Positive = 6.0
    """Raise `spike` at this z-score of power against the device's own EWMA ..."""
    spike_clear_z: Positive = 2.0
    """... clear it below this one ..."""
    spike_peer_z: Positive = 2.0
    """... and only while the node's median z stays below this (a whole node moving is a job)."""
    spike_sigma_floor_frac: Positive = 0.02
    """Standard deviation floor, as a fraction of the device's maximum power limit."""


class Power(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The power loop (DESIGN 8)."""

    budget_w: Watts | None = None
    """Cluster budget; None turns capping off (the loop still steps down hot devices)."""
    period_s: Period = 1.0
    """Control period."""
    deadband_w: NonNegative = 5.0
    """No command for a change smaller than this ..."""
    deadband_frac: Fraction = 0.05
    """... or than this fraction of the device's range, whichever is larger."""
    slew_frac: Fraction = 0.2
    """A cap rises by at most this fraction of the device's range per period (cuts are not slowed)."""
    reserve_frac: Fraction = 0.005
    """Part of the budget kept free for noise in fixed loads."""
    demand_samples: Count = 30
    """Demand = the highest power over this many samples ..."""
    demand_window_s: Seconds = 30.0
    """... of the last this many seconds: a load is not reserved for longer after it is gone (the
    same window bounds the fixed loads of devices the loop cannot cap; an offline node's are
    forgotten)."""
    plan: Literal["peak", "mean"] = "mean"
    """What the loop plans a device on. "mean" (the default): its mean power over the window plus
    `burst_z` / sqrt(n) of its swing (loads without a setter too; a device held at its cap asks
    for its range), caps moved in few large steps (`step_frac`) as the plan's room needs, and a
    cut at once, bursting devices first, when the measured power exceeds the budget by 2%: 0.80 /
    0.86 of the oracle's gain at 70 / 85% of demand, a draw of 0.98-0.99 of the budget, at most
    60 commands per device-hour on 32 nodes (six seeds), with single seconds or pairs above the
    budget by more than 2% when bursts line up (10-29 in 600 s). "peak": its highest power over
    the window plus the margin, each cut at once: the budget holds nearly every second, but 0.43
    / 0.59 of the oracle's gain and a draw of 0.92-0.93 (README, power benchmark)."""
    demand_margin_frac: Fraction = 0.05
    """... plus this margin; a device drawing its whole cap is offered this much more."""
    burst_z: Annotated[float, msgspec.Meta(ge=0, le=10)] = 1.0
    """Planned on the mean: a device is planned at its mean plus burst_z / sqrt(n) of its swing
    (its peak less its mean over the window), n the devices the loop caps (the bursts of n
    independent devices add up to about sqrt(n) swings); 0 plans on the mean alone."""
    step_frac: Fraction = 0.25
    """Planned on the mean: a cap moves by at least this fraction of the device's range (to its
    target where that is further), and only as many devices move as the budget needs: few large
    moves instead of every cap following the level by a deadband."""
    reclaim_gain: Fraction = 0.5
    """Share of the measured slack (budget - power) handed out beyond the estimates, per step ..."""
    reclaim_periods: Count = 10
    """... one step per this many periods, with their mean slack (power above the budget takes it
    back at once)."""
    reclaim_margin_frac: Fraction = 0.02
    """The slack feedback aims the measured power at this far under the budget."""
    reclaim_max_frac: Fraction = 0.0
    """At most this fraction of the budget is handed out that way; 0 (the default) turns it off.
    At 0.1 it takes xpuctl from 0.44 to 0.68 of the oracle's gain at 70% of demand (0.59 to 0.75 at
    85%; budget exceeded by more than 2% for at most 1 s, worst +2.2%) but doubles the commands, to
    92-153 per device-hour (README, power benchmark)."""
    emergency_step_frac: Fraction = 0.3
    """A hot device's cap is cut by this fraction of its power at once, and again each period."""
    recovery_frac: Fraction = 0.05
    """After a thermal event the device's ceiling rises by this fraction of its range per period ..."""
    thermal_settle_periods: Count = 10
    """A device hot but no longer climbing fast is cut again (by a small step) only this many
    periods after its last thermal cut: its temperature needs that long to answer; one still
    climbing fast (thermal_rise) is cut by the full step each period, and a new thermal anomaly
    acts at once."""
    thermal_memory_periods: Count = 300
    """... up to just under the power at which it last ran hot, for this many periods after it last
    did; a device hot again there is cut by a small step only. So a device held near its limit
    settles under it instead of swinging between its floor and its maximum."""
    command_ttl_s: Seconds = 10.0
    """A cap command expires this long after it is issued; it is never applied after that (agents
    refuse one that lives longer than their max_command_lifetime_s, 300 s by default)."""
    retry_after_s: Seconds = 2.0
    """An unacknowledged command is sent again after this long, until it expires."""
    reconcile_periods: Count = 3
    """For this many periods after a cap was asked for or applied (and while its command is open)
    the loop takes its own target as the device's cap; after that, the enforced limit that
    telemetry reports is the cap, so a fail-safe or a restarted agent is capped again."""


class Bus(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The MQTT action bus (DESIGN 5)."""

    url: str | None = None
    """mqtt://host:port, mqtts://host:port, or `embedded`; None runs without a bus."""
    root: str = "xpu/v1"
    """Topic root."""
    heartbeat_s: Period = 1.0
    """The controller republishes its retained `online` status (its lease) this often."""
    max_queued: Count = 10_000
    """Bound of the incoming and outgoing queues; beyond it messages are dropped and counted."""


class Tls(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """mTLS on the gRPC listener (agents' streams and the Cluster API). All three files, or none."""

    cert_file: str | None = None
    """The controller's certificate chain (PEM)."""
    key_file: str | None = None
    """Its private key (PEM)."""
    client_ca_file: str | None = None
    """CA of the agents' and operators' client certificates (PEM); every client must present one."""

    @property
    def on(self) -> bool:
        """Whether TLS is configured."""
        return self.cert_file is not None


class Auth(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who may call what (controller/core/access.py), enforced when [tls] is on."""

    operator_identities: tuple[str, ...] = ()
    """Client-certificate identities (SAN or CN) allowed to change things: budget, priority, cordon."""
    operator_tokens_file: str | None = None
    """File of `NAME TOKEN` lines; a call with metadata `authorization: Bearer TOKEN` acts as NAME."""
    open_reads: bool = False
    """Let any client certificate from the CA make read-only calls (summary, lists, events)."""


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Bounds on what agents may make the controller hold (issue 18.7); past them a Hello is refused
    with RESOURCE_EXHAUSTED and counted (`xpu_ingest_rejected_total{reason}`).
    """

    max_nodes: Count = 20_000
    """Nodes one controller holds (a silent node is forgotten after --forget-after-s)."""
    max_devices: Count = 100_000
    """Device ids one controller holds, gone ones included until their slot is released."""
    max_devices_per_node: Annotated[int, msgspec.Meta(ge=1, le=65_536)] = 1024
    """Devices one Hello may declare; also how many gone ids of one node are kept."""
    max_hellos_per_node_per_min: Count = 30
    """Hellos one node may say per minute (an agent reconnects a few times a minute at most)."""


class State(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where operators' decisions are kept across restarts (issue 18.2)."""

    dir: str | None = None
    """Directory of `state.json` (budget, cordons, priorities, open commands). None: systemd's
    $STATE_DIRECTORY, else $XDG_STATE_HOME/xpu-controller, else ~/.local/state/xpu-controller.
    `none` keeps nothing (every start begins empty)."""


class History(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """History beyond the ring (issue 15.6): aggregates of every device metric to a time-series database."""

    url: str | None = None
    """VictoriaMetrics' address, http://HOST:PORT (its /api/v1/import/prometheus); None exports nothing."""
    period_s: Period = 10.0
    """Each export holds the mean, max and last value of every device metric over this long."""
    max_queued: Count = 30
    """Periods kept while the database is slow or gone; beyond, the oldest is dropped (counted)."""


class Shard(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One shard of a deployment with more than one controller (DESIGN 11, issue 14).

    Without an id the controller is the only one (the default). With one it is a candidate owner
    of the shard: it acts (takes streams, sends commands) only while it holds the shard's key in
    etcd, and points agents at the owner otherwise.
    """

    id: str | None = None
    """The shard's name (a power domain: a row, a hall); letters, digits, '.', '_', '-'."""
    etcd: str | None = None
    """Every etcd member: http://HOST:PORT[,http://HOST:PORT...] (all of them, so that losing one is invisible)."""
    advertise: str | None = None
    """HOST:PORT at which agents and the gateway reach this controller (unique per candidate)."""
    nodes: tuple[str, ...] = ()
    """The shard's nodes as shell patterns (`hall1-*`); empty takes every node that streams here."""
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=2, le=60)] = 5.0
    """TTL of the owner's lease; the owner stops acting 1 s before it could lapse."""
    prefix: str = "/xpu/v1"
    """Root of xpuctl's keys in etcd."""
    warmup_s: Seconds = 30.0
    """A new owner starts with no history: for this long it lowers caps (budget, thermal) but raises none."""
    site: bool = False
    """Take the shard's budget from the site's root allocator (`xpu-controller root`, issue 15) instead
    of its own: it reports floor and demand, and runs inside the grant it holds, or its static share."""
    site_period_s: Period = 5.0
    """How often it reports to the root and reads its grant (the root's period; grants last 3 of them)."""


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every controller setting."""

    detect: Detect = msgspec.field(default_factory=Detect)
    power: Power = msgspec.field(default_factory=Power)
    bus: Bus = msgspec.field(default_factory=Bus)
    tls: Tls = msgspec.field(default_factory=Tls)
    auth: Auth = msgspec.field(default_factory=Auth)
    state: State = msgspec.field(default_factory=State)
    limits: Limits = msgspec.field(default_factory=Limits)
    shard: Shard = msgspec.field(default_factory=Shard)
    history: History = msgspec.field(default_factory=History)


class ConfigError(XpuError):
    """A config file that cannot be used; the message names the file, the key and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        """Keep the facts; build the message."""
        super().__init__(f"config {path}: {problem}")
        self.path, self.problem = path, problem


GROUPS = ("detect", "power", "bus", "tls", "auth", "state", "limits", "shard", "history")


def load(path: str | pathlib.Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Settings from a TOML file (optional) with `XPU_<GROUP>_<KEY>` environment variables on top.

    Precedence (DESIGN 6): flags (applied by the CLI) > environment > file > defaults.

    Raises:
        ConfigError: unreadable file, bad TOML, an unknown key or a bad value (msgspec's path kept).
    """
    try:
        raw, where = settings.layered(path, environ, GROUPS)
    except settings.SettingsError as exc:
        raise ConfigError(exc.where, exc.problem) from exc
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(where, f"{exc}; `xpu-controller config example` prints every key") from exc
    _check_tls(cfg, where)
    check_shard(cfg, where)
    return cfg


def check_shard(cfg: Config, where: str) -> None:
    """A shard needs etcd and an advertised address; etcd and advertise mean nothing without one.

    Raises:
        ConfigError: naming what is missing.
    """
    sh = cfg.shard
    given = [k for k in ("etcd", "advertise") if getattr(sh, k) is not None]
    if sh.id is None and given:
        raise ConfigError(where, f"shard {' and '.join(given)} given without a shard id (--shard ID) - at $.shard")
    if sh.id is not None and len(given) != 2:
        missing = sorted({"etcd", "advertise"} - set(given))
        raise ConfigError(
            where,
            f"shard {sh.id!r} needs {' and '.join(missing)}: --etcd http://HOST:PORT[,...] --advertise HOST:PORT"
            " - at $.shard",
        )


def _check_tls(cfg: Config, where: str) -> None:
    """Rules across keys: TLS files all or none; credentials only over TLS."""
    t = cfg.tls
    given = [k for k in ("cert_file", "key_file", "client_ca_file") if getattr(t, k) is not None]
    if given and len(given) != 3:
        missing = sorted({"cert_file", "key_file", "client_ca_file"} - set(given))
        raise ConfigError(
            where,
            f"[tls] needs cert_file, key_file and client_ca_file together; missing {', '.join(missing)} - at $.tls",
        )
    if not t.on and (cfg.auth.operator_identities or cfg.auth.operator_tokens_file):
        raise ConfigError(
            where,
            "operator credentials need [tls] (tokens over plaintext can be read by anyone on the path) - at $.auth",
        )
