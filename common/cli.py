"""What the three command lines share: a parser without abbreviations, argument types, uvloop.

Decides nothing about the programs themselves: each CLI module builds its own commands from these.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import math
import platform
import re
from collections.abc import Callable
from typing import Any, TypeVar

from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.cli")
N = TypeVar("N", int, float)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default (`(default: 1.0)`) where it has a meaningful one and
    its text does not already say it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not _shows_default(action) or re.search(r"\(default|default:|default \d|defaults to|default \$", text):
            return action.help
        return f"{text} (default: %(default)s)".strip()


def _shows_default(action: argparse.Action) -> bool:
    """Whether `--help` should say the option's default: an option taking a value, whose default
    is something (not None, False, empty or suppressed).
    """
    return (
        bool(action.option_strings)
        and action.nargs != 0
        and action.default not in (None, False, "", [], argparse.SUPPRESS)
    )


class ArgumentParser(argparse.ArgumentParser):
    """argparse without prefix matching, for this parser and every subparser made from it.

    With abbreviations on, `--interval 2` means `--interval-s 2` to argparse, but a config merge
    that looks for the flags given by their full name does not see it, and the file's value wins.
    Subparsers are made with the parent's class, so they inherit this too.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        """As argparse.ArgumentParser, with `allow_abbrev` forced off."""
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._globals: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:  # noqa: ANN401 - argparse's own
        """As argparse's; an option without help text still shows its default in `--help`."""
        action = super().add_argument(*names, **kwargs)
        if action.help is None and _shows_default(action):
            action.help = "(default: %(default)s)"
        return action

    def add_global(self, *names: str, **kwargs: Any) -> None:  # noqa: ANN401 - argparse's own keywords
        """A flag of the program that may also follow the subcommand (`xpuctl devices --controller
        H`, `xpu-agent run --log-level DEBUG`); `share_globals` copies it to the subcommands.
        """
        self.add_argument(*names, **kwargs)
        self._globals.append((names, kwargs))

    def share_globals(self, sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        """Every `add_global` flag on every subcommand of `sub`, where it overrides the value given
        before the subcommand only when it is given itself.
        """
        for child in dict.fromkeys(sub.choices.values()):
            for names, kwargs in self._globals:
                child.add_argument(*names, **{**kwargs, "default": argparse.SUPPRESS})


def package_version() -> str:
    """The installed package's version, `unknown` when it is run from a tree not installed."""
    try:
        return importlib.metadata.version("xpuctl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def version(program: str) -> str:
    """`PROGRAM VERSION (Python X.Y.Z)`, what `--version` prints."""
    number = package_version()
    if number == "unknown":
        number += " (not installed)"
    return f"{program} {number} (Python {platform.python_version()})"


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version` on `parser`: prints `version(parser.prog)` and exits 0."""
    parser.add_argument("--version", action="version", version=version(parser.prog))


def positive(kind: type[N]) -> Callable[[str], N]:
    """An argument type: a finite number of `kind` greater than 0."""
    return number(kind, lambda v: v > 0, "must be a number > 0", what=kind.__name__)


def fraction(text: str) -> float:
    """An argument type: a number in (0, 1]."""
    return number(float, lambda v: 0 < v <= 1, "must be in (0, 1]", what="number")(text)


def number(kind: type[N], ok: Callable[[N], bool], rule: str, *, what: str) -> Callable[[str], N]:
    """An argument type: a finite number of `kind` for which `ok` holds.

    Args:
        kind: int or float.
        ok: the rule the value must meet.
        rule: what the error says when `ok` fails ("must be ...").
        what: what the error calls a text that is no number of `kind` ("is not a WHAT").
    """

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            msg = f"{text!r} is not a {what}"
            raise argparse.ArgumentTypeError(msg) from None
        if not (math.isfinite(value) and ok(value)):
            msg = f"{text!r} {rule}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


GRPC_PORT = 50051
GRPC_SCHEMES = frozenset({"dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds"})


def address(text: str) -> str:
    """An argument type: a controller address as gRPC dials it. `HOST` alone means HOST:50051
    (gRPC's own default, 443, is never the controller's); `[v6]` and bare IPv6 addresses get the
    port after their brackets; `dns:`, `unix:` and gRPC's other scheme targets are kept as given.

    Raises:
        argparse.ArgumentTypeError: an empty address or a port that is not a number.
    """
    text = text.strip()
    if not text:
        msg = "empty address: give HOST[:PORT]"
        raise argparse.ArgumentTypeError(msg)
    if text.split(":", 1)[0] in GRPC_SCHEMES:
        return text
    if text.startswith("["):
        host, _, port = text.partition("]")
        host, port = host + "]", port.removeprefix(":")
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port = f"[{text}]", ""
    else:
        host, _, port = text.partition(":")
    if port and not port.isdigit():
        msg = f"{text!r}: the port {port!r} is not a number (HOST[:PORT])"
        raise argparse.ArgumentTypeError(msg)
    return f"{host}:{port or GRPC_PORT}"


def addresses(text: str) -> str:
    """An argument type: one controller address or several, `HOST[:PORT],HOST[:PORT],...` (the
    candidates of a shard, DESIGN 11), each as `address` makes it; a gRPC scheme target is one.

    Raises:
        argparse.ArgumentTypeError: an empty list, or a bad address in it (named).
    """
    text = text.strip()
    if text.split(":", 1)[0] in GRPC_SCHEMES:
        return text
    parts = [p for p in (p.strip() for p in text.split(",")) if p]
    if not parts:
        msg = "empty address: give HOST[:PORT][,HOST[:PORT]...]"
        raise argparse.ArgumentTypeError(msg)
    return ",".join(address(p) for p in parts)


def split_addresses(text: str) -> list[str]:
    """The addresses of an `addresses` value (a gRPC scheme target stays one)."""
    if text.split(":", 1)[0] in GRPC_SCHEMES:
        return [text]
    return [p for p in text.split(",") if p]


def bus_url(text: str) -> bus.BusUrl:
    """An argument type: an MQTT URL (`mqtt://` or `mqtts://`), parsed."""
    try:
        return bus.parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def install_uvloop() -> bool:
    """Use uvloop's event loop where it is installed (it has no build for some platforms).

    False when it is not: asyncio's own loop runs, a little slower (the `fast` extra installs it).
    """
    try:
        import uvloop  # noqa: PLC0415 - optional, per platform
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
