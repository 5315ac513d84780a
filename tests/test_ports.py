"""common/ports.py names the process that holds a port (for the refusal of a second controller)."""

from __future__ import annotations

import os
import socket

from xpuctl.common import ports


def test_the_holder_of_a_listening_port_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        who = ports.holder(port)
    assert who is not None and who.startswith(f"pid {os.getpid()} (")


def test_a_free_port_has_no_holder() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening
    assert ports.holder(port) is None


def test_free_ports_are_not_handed_out_twice() -> None:
    # 500 ports from ~28,000 ephemeral ones: without the memory of recent ones a repeat is all but
    # certain (the birthday bound), and two servers of one test would get the same port
    got = [ports.free_port() for _ in range(500)]
    assert len(set(got)) == len(got)
