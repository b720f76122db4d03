#!/usr/bin/env python3
"""ktls-serve on SIGUSR2: a binary upgrade that keeps the established
connections, each moved to the new process with its descriptor
(Connection::Export/Import), as nginx's binary upgrade keeps only the
listener.

usage: serve_upgrade_interop.py PATH/TO/ktls-serve [TEST_NAME_SUBSTRING...]

ktls-serve runs from a copy of the binary in a temporary directory, so that
a test can replace "the binary on disk" as an upgrade would.

- a keep-alive connection is answered before the upgrade, by the old
  process after it, and by the new one once the old has exited: the same
  TCP connection (same local port, no second handshake: the kernel
  offloaded it once), and the old process exits with status 0;
- a 64 MiB download in flight during the upgrade arrives intact (SHA-256),
  and its connection then goes on in the new process;
- the binary on disk replaced by one that cannot start: the old process
  goes on serving, and says why;
- a connection that cannot move (--no-rx) ends with close_notify, and the
  log says why;
- --metrics in the new process (a listener of its own, counts from zero):
  the connection it took over is open there, not a new connection, and its
  requests count there.

Exit status as the other interop suites: 0, 1, or 77 (SKIP) without kTLS
(a failure with KTLS_REQUIRE_KERNEL=1).
"""
import os
import re
import shutil
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
import serve_interop as serve  # noqa: E402
import serve_metrics_interop as metrics  # noqa: E402
from ktls_interop import STEP_TIMEOUT, sha, wait_until  # noqa: E402
from serve_privsep_interop import get  # noqa: E402

BINARY = ""  # The copy ktls-serve runs from.
BIG = b""


class Upgraded:
    """Stops the process that took over, at the end of a test."""

    def __init__(self, server):
        self.server = server
        self.pid = None

    def wait_taken_over(self):
        match = None

        def started():
            nonlocal match
            match = re.search(r"upgrade: pid (\d+) serves now", self.server.err.text())
            return match is not None
        assert wait_until(started, STEP_TIMEOUT), "no takeover: " + self.server.err.text()
        self.pid = int(match.group(1))
        return self.pid

    def stop(self):
        """Stops the new process, even if the test failed before it took
        over (it holds the server's stdout and stderr pipes)."""
        match = re.search(r"upgrade: started \S+ as pid (\d+)", self.server.err.text())
        if self.pid is None and match:
            self.pid = int(match.group(1))
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        wait_until(lambda: not os.path.exists(f"/proc/{self.pid}") or zombie(self.pid), STEP_TIMEOUT)


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Serve(serve.Serve):
    def __enter__(self):
        serve.SERVE, saved = BINARY, serve.SERVE
        try:
            return super().__enter__()
        finally:
            serve.SERVE = saved


class Upgrade(unittest.TestCase):
    def test_keep_alive_connection_goes_on_in_the_new_process(self):
        with Serve() as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as sock:
                    port = sock.getsockname()[1]
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    delta = server.stat_delta()
                    self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (1, 1), f"offloaded: {delta}")
                    server.proc.send_signal(signal.SIGUSR2)
                    new_pid = upgraded.wait_taken_over()
                    # From here on nothing is offloaded again (the new
                    # process's start-up probe is already done).
                    server.stats_before = ktls_interop.read_tls_stat()
                    self.assertNotEqual(new_pid, server.proc.pid)
                    self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0, server.err.text())
                    # The old process is gone: this is the new one, on the
                    # same TCP connection, with no new handshake.
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    self.assertEqual(sock.getsockname()[1], port)
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                delta = server.stat_delta()
                self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (0, 0), f"no second offload: {delta}")
                self.assertIn("handed over everything", server.err.text())
            finally:
                upgraded.stop()

    def test_download_in_flight_arrives_intact_then_moves(self):
        with Serve() as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as sock:
                    sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    data = sock.recv(65536)
                    server.proc.send_signal(signal.SIGUSR2)
                    head, _, first = data.partition(b"\r\n\r\n")
                    self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                    body = bytearray(len(BIG))
                    view, got = memoryview(body), len(first)
                    view[:got] = first
                    while got < len(BIG):
                        n = sock.recv_into(view[got:])
                        self.assertTrue(n, f"closed after {got} bytes")
                        got += n
                    self.assertEqual(sha(bytes(body)), sha(BIG))
                    upgraded.wait_taken_over()
                    self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 3), 0, server.err.text())
                    self.assertEqual(get(sock, "/small.txt"), b"small\n", "the same connection, in the new process")
            finally:
                upgraded.stop()

    def test_the_new_process_counts_a_connection_it_took_over_as_open_not_new(self):
        kernel = metrics.key("ktls_connections_total", tx="kernel", rx="kernel")
        ok = metrics.key("ktls_requests_total", code="200")
        open_now = metrics.key("ktls_open_connections")
        with Serve("--metrics", f"{ktls_interop.HOST}:0") as server:
            upgraded = Upgraded(server)
            try:
                self.assertTrue(wait_until(lambda: len(metrics.metrics_ports(server.err.text())) == 1, STEP_TIMEOUT))
                old = metrics.MetricsAt(metrics.metrics_ports(server.err.text())[0])
                with serve.tls_connect(server.port) as sock:
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    self.assertTrue(wait_until(lambda: old.scrape()[0].get(ok) == 1, STEP_TIMEOUT))
                    self.assertEqual(old.scrape()[0][kernel], 1)
                    server.proc.send_signal(signal.SIGUSR2)
                    upgraded.wait_taken_over()
                    self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0, server.err.text())
                    self.assertTrue(wait_until(lambda: len(metrics.metrics_ports(server.err.text())) == 2,
                                               STEP_TIMEOUT))
                    new = metrics.MetricsAt(metrics.metrics_ports(server.err.text())[1])
                    samples = new.scrape()[0]
                    self.assertEqual((samples[open_now], samples[kernel], samples[ok]), (1, 0, 0), samples)
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    self.assertTrue(wait_until(lambda: new.scrape()[0].get(ok) == 1, STEP_TIMEOUT))
                self.assertTrue(wait_until(lambda: new.scrape()[0].get(open_now) == 0, STEP_TIMEOUT))
                self.assertEqual(new.scrape()[0][kernel], 0, "counted where it was handshaken")
            finally:
                upgraded.stop()

    def test_a_binary_that_cannot_start_leaves_the_old_process_serving(self):
        with Serve() as server:
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(get(sock, "/small.txt"), b"small\n")
                os.rename(BINARY, BINARY + ".saved")
                try:
                    with open(BINARY, "w") as f:
                        f.write("#!/bin/sh\nexit 3\n")
                    os.chmod(BINARY, 0o755)
                    server.proc.send_signal(signal.SIGUSR2)
                    self.assertTrue(wait_until(lambda: "upgrade failed" in server.err.text(), STEP_TIMEOUT),
                                    server.err.text())
                    self.assertIn("goes on serving", server.err.text())
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                finally:
                    os.replace(BINARY + ".saved", BINARY)
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(get(sock, "/small.txt"), b"small\n", "new connections too")
            self.assertIsNone(server.proc.poll())

    def test_a_connection_that_cannot_move_ends_with_close_notify(self):
        with Serve("--no-rx", rx=False) as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as sock:
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    server.proc.send_signal(signal.SIGUSR2)
                    upgraded.wait_taken_over()
                    self.assertEqual(serve.read_until_close(sock), b"", "close_notify, nothing else")
                self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0)
                self.assertIn("not handed over: RX is in OpenSSL", server.err.text())
                with serve.tls_connect(server.port) as sock:  # The new process serves new ones.
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
            finally:
                upgraded.stop()


def set_up(directory):
    global BINARY, BIG
    serve.SITE = os.path.join(directory, "site")
    os.makedirs(serve.SITE)
    BIG = os.urandom(64 * 1024 * 1024)
    for name, data in (("small.txt", b"small\n"), ("big.bin", BIG)):
        with open(os.path.join(serve.SITE, name), "wb") as f:
            f.write(data)
    BINARY = os.path.join(directory, "ktls-serve")
    shutil.copy2(serve.SERVE, BINARY)


def main():
    return metrics.suite_main(sys.modules[__name__], "ktls-serve-upgrade-", set_up)


if __name__ == "__main__":
    sys.exit(main())
