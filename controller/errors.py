"""The controller's error hierarchy. Messages say what failed, the value, and the fix."""

from __future__ import annotations


class XpuError(Exception):
    """Base of every error xpuctl raises on purpose."""


class ProtocolViolation(XpuError):
    """An agent broke the stream protocol; the stream ends with `code` (a grpc.StatusCode name)."""

    def __init__(self, code: str, reason: str, message: str, *, node_id: str = "") -> None:
        """`reason` is the counter key, `message` what the agent is told, `node_id` the node it claimed."""
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.node_id = node_id


class NotOwner(ProtocolViolation):
    """A sharded controller that does not act for the shard (a standby, fenced), or a node of
    another shard: FAILED_PRECONDITION, naming the owner's address when it is known (issue 14.3).
    """

    def __init__(self, reason: str, message: str, *, owner: str = "", node_id: str = "") -> None:
        """`owner`: the address agents should dial instead ('' unknown)."""
        super().__init__("FAILED_PRECONDITION", reason, message, node_id=node_id)
        self.owner = owner


class SiteManaged(XpuError):
    """A shard whose budget comes from the site's root: its own SetPowerBudget is refused."""

    def __init__(self, shard: str) -> None:
        """Name the shard and where to set the budget instead."""
        super().__init__(
            f"shard {shard} takes its budget from the site's root allocator; set the site budget through "
            "the gateway (xpuctl --controller GATEWAY budget WATTS)"
        )


class InfeasibleBudget(XpuError):
    """The devices' floors alone need more than the budget leaves for them."""

    def __init__(self, need_w: float, budget_w: float) -> None:
        """Keep the facts; build the message."""
        super().__init__(
            f"power floors need {need_w:.0f} W but the budget leaves {budget_w:.0f} W for cappable "
            "devices; raise the budget (SetPowerBudget, --budget-w) or uncordon/add cappable devices"
        )
        self.need_w, self.budget_w = need_w, budget_w


class BadValue(XpuError):
    """An operator's request carries a value outside its rule (the gRPC adapter: INVALID_ARGUMENT)."""

    def __init__(self, name: str, value: object, rule: str) -> None:
        """`name` is the field, `rule` what it must be (with the fix)."""
        super().__init__(f"{name} {value!r} {rule}")
        self.name, self.value, self.rule = name, value, rule


class MissingTarget(XpuError):
    """A request names neither a device nor a node (INVALID_ARGUMENT)."""

    def __init__(self) -> None:
        """The message says what to name."""
        super().__init__("name a device_uuid or a node_id")


class MissingReason(XpuError):
    """A cordon without a reason (INVALID_ARGUMENT)."""

    def __init__(self) -> None:
        """The message gives an example."""
        super().__init__("a cordon needs a reason (e.g. --reason 'ECC storm')")


class UnknownDevice(XpuError):
    """No device has this UUID (NOT_FOUND)."""

    def __init__(self, uuid: str, hint: str = "") -> None:
        """`hint` (optional) says where to find the right one."""
        super().__init__(f"no device {uuid!r}{hint}")
        self.uuid = uuid


class UnknownNode(XpuError):
    """No node has this id (NOT_FOUND)."""

    def __init__(self, node_id: str, hint: str = "") -> None:
        """Keep the id; `hint` (optional) says where to find the right one."""
        super().__init__(f"no node {node_id!r}{hint}")
        self.node_id = node_id


class BadJob(XpuError):
    """A job call that cannot be taken: no job id, an index its node does not have (INVALID_ARGUMENT)."""


class UnknownJob(XpuError):
    """No running job has this id (NOT_FOUND)."""

    def __init__(self, job_id: str) -> None:
        """Keep the id; the message says why it may be so."""
        super().__init__(f"no running job {job_id!r}: it ended already, or its start was never told (the prolog)")
        self.job_id = job_id


class UnknownVendor(XpuError):
    """A vendor name outside the contract's list (INVALID_ARGUMENT)."""

    def __init__(self, vendor: str, known: list[str]) -> None:
        """`known` are the names to choose from."""
        super().__init__(f"unknown vendor {vendor!r}; use one of {', '.join(known)}")
        self.vendor = vendor


class NotSaved(XpuError):
    """A decision took effect but could not be saved, so a restart would lose it (DATA_LOSS)."""

    def __init__(self, where: str, why: str) -> None:
        """`where` is the store (a path), `why` the system's reason."""
        super().__init__(
            f"applied, but not saved to {where} ({why}): a controller restart would undo it; "
            "fix the state store (disk space, permissions) and repeat the request"
        )
        self.where, self.why = where, why


class DeviceInUse(XpuError):
    """A release of a device that its node streams and still lists (FAILED_PRECONDITION)."""

    def __init__(self, uuid: str, node_id: str) -> None:
        """Keep the facts; build the message."""
        super().__init__(
            f"device {uuid!r} is listed by node {node_id!r}, which is streaming: stop its agent (or remove the "
            "card from it) first; only a gone device, or one of a node that is not connected, can be released"
        )
        self.uuid, self.node_id = uuid, node_id


MAX_ECHO_CHARS = 1024


def bounded(message: str) -> str:
    """`message` cut to MAX_ECHO_CHARS for a status sent back.

    A request may carry a 1 MiB string that a message quotes; the answer must not grow past the
    client's limit with it.
    """
    if len(message) <= MAX_ECHO_CHARS:
        return message
    return f"{message[:MAX_ECHO_CHARS]}... ({len(message) - MAX_ECHO_CHARS} more characters cut)"
