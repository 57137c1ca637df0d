"""Free ports on loopback, for the servers Loom starts itself."""

from __future__ import annotations


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server Loom starts: the dashboard, HAProxy's side ports)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
