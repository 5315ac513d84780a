"""What operators decided and the loop has in flight, as it is saved across restarts (issue 18.2).

`Desired` is the controller's desired state: the budget, cordons (with their reasons), the
weights of devices and nodes in the power allocation, and the ledger's open commands. Devices are
named by uuid, never by slot: slots are handed out in the order Hellos arrive, so they differ from
one start to the next. A `Store` keeps it (the local file adapter, `adapters/statefile.py`; the
shard issue adds etcd behind the same two calls). Pure: no I/O here.

The format is versioned: `format` is the first key, and a reader refuses a newer format by name
rather than dropping what it does not know.
"""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec

from xpuctl.controller.core import jobs

FORMAT = 1
# bounds of what a saved file may hold (a hand-edited or damaged file must not bring in an
# infinite budget or a weight the API would have refused)
Budget = Annotated[float, msgspec.Meta(gt=0, le=1e9)]
Weight = Annotated[float, msgspec.Meta(gt=0, le=1000)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]


class OpenCommand(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A command the ledger had issued and not yet seen answered or expired."""

    id: Text
    kind: Text
    node_id: Text
    device_uuid: Text
    cap_w: float
    reason: Text
    issued_at_ns: int
    expires_at_ns: int


class Desired(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a restarted controller must still know (format 1)."""

    format: int = FORMAT
    saved_at_ns: int = 0
    budget_w: Budget | None = None
    """The budget in force (None: no budget)."""
    config_budget_w: Budget | None = None
    """The budget the config gave at the start that saved this: when the config says something
    else now, the config was edited since, and the newer decision (the config's) wins."""
    cordons: dict[Text, Text] = msgspec.field(default_factory=dict)
    """Device uuid -> why it is cordoned."""
    device_weights: dict[Text, Weight] = msgspec.field(default_factory=dict)
    """Device uuid -> its weight in the power allocation (absent: 1)."""
    node_weights: dict[Text, Weight] = msgspec.field(default_factory=dict)
    """Node id -> the weight of its devices (absent: 1)."""
    commands: list[OpenCommand] = msgspec.field(default_factory=list)
    nodes: dict[Text, int] = msgspec.field(default_factory=dict)
    """Node id -> when it was last heard from (ns): after a restart the nodes not back yet show as
    offline instead of missing."""
    jobs: list[jobs.Job] = msgspec.field(default_factory=list)
    """Running and recently ended scheduler jobs, with their devices' energy so far (issue 16.3)."""


class Header(msgspec.Struct, kw_only=True):
    """The one key every format has."""

    format: int


class Corrupt(Exception):
    """Saved bytes that are not a desired state this version can read; the message says why."""


def encode(d: Desired) -> bytes:
    """The saved form: JSON, one object, `format` first."""
    return msgspec.json.encode(d)


def decode(data: bytes) -> Desired:
    """The saved form read back.

    Raises:
        Corrupt: not JSON, a newer or unknown format, or a value outside its bounds (msgspec's path).
    """
    try:
        fmt = msgspec.json.decode(data, type=Header).format
    except msgspec.DecodeError as exc:
        raise Corrupt(f"not a saved state ({exc})") from exc
    if fmt > FORMAT:
        raise Corrupt(f"format {fmt} was written by a newer xpuctl; this one reads format {FORMAT} and older")
    if fmt < 1:
        raise Corrupt(f"format {fmt} is not a format xpuctl ever wrote")
    try:
        return msgspec.json.decode(data, type=Desired)
    except msgspec.DecodeError as exc:
        raise Corrupt(str(exc)) from exc


class Store(Protocol):
    """Where the desired state lives between starts."""

    where: str
    """Where it is, for messages (a path, an etcd key)."""

    def load(self) -> Desired | None:
        """The saved state; None when nothing was saved yet.

        Raises:
            Corrupt: what is saved cannot be read.
        """
        ...

    def save(self, d: Desired) -> None:
        """Replace the saved state with `d`, durably (it survives a crash once this returns).

        Raises:
            OSError: it could not be written; the previous state is still there, whole.
        """
        ...
