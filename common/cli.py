"""What the three command lines share: a parser without abbreviations, argument types, uvloop.

Decides nothing about the programs themselves: each CLI module builds its own commands from these.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import TypeVar

from xpuctl.protos.xpu.v1 import bus

log = logging.getLogger("xpu.cli")
N = TypeVar("N", int, float)


class ArgumentParser(argparse.ArgumentParser):
    """argparse without prefix matching, for this parser and every subparser made from it.

    With abbreviations on, `--interval 2` means `--interval-s 2` to argparse, but a config merge
    that looks for the flags given by their full name does not see it, and the file's value wins.
    Subparsers are made with the parent's class, so they inherit this too.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        """As argparse.ArgumentParser, with `allow_abbrev` forced off."""
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


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


def bus_url(text: str) -> bus.BusUrl:
    """An argument type: an MQTT URL (`mqtt://` or `mqtts://`), parsed."""
    try:
        return bus.parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def install_uvloop() -> None:
    """Use uvloop's event loop where it is installed (it has no build for some platforms)."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 - optional, per platform

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
