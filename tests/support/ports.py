"""A free TCP port on the loopback."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on once this returns (the kernel's choice, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
