"""The controller's error hierarchy. Messages say what failed, the value, and the fix."""

from __future__ import annotations


class XpuError(Exception):
    """Base of every error xpuctl raises on purpose."""


class ProtocolViolation(XpuError):  # noqa: N818 - it is an error; the name is the concept
    """An agent broke the stream protocol; the stream ends with `code` (a grpc.StatusCode name)."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        """`reason` is the counter key, `message` what the agent is told."""
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class InfeasibleBudget(XpuError):
    """The devices' floors alone need more than the budget leaves for them."""

    def __init__(self, need_w: float, budget_w: float) -> None:
        """Keep the facts; build the message."""
        super().__init__(
            f"power floors need {need_w:.0f} W but the budget leaves {budget_w:.0f} W for cappable "
            "devices; raise the budget (SetPowerBudget, --budget-w) or uncordon/add cappable devices"
        )
        self.need_w, self.budget_w = need_w, budget_w
