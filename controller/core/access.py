"""Who may do what: the access rules of the gRPC services (issue 6; notes A2, B4).

Theory of operation. Access is enforced when the controller serves mTLS: every client then holds
a certificate from the site CA, and its identities (SAN names, else the CN) are facts the TLS
layer verified. Three rules follow.

1. Telemetry.Stream: a node streams only as itself: the Hello's `node_id` must be one of the
   certificate's identities (else PERMISSION_DENIED). A node certificate cannot feed another
   node's devices.
2. Mutating Cluster calls (budget, priority, cordon, and any method this module does not know)
   need an operator: a certificate identity listed in `auth.operator_identities`, or a bearer
   token from `auth.operator_tokens_file`. No credential at all, or a token that matches none, is
   UNAUTHENTICATED; a valid certificate that is not an operator's is PERMISSION_DENIED.
3. Read-only Cluster calls need the same, unless `auth.open_reads` lets any certificate holder in.

Without TLS nothing is enforced (a loopback demo or a lab); the CLI says so at start-up.
Tokens are kept as SHA-256 digests, so the rules never hold a secret longer than the load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

READS = frozenset({"GetSummary", "ListNodes", "ListDevices", "GetDevice", "WatchEvents", "GetPowerBudget", "ListJobs"})
"""Cluster methods that change nothing."""


class Denial(msgspec.Struct, frozen=True, kw_only=True):
    """A refused call: the gRPC status code name and a message saying what is needed."""

    code: str
    message: str


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """The access rules in force."""

    enforced: bool = False
    operator_identities: frozenset[str] = frozenset()
    operator_tokens: dict[bytes, str] = msgspec.field(default_factory=dict)
    """SHA-256 of each token -> the operator's name."""
    open_reads: bool = False


class TokenFileError(ValueError):
    """A token file line that cannot be read; names the line."""

    def __init__(self, where: str, line_no: int, problem: str) -> None:
        """Keep the facts; build the message."""
        super().__init__(f"{where}, line {line_no}: {problem}; each line is `NAME TOKEN` (# starts a comment)")
        self.where, self.line_no, self.problem = where, line_no, problem


def digest(token: str) -> bytes:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, where: str) -> dict[bytes, str]:
    """`NAME TOKEN` lines (blank lines and `#` comments skipped) -> digest -> name.

    Raises:
        TokenFileError: a line without two fields, a token shorter than 16 characters, or a
            token given twice.
    """
    out: dict[bytes, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise TokenFileError(where, line_no, f"{len(fields)} field(s)")
        name, token = fields
        if len(token) < 16:
            raise TokenFileError(where, line_no, f"the token of {name!r} is shorter than 16 characters")
        key = digest(token)
        if key in out:
            raise TokenFileError(where, line_no, f"the token of {name!r} is also {out[key]!r}'s")
        out[key] = name
    return out


def bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer TOKEN` header, if any ("" for another scheme)."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def operator(policy: Policy, identities: frozenset[str], token: str | None) -> str | None:
    """The operator a call acts as (`token:NAME` or `cert:NAME`), or None."""
    if token is not None and (name := policy.operator_tokens.get(digest(token))) is not None:
        return f"token:{name}"
    names = sorted(identities & policy.operator_identities)
    return f"cert:{names[0]}" if names else None


def check_call(policy: Policy, method: str, identities: frozenset[str], token: str | None) -> Denial | None:
    """Rules 2 and 3 for a Cluster `method` (its short name, e.g. "SetPowerBudget")."""
    if not policy.enforced:
        return None
    if method in READS and policy.open_reads:
        return None
    if operator(policy, identities, token) is not None:
        return None
    what = "read-only" if method in READS else "mutating"
    need = "an operator certificate (auth.operator_identities) or `authorization: Bearer TOKEN` (auth.operator_tokens_file)"
    if token is not None:
        return Denial(
            code="UNAUTHENTICATED", message=f"{method}: the bearer token matches no operator; {what} calls need {need}"
        )
    if not identities:
        return Denial(code="UNAUTHENTICATED", message=f"{method}: no credential; {what} calls need {need}")
    return Denial(
        code="PERMISSION_DENIED",
        message=f"{method}: certificate {', '.join(sorted(identities))} is not an operator; {what} calls need {need}",
    )


def check_node(policy: Policy, node_id: str, identities: frozenset[str]) -> Denial | None:
    """Rule 1: may this peer stream as `node_id`?"""
    if not policy.enforced or node_id in identities:
        return None
    names = ", ".join(sorted(identities)) or "no identity"
    return Denial(
        code="PERMISSION_DENIED",
        message=f"node_id {node_id!r} is not in this stream's certificate ({names}); a node streams only as itself",
    )
