"""benchlib.py: what the Python benchmarks (static_files.py, proxy.py)
share: whether kernel TLS was promised, /proc/net/tls_stat, and waiting for
a server to listen."""

import os
import socket
import time


class Failure(Exception):
    """A benchmark that cannot measure what it says: it fails, with this text."""


def kernel_promised():
    """Whether kernel TLS was promised to this run (CI, or a UML guest):
    then finding none is a failure, never a skip."""
    return "1" in (os.environ.get("KTLS_REQUIRE_KERNEL"), os.environ.get("KTLS_IN_UML"))


def tls_stat():
    with open("/proc/net/tls_stat") as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def wait_port(port, proc, what):
    """Waits until 127.0.0.1:port accepts, while proc (its server) lives."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"{what} exited {proc.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Failure(f"{what} is not listening on {port}")
