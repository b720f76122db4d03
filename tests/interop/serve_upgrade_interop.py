#!/usr/bin/env python3
"""ktls-serve on SIGUSR2: a binary upgrade that keeps the established
connections, each moved to the new process with its descriptor
(Connection::Export/Import), as nginx's binary upgrade keeps only the
listener.

usage: serve_upgrade_interop.py PATH/TO/ktls-serve [TEST_NAME_SUBSTRING...]

Runs as root (the UML guests do), for --privsep.

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
  requests count there;
- with --privsep --user nobody all of the above but the connection that
  cannot move (the key holder ends those itself) hold too: the connections
  go from the old workers, through the old and the new key holder, to the
  new workers, which serve them as nobody; the old key holder and its
  workers exit; a failed upgrade leaves the old workers serving; a worker
  killed while it hands over loses its own connections, no others; a
  stopped worker (SIGSTOP) does not keep the old key holder: it is killed
  once the recall's bound (--drain-timeout plus --handshake-timeout) has
  passed, and the upgrade finishes with the other worker's connections.
- --privsep, workers made hostile (hostile_worker.c, LD_PRELOAD): the old
  ones hand back 150 connections set to block their next holder (blocking,
  SO_LINGER for a day, send buffer full, client not reading) and the new
  ones are stuck: the new key holder ends what their full queues cannot
  take without waiting on any, finishes the hand-over and handshakes;
- --privsep, 150 idle connections handed over at once to new workers that
  take nothing for their first 1.5 s: every one waits for room and goes on.

Exit status as the other interop suites: 0, 1, or 77 (SKIP) without kTLS
(a failure with KTLS_REQUIRE_KERNEL=1).
"""
import contextlib
import os
import pwd
import shutil
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
import serve_interop as serve  # noqa: E402
import serve_metrics_interop as metrics  # noqa: E402
from ktls_interop import STEP_TIMEOUT, Upgraded, sha, socket_holders, wait_until  # noqa: E402
import serve_privsep_interop as privsep  # noqa: E402
from ktls_interop import privsep_workers  # noqa: E402
from serve_privsep_interop import get  # noqa: E402

BINARY = ""  # The copy ktls-serve runs from.
BIG = b""
HOSTILE = None  # ktls_interop.HostileWorkers


class Serve(serve.Serve):
    def __enter__(self):
        serve.SERVE, saved = BINARY, serve.SERVE
        try:
            return super().__enter__()
        finally:
            serve.SERVE = saved


class PrivsepServe(ktls_interop.PrivsepWorkers, Serve):
    """Serve with --privsep --user nobody (two workers)."""

    def __init__(self, *args, rx=True):
        super().__init__(*privsep.privsep_args(), *args, rx=rx)

    def __enter__(self):
        super().__enter__()
        self.first_workers = self.workers()
        return self


class UpgradeCases:
    """The tests both ways of running share: serve() starts the server,
    the hooks check what differs."""

    def taken_over(self, server, new_pid):
        """After the old process exited; new_pid serves."""

    def served_by_new_process(self, server, sock, new_pid):
        """sock's last request was answered after the upgrade."""

    def still_serving(self, server, before):
        """After a failed upgrade; before: what serving_state said before."""

    def serving_state(self, server):
        return None

    def test_keep_alive_connection_goes_on_in_the_new_process(self):
        with self.serve() as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as sock:
                    port = sock.getsockname()[1]
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    delta = server.stat_delta()
                    self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (1, 1), f"offloaded: {delta}")
                    server.proc.send_signal(signal.SIGUSR2)
                    new_pid = upgraded.wait_taken_over()
                    self.assertNotEqual(new_pid, server.proc.pid)
                    self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0, server.err.text())
                    self.taken_over(server, new_pid)
                    # From here on nothing is offloaded again (the new
                    # process's start-up probes are done).
                    server.stats_before = ktls_interop.read_tls_stat()
                    # The old process is gone: this is the new one, on the
                    # same TCP connection, with no new handshake.
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    self.assertEqual(sock.getsockname()[1], port)
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    self.served_by_new_process(server, sock, new_pid)
                delta = server.stat_delta()
                self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (0, 0), f"no second offload: {delta}")
                self.assertIn("handed over everything", server.err.text())
            finally:
                upgraded.stop()

    def test_download_in_flight_arrives_intact_then_moves(self):
        with self.serve() as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as sock:
                    sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    data = sock.recv(65536)
                    server.proc.send_signal(signal.SIGUSR2)
                    # The download, unread, holds the hand-over open: a
                    # SIGUSR2 to the new process now is refused (it would
                    # recall what is still on its way), and nothing is lost.
                    new_pid = upgraded.wait_taken_over()
                    os.kill(new_pid, signal.SIGUSR2)
                    self.assertTrue(wait_until(lambda: "still taking over from the previous process"
                                               in server.err.text(), STEP_TIMEOUT), server.err.text())
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
                    self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 3), 0, server.err.text())
                    self.taken_over(server, new_pid)
                    self.assertEqual(get(sock, "/small.txt"), b"small\n", "the same connection, in the new process")
                    self.served_by_new_process(server, sock, new_pid)
            finally:
                upgraded.stop()

    def test_the_new_process_counts_a_connection_it_took_over_as_open_not_new(self):
        kernel = metrics.key("ktls_connections_total", tx="kernel", rx="kernel")
        ok = metrics.key("ktls_requests_total", code="200")
        open_now = metrics.key("ktls_open_connections")
        with self.serve("--metrics", f"{ktls_interop.HOST}:0") as server:
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
                    # (With --privsep a worker of the new process counts it
                    # once it has it.)
                    self.assertTrue(wait_until(lambda: new.scrape()[0].get(open_now) == 1, STEP_TIMEOUT))
                    samples = new.scrape()[0]
                    self.assertEqual((samples[open_now], samples[kernel], samples[ok]), (1, 0, 0), samples)
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
                    self.assertTrue(wait_until(lambda: new.scrape()[0].get(ok) == 1, STEP_TIMEOUT))
                self.assertTrue(wait_until(lambda: new.scrape()[0].get(open_now) == 0, STEP_TIMEOUT))
                self.assertEqual(new.scrape()[0][kernel], 0, "counted where it was handshaken")
            finally:
                upgraded.stop()

    def test_a_binary_that_cannot_start_leaves_the_old_process_serving(self):
        with self.serve() as server:
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(get(sock, "/small.txt"), b"small\n")
                before = self.serving_state(server)
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
                    self.still_serving(server, before)
                finally:
                    os.replace(BINARY + ".saved", BINARY)
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(get(sock, "/small.txt"), b"small\n", "new connections too")
            self.assertIsNone(server.proc.poll())

    def test_a_new_process_that_cannot_listen_for_metrics_leaves_the_old_one_serving(self):
        # --metrics on a fixed port: the new process cannot bind it while
        # this one holds it, so it never says it serves.
        port = ktls_interop.free_port()
        with self.serve("--metrics", f"{ktls_interop.HOST}:{port}") as server:
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(get(sock, "/small.txt"), b"small\n")
                before = self.serving_state(server)
                server.proc.send_signal(signal.SIGUSR2)
                self.assertTrue(wait_until(lambda: "upgrade failed" in server.err.text(), STEP_TIMEOUT),
                                server.err.text())
                self.assertIn("goes on serving", server.err.text())
                self.assertNotIn("serves now", server.err.text())
                self.assertEqual(get(sock, "/small.txt"), b"small\n")
                self.still_serving(server, before)
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(get(sock, "/small.txt"), b"small\n", "new connections too")
            # The old process still serves /metrics (a request is counted
            # once its last byte went out).
            metrics.settled(self, lambda: metrics.MetricsAt(port).scrape()[0],
                            {metrics.key("ktls_requests_total", code="200"): 3})
            self.assertIsNone(server.proc.poll())


class Upgrade(UpgradeCases, unittest.TestCase):
    def serve(self, *args, **kwargs):
        return Serve(*args, **kwargs)

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


class PrivsepUpgrade(ktls_interop.PrivsepUpgradeChecks, UpgradeCases, unittest.TestCase):
    """--privsep --user nobody: the connections are in the workers."""

    def serve(self, *args, **kwargs):
        return PrivsepServe(*args, **kwargs)

    def setUp(self):
        self.nobody = pwd.getpwnam(privsep.USER).pw_uid

    def taken_over(self, server, new_pid):
        # The old key holder has exited (the caller waited): its workers too.
        self.assert_old_workers_gone(server)
        self.assertIn("handing 1 connection(s) back", server.err.text())
        self.assert_new_workers_ready(server, new_pid)

    def served_by_new_process(self, server, sock, new_pid):
        self.assert_held_by_a_new_worker(server.port, sock.getsockname()[1], new_pid)

    def test_the_old_workers_exit(self):
        with self.serve() as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as first, serve.tls_connect(server.port) as second:
                    # Round robin: one connection in each old worker.
                    self.assertEqual(get(first, "/small.txt"), b"small\n")
                    self.assertEqual(get(second, "/small.txt"), b"small\n")
                    server.proc.send_signal(signal.SIGUSR2)
                    new_pid = upgraded.wait_taken_over()
                    self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0, server.err.text())
                    self.taken_over(server, new_pid)
                    for sock in (first, second):
                        self.assertEqual(get(sock, "/small.txt"), b"small\n")
                        self.served_by_new_process(server, sock, new_pid)
                self.assertEqual(server.err.text().count("connection(s) back"), 2, server.err.text())
            finally:
                upgraded.stop()

    def test_a_worker_that_dies_handing_over_loses_only_its_connections(self):
        with self.serve() as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as idle, serve.tls_connect(server.port) as busy:
                    self.assertEqual(get(idle, "/small.txt"), b"small\n")
                    # A download the client does not read: its worker
                    # cannot hand it over before the response is sent.
                    busy.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    self.assertTrue(busy.recv(65536).startswith(b"HTTP/1.1 200"))
                    [stuck] = socket_holders(server.port, busy.getsockname()[1], server.first_workers)
                    server.proc.send_signal(signal.SIGUSR2)
                    new_pid = upgraded.wait_taken_over()
                    self.assertTrue(wait_until(lambda: server.err.text().count("connection(s) back") == 2,
                                               STEP_TIMEOUT), server.err.text())
                    self.assertIsNone(server.proc.poll(), "the old key holder waits for the busy worker")
                    os.kill(stuck, signal.SIGKILL)
                    self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0, server.err.text())
                    self.taken_over(server, new_pid)
                    self.assertEqual(get(idle, "/small.txt"), b"small\n")
                    self.served_by_new_process(server, idle, new_pid)
                    self.assertEqual(socket_holders(server.port, busy.getsockname()[1],
                                                    [new_pid, *privsep_workers(new_pid)]), [], "lost with its worker")
            finally:
                upgraded.stop()

    @contextlib.contextmanager
    def idle_connections_handed_over(self, stall_ms, handback):
        """150 idle keep-alive connections in the old workers (small receive
        buffers, unread), the workers made hostile (hostile_worker.c;
        handback: the old ones hand back connections set to block their
        next holder) and the new ones stalled for stall_ms: yields server,
        the new pid and the sockets once upgraded (the old process exited
        with 0, the hand-over done)."""
        socks = []
        with ktls_interop.environment(HOSTILE.env(handback=handback)), self.serve() as server:
            upgraded = Upgraded(server)
            try:
                socks = ktls_interop.idle_connections(server.port, 150, get, "/small.txt")
                HOSTILE.stall(stall_ms, 2)
                server.proc.send_signal(signal.SIGUSR2)
                new_pid = upgraded.wait_taken_over()
                self.assertTrue(wait_until(lambda: HOSTILE.stalled(2), STEP_TIMEOUT), server.err.text())
                HOSTILE.unstall()  # No other worker stalls (one started again, say).
                self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 2), 0, server.err.text())
                self.assertTrue(wait_until(lambda: "handed over everything it could" in server.err.text(),
                                           STEP_TIMEOUT), server.err.text())
                yield server, new_pid, socks
            finally:
                for sock in socks:
                    sock.close()
                HOSTILE.unstall()
                upgraded.stop()

    def test_a_key_holder_never_blocks_on_what_a_worker_set_on_a_connection(self):
        # The old workers hand back every connection set to block its next
        # holder (blocking, SO_LINGER for a day, its send buffer full and
        # the client not reading), and the new workers are stuck (ten
        # minutes): the new key holder ends the connections their full
        # queues cannot take, never waiting on one, and goes on handshaking.
        with self.idle_connections_handed_over(600 * 1000, handback=True) as (server, _, _):
            self.assertIn("not moved to a worker", server.err.text())
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(sock.version(), "TLSv1.3", "the new key holder handshakes")

    def test_a_burst_of_connections_waits_for_new_workers_slow_to_start(self):
        # The new workers take nothing for their first 1.5 s, and the 150
        # connections are more than their queues hold: each waits for room
        # (up to kTakeOverRoomWait) rather than end.
        with self.idle_connections_handed_over(1500, handback=False) as (server, new_pid, socks):
            self.assertNotIn("not moved", server.err.text())
            for sock in socks:
                self.assertEqual(get(sock, "/small.txt"), b"small\n")
            self.assert_new_workers_ready(server, new_pid)

    def test_a_stopped_worker_is_killed_and_the_upgrade_finishes(self):
        with self.serve(*self.RECALL_BOUND) as server:
            upgraded = Upgraded(server)
            try:
                with serve.tls_connect(server.port) as kept, serve.tls_connect(server.port) as lost:
                    # Round robin: one connection in each old worker.
                    self.assertEqual(get(kept, "/small.txt"), b"small\n")
                    self.assertEqual(get(lost, "/small.txt"), b"small\n")
                    [stopped] = socket_holders(server.port, lost.getsockname()[1], server.first_workers)
                    self.assertNotIn(stopped, socket_holders(server.port, kept.getsockname()[1], server.first_workers))
                    new_pid = self.upgrade_with_a_stopped_worker(server, upgraded, stopped)
                    self.assertEqual(get(kept, "/small.txt"), b"small\n", "moved from the healthy worker")
                    self.served_by_new_process(server, kept, new_pid)
                    self.assertEqual(socket_holders(server.port, lost.getsockname()[1],
                                                    [new_pid, *privsep_workers(new_pid)]), [], "lost with its worker")
                with serve.tls_connect(server.port) as new:
                    self.assertEqual(get(new, "/small.txt"), b"small\n", "the new process serves new clients")
            finally:
                upgraded.stop()


def set_up(directory):
    global BINARY, BIG, HOSTILE
    serve.SITE = os.path.join(directory, "site")
    os.makedirs(serve.SITE)
    BIG = os.urandom(64 * 1024 * 1024)
    for name, data in (("small.txt", b"small\n"), ("big.bin", BIG)):
        with open(os.path.join(serve.SITE, name), "wb") as f:
            f.write(data)
    BINARY = os.path.join(directory, "ktls-serve")
    shutil.copy2(serve.SERVE, BINARY)
    # --privsep: the workers, as nobody, start BINARY and open the site.
    for path in (directory, serve.SITE):
        os.chmod(path, 0o755)
    for name in os.listdir(serve.SITE):
        os.chmod(os.path.join(serve.SITE, name), 0o644)
    os.chmod(BINARY, 0o755)
    privsep.make_key(directory)
    HOSTILE = ktls_interop.HostileWorkers(directory)


def main():
    # --privsep starts as root (to start the workers as another user).
    return metrics.suite_main(sys.modules[__name__], "ktls-serve-upgrade-", set_up, as_root=True)


if __name__ == "__main__":
    sys.exit(main())
