#!/usr/bin/env python3
"""ktls-proxy on SIGUSR2: a binary upgrade that keeps the relaying
connections, each moved to the new process at a quiet point (both pipes
empty) with its two sockets (Connection::Export/Import for the TLS ones).

usage: proxy_upgrade_interop.py PATH/TO/ktls-proxy [TEST_NAME_SUBSTRING...]

ktls-proxy runs from a copy of the binary in a temporary directory, so that
a test can replace "the binary on disk" as an upgrade would. On kernels
before 6.14 it runs with --rx: only connections with both directions in the
kernel move.

- an echo before and after the upgrade on the same TCP connection (same
  local port, offloaded once: tls_stat), the old process exits with 0, the
  new one relays it and writes its one line, with the bytes of both;
- the new process upgrades again, as it was started (its connection goes
  on in a third one);
- a handshake in flight at the upgrade finishes in the old process, then
  the connection moves;
- a half-closed connection moves (the client's close_notify passed on as
  the backend's FIN before), and the backend's reply follows from the new
  process;
- 64 MiB down and 16 MiB up in flight during the upgrade arrive intact
  (SHA-256 at both ends), on one connection offloaded once;
- the binary on disk replaced by one that exits at once, or gone: the old
  process goes on serving (the open connection and new ones), and says why;
- --backend-tls: both legs move, offloaded once each;
- a connection that cannot move (--no-rx) stays in the old process, which
  relays it to its end, writes its line, says why it stayed, then exits;
- with --privsep --user nobody all of the above but the connection that
  cannot move (--privsep ends that one at once); a handshake in flight in
  the old key holder goes to one of its workers, or once it recalled them
  to the new key holder;
  the old workers hand their connections back to the old key holder, which
  relays each to the new one, which hands it to one of its workers; after
  the upgrade the connection is held by a new worker running as nobody
  (not by the new key holder), and the old key holder and its workers have
  exited; a failed upgrade leaves the same workers serving; a stopped
  worker (SIGSTOP) is killed once the recall's bound (--drain-timeout plus
  --handshake-timeout) has passed, the other worker's connection moves,
  and the new process upgrades again; a worker full at --max-connections,
  with a handshaken client queued for it, still hands everything back.
- --privsep, one new worker stuck (hostile_worker.c, LD_PRELOAD): the new
  key holder passes it over once its queue has no room for a whole moved
  connection and finishes the hand-over; no key holder holds a connection;
- --privsep, a new worker killed during the hand-over: the worker started
  again in its slot for the last connection outlives the hand-over (no
  SIGTERM when the hand-over's thread ends: workers are forked on the
  pool's spawner thread).

Exit status as the other interop suites: 0, 1, or 77 (SKIP) without kTLS
(a failure with KTLS_REQUIRE_KERNEL=1).
"""
import hashlib
import os
import re
import selectors
import shutil
import pwd
import signal
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
import proxy_interop as proxy  # noqa: E402
from ktls_interop import STEP_TIMEOUT, Upgraded, read_tls_stat, sha, wait_until  # noqa: E402
from ktls_interop import privsep_workers, socket_holders  # noqa: E402

BINARY = ""  # The copy ktls-proxy runs from.
MIB = 1024 * 1024
DOWN_LEN = 64 * MIB
UP_LEN = 16 * MIB
DOWN = b""
UP = b""
USER = "nobody"
HOSTILE = None  # ktls_interop.HostileWorkers


class Proxy(proxy.Proxy):
    """ktls-proxy from BINARY, with --rx where the kernel would keep RX in
    OpenSSL (rx=False: without)."""

    def __init__(self, backend_port, *args, rx=True):
        rx_args = ("--rx",) if rx and not proxy.REKEY else ()
        proxy.PROXY, saved = BINARY, proxy.PROXY
        try:
            super().__init__(backend_port, *rx_args, *args)
        finally:
            proxy.PROXY = saved


class PrivsepProxy(ktls_interop.PrivsepWorkers, Proxy):
    """Proxy with --privsep --user nobody (two workers: --threads 2)."""

    def __init__(self, backend_port, *args, rx=True):
        super().__init__(backend_port, "--privsep", "--user", USER, *args, rx=rx)

    def __enter__(self):
        super().__enter__()
        self.first_workers = self.workers()
        return self


def duplex(client, payload, expect_len, on_progress, timeout):
    """Sends payload and reads expect_len bytes at the same time (one
    thread, selectors: neither side waits for the other); on_progress(got)
    after each read. Returns the SHA-256 of what was read."""
    sock, hasher = client.sock, hashlib.sha256()
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    pending, sent, got = b"", 0, 0
    deadline = time.monotonic() + timeout
    try:
        while got < expect_len or pending or sent < len(payload):
            if not pending and sent < len(payload):
                pending, sent = client.records_of(payload[sent:sent + MIB // 4]), min(len(payload), sent + MIB // 4)
            selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0))
            events = selector.select(timeout=1)
            if time.monotonic() > deadline:
                raise AssertionError(f"stuck after {sent} bytes sent, {got} of {expect_len} read")
            for _, mask in events:
                if mask & selectors.EVENT_WRITE and pending:
                    pending = pending[sock.send(pending):]
                if mask & selectors.EVENT_READ:
                    chunk = sock.recv(256 * 1024)
                    if not chunk:
                        raise AssertionError(f"closed after {got} of {expect_len} bytes")
                    client.incoming.write(chunk)
                    while True:
                        try:
                            data = client.tls.read(256 * 1024)
                        except ssl.SSLWantReadError:
                            break
                        if not data:
                            raise AssertionError(f"close_notify after {got} of {expect_len} bytes")
                        hasher.update(data)
                        got += len(data)
                    on_progress(got)
    finally:
        selector.close()
        sock.setblocking(True)
        sock.settimeout(STEP_TIMEOUT)
    return hasher.hexdigest()


class UpgradeCases:
    """The tests both ways of running share: proxy() starts ktls-proxy, the
    hooks check what differs."""

    def taken_over(self, server, new_pid):
        """After the old process exited; new_pid serves."""

    def new_process_ready(self, server, new_pid):
        """new_pid serves: wait until it is past its start-up probes."""

    def served_by_new_process(self, server, client, new_pid):
        """client's last echo was relayed after the upgrade."""

    def serving_state(self, server):
        return None

    def still_serving(self, server, before):
        """After a failed upgrade; before: what serving_state said before."""

    def expected_rx(self):
        return "kernel"

    def upgrade(self, server, upgraded):
        """SIGUSR2, then the new process's pid once it serves and the old
        one has exited with status 0."""
        server.proc.send_signal(signal.SIGUSR2)
        new_pid = upgraded.wait_taken_over()
        self.assertNotEqual(new_pid, server.proc.pid)
        self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 2), 0, server.err.text())
        self.assertTrue(os.path.exists(f"/proc/{new_pid}") and not ktls_interop.zombie(new_pid))
        self.new_process_ready(server, new_pid)
        self.taken_over(server, new_pid)
        return new_pid

    def connect(self, server):
        """A TLS client through server, handshaken, its reads bounded."""
        client = proxy.TlsClient(server.port).handshake()
        client.sock.settimeout(STEP_TIMEOUT)
        return client

    def assert_not_offloaded_since(self, before):
        """Nothing offloaded (a moved connection is not offloaded again), no
        record that failed to decrypt, since tls_stat said before."""
        after = read_tls_stat()
        self.assertEqual(tuple(after[name] - before[name] for name in ("TlsTxSw", "TlsRxSw", "TlsDecryptError")),
                         (0, 0, 0), "offloaded again, or a record that did not decrypt")

    def test_echo_goes_on_in_the_new_process_on_the_same_connection(self):
        backend = proxy.Backend(proxy.echo)
        with self.proxy(backend.port) as server:
            upgraded = Upgraded(server)
            try:
                client = self.connect(server)
                port = client.sock.getsockname()[1]
                self.assertEqual(client.echo(b"before"), b"before")
                delta = server.stat_delta()
                self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (1, 1), f"offloaded: {delta}")
                new_pid = self.upgrade(server, upgraded)
                # The new process's start-up probe is done: from here on
                # nothing may be offloaded again.
                before_new = read_tls_stat()
                self.assertEqual(client.echo(b"after"), b"after", "relayed by the new process")
                self.assertEqual(client.sock.getsockname()[1], port)
                self.served_by_new_process(server, client, new_pid)
                data, ending = client.echo_and_close(b"last")
                self.assertEqual((data, ending), (b"last", "close_notify"))
                line = server.line_for(port)
                backend.finish(self)
                self.check_line(line, up=15, down=15, end="client_close_notify")
                self.assert_not_offloaded_since(before_new)
                self.assertEqual([ln["client"] for ln in server.lines()], [f"{proxy.HOST}:{port}"], "one line")
                self.assertIn("handed over everything it could", server.err.text())
            finally:
                upgraded.stop()

    def test_the_new_process_upgrades_again(self):
        backend = proxy.Backend(proxy.echo)
        with self.proxy(backend.port) as server:
            upgraded = Upgraded(server)
            try:
                client = self.connect(server)
                self.assertEqual(client.echo(b"one"), b"one")
                first = self.upgrade(server, upgraded)
                self.assertTrue(wait_until(lambda: "handed over everything" in server.err.text(), STEP_TIMEOUT))
                os.kill(first, signal.SIGUSR2)

                def second():
                    pids = re.findall(r"upgrade: pid (\d+) serves now", server.err.text())
                    return int(pids[1]) if len(pids) == 2 else None
                self.assertTrue(wait_until(second, STEP_TIMEOUT), server.err.text())
                upgraded.pid = second()
                self.assertTrue(wait_until(lambda: ktls_interop.zombie(first), STEP_TIMEOUT), "the first one exits")
                self.assertEqual(client.echo(b"two"), b"two", "relayed by the third process")
                self.assertEqual(client.echo_and_close(b"end"), (b"end", "close_notify"))
                self.check_line(server.line_for(client.port), up=9, down=9, end="client_close_notify")
                backend.finish(self)
            finally:
                upgraded.stop()

    def test_a_half_closed_connection_moves_and_its_reply_follows(self):
        """The client's close_notify has become the backend's FIN before the
        upgrade; the backend's reply comes after it, from the new process."""
        reply = os.urandom(3 * MIB)
        got_fin, takeover_done = threading.Event(), threading.Event()
        request = []

        def serve(conn):
            request.append(proxy.recv_all(conn))
            got_fin.set()
            takeover_done.wait(STEP_TIMEOUT * 2)
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)

        backend = proxy.Backend(serve)
        with self.proxy(backend.port) as server:
            upgraded = Upgraded(server)
            try:
                client = self.connect(server)
                client.send(b"request")
                client.close_notify()
                self.assertTrue(got_fin.wait(STEP_TIMEOUT), "the backend saw no FIN")
                self.upgrade(server, upgraded)  # The old process exits: it moved.
                takeover_done.set()
                data, ending = client.read()
                client.close()
                line = server.line_for(client.port)
                backend.finish(self)
                self.assertEqual(request, [b"request"])
                self.assertEqual((sha(data), ending), (sha(reply), "close_notify"))
                self.check_line(line, up=7, down=len(reply), end="client_close_notify")
                self.assertNotIn("stays in this process", server.err.text())
            finally:
                takeover_done.set()
                upgraded.stop()


    def test_a_handshake_in_flight_finishes_in_the_old_process_then_moves(self):
        backend = proxy.Backend(proxy.echo)
        with self.proxy(backend.port) as server:
            upgraded = Upgraded(server)
            try:
                client = proxy.TlsClient(server.port)
                client.start_handshake()
                # The old process answered the ClientHello: its handshake is
                # in flight when the upgrade starts.
                self.assertTrue(client.sock.recv(1, socket.MSG_PEEK))
                server.proc.send_signal(signal.SIGUSR2)
                new_pid = upgraded.wait_taken_over()
                client.handshake()
                client.sock.settimeout(STEP_TIMEOUT)
                self.assertEqual(client.echo(b"ping"), b"ping")
                self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 2), 0, "exits once it moved")
                self.assertEqual(client.echo(b"pong"), b"pong", "relayed by the new process")
                self.served_by_new_process(server, client, new_pid)
                self.assertEqual(client.echo_and_close(b"last"), (b"last", "close_notify"))
                line = server.line_for(client.port)
                backend.finish(self)
                self.check_line(line, up=12, down=12, end="client_close_notify")
                # With --privsep the handshake was in the old key holder,
                # which gives it to a worker or, once it recalled them, to
                # the new key holder.
                self.assertRegex(server.err.text(), r"handing over (the workers' connections and )?1 connection\(s\)")
                self.assertNotIn("stays in this process", server.err.text())
            finally:
                upgraded.stop()

    def test_transfer_in_flight_both_ways_arrives_intact(self):
        got_up = hashlib.sha256()

        def serve(conn):
            sender = threading.Thread(target=conn.sendall, args=(DOWN,), daemon=True)
            sender.start()
            proxy.recv_all(conn, got_up)
            sender.join(timeout=STEP_TIMEOUT * 6)
            conn.shutdown(socket.SHUT_WR)

        backend = proxy.Backend(serve)
        with self.proxy(backend.port) as server:
            upgraded = Upgraded(server)
            try:
                client = proxy.TlsClient(server.port).handshake()
                # The proxy offloads once it has read the client's Finished.
                self.assertTrue(wait_until(lambda: (server.stat_delta()["TlsTxSw"], server.stat_delta()["TlsRxSw"])
                                           == (1, 1), STEP_TIMEOUT), f"offloaded: {server.stat_delta()}")
                taken_over = []

                def on_progress(got):
                    if got >= 2 * MIB and not taken_over:
                        # The rest stays in flight (pipes and socket buffers
                        # full both ways) until the new process serves.
                        server.proc.send_signal(signal.SIGUSR2)
                        self.new_process_ready(server, upgraded.wait_taken_over())
                        taken_over.append(read_tls_stat())  # After its start-up probe.

                down_hash = duplex(client, UP, DOWN_LEN, on_progress, STEP_TIMEOUT * 6)
                self.assertTrue(taken_over)
                client.close_notify()
                self.assertEqual(client.read(), (b"", "close_notify"))
                client.close()
                self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 2), 0, server.err.text())
                line = server.line_for(client.port)
                backend.finish(self)
                self.assertEqual(down_hash, sha(DOWN), "the download arrived changed")
                self.assertEqual(got_up.hexdigest(), sha(UP), "the upload arrived changed")
                self.check_line(line, up=UP_LEN, down=DOWN_LEN)
                self.assertIn(line["end"], ("client_close_notify", "backend_eof"), line)
                self.assertIn(self.handing_over_one, server.err.text())
                for word in ("stays in this process", "not moved", "taking over a connection"):
                    self.assertNotIn(word, server.err.text())
                self.assert_not_offloaded_since(taken_over[0])
            finally:
                upgraded.stop()

    def test_a_binary_that_cannot_take_over_leaves_the_old_process_serving(self):
        for replacement in ("#!/bin/sh\nexit 3\n", None):
            with self.subTest(replacement="exits at once" if replacement else "gone"):
                backend = proxy.SelectorEchoBackend()
                try:
                    with self.proxy(backend.port) as server:
                        client = self.connect(server)
                        self.assertEqual(client.echo(b"before"), b"before")
                        before = self.serving_state(server)
                        os.rename(BINARY, BINARY + ".saved")
                        try:
                            if replacement:
                                with open(BINARY, "w") as f:
                                    f.write(replacement)
                                os.chmod(BINARY, 0o755)
                            server.proc.send_signal(signal.SIGUSR2)
                            self.assertTrue(wait_until(lambda: "upgrade failed" in server.err.text(), STEP_TIMEOUT),
                                            server.err.text())
                        finally:
                            os.replace(BINARY + ".saved", BINARY)
                        self.assertRegex(server.err.text(), r"upgrade failed: pid \d+ \(\S+\) exited before it took "
                                         r"(over|the listeners); this process goes on serving")
                        self.assertEqual(client.echo(b"after"), b"after")
                        self.assertEqual(client.echo_and_close(b"last"), (b"last", "close_notify"))
                        other = self.connect(server)
                        self.assertEqual(other.echo_and_close(b"new"), (b"new", "close_notify"), "new clients too")
                        self.assertEqual(server.line_for(client.port)["up"], str(6 + 5 + 4))
                        self.assertIsNone(server.proc.poll())
                        self.still_serving(server, before)
                        self.stopped_cleanly(server)
                finally:
                    backend.stop()

    def test_backend_tls_both_legs_move(self):
        # A backend chain of about 18 KiB: the proxy keeps none of it, so the
        # state that moves stays small enough for a worker's queue.
        backend = proxy.TlsBackend(chain=proxy.PKI.fat_chain)
        with self.proxy(backend.port, "--backend-tls", "--backend-ca", proxy.PKI.ca.cert,
                   "--backend-sni", "localhost") as server:
            upgraded = Upgraded(server)
            try:
                client = self.connect(server)
                self.assertEqual(client.echo(b"before"), b"before")
                delta = server.stat_delta()
                self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (2, 2), f"both legs offloaded: {delta}")
                self.upgrade(server, upgraded)
                before_new = read_tls_stat()
                self.assertEqual(client.echo(b"after"), b"after")
                self.assertEqual(client.echo_and_close(b"last"), (b"last", "close_notify"))
                line = server.line_for(client.port)
                backend.join(timeout=STEP_TIMEOUT)
                self.assertIsNone(backend.error)
                self.assertEqual(backend.peer_end, "close_notify")
                self.assertEqual(backend.hash.hexdigest(), sha(b"beforeafterlast"))
                self.check_line(line, backend_tx="kernel", backend_rx="kernel", up=15, down=15,
                                end="client_close_notify")
                self.assert_not_offloaded_since(before_new)
            finally:
                upgraded.stop()


class Upgrade(UpgradeCases, proxy.ProxyTest):
    handing_over_one = "handing over 1 connection(s)"

    def proxy(self, backend_port, *args, rx=True):
        return Proxy(backend_port, *args, rx=rx)

    def test_a_connection_that_cannot_move_stays_in_the_old_process_to_its_end(self):
        backend = proxy.Backend(proxy.echo, count=2)
        with self.proxy(backend.port, "--no-rx", rx=False) as server:
            upgraded = Upgraded(server)
            try:
                client = self.connect(server)
                self.assertEqual(client.echo(b"before"), b"before")
                server.proc.send_signal(signal.SIGUSR2)
                new_pid = upgraded.wait_taken_over()
                self.assertTrue(wait_until(lambda: "stays in this process" in server.err.text(), STEP_TIMEOUT))
                self.assertIn(f"{proxy.HOST}:{client.port} stays in this process until it ends: client: RX is in "
                              "OpenSSL", server.err.text())
                self.assertIsNone(server.proc.poll(), "the old process relays it on")
                self.assertEqual(client.echo(b"after"), b"after")
                self.assertEqual(client.echo_and_close(b"last"), (b"last", "close_notify"))
                line = server.line_for(client.port)
                self.assertEqual((line["rx"], line["up"], line["end"]), ("user", "15", "client_close_notify"), line)
                self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0, "exits once it holds none")
                # The new process serves new clients.
                other = self.connect(server)
                self.assertEqual(other.echo_and_close(b"new"), (b"new", "close_notify"))
                server.line_for(other.port)
                self.assertTrue(os.path.exists(f"/proc/{new_pid}"))
                backend.finish(self)
            finally:
                upgraded.stop()


class PrivsepUpgrade(ktls_interop.PrivsepUpgradeChecks, UpgradeCases, proxy.ProxyTest):
    """--privsep --user nobody: the connections are in the workers."""

    handing_over_one = "handing 1 connection(s) back"

    def proxy(self, backend_port, *args, rx=True):
        return PrivsepProxy(backend_port, *args, rx=rx)

    def setUp(self):
        self.nobody = pwd.getpwnam(USER).pw_uid

    def new_process_ready(self, server, new_pid):
        self.assert_new_workers_ready(server, new_pid)

    def taken_over(self, server, new_pid):
        # The old key holder has exited (the caller waited): its workers too.
        self.assert_old_workers_gone(server)
        self.assertEqual(server.err.text().count("connection(s) back for the new process"), 2, server.err.text())

    def served_by_new_process(self, server, client, new_pid):
        self.assert_held_by_a_new_worker(server.port, client.sock.getsockname()[1], new_pid)

    def test_a_stuck_new_worker_is_passed_over_never_waited_for(self):
        # One new worker takes nothing (it sleeps for ten minutes first:
        # hostile_worker.c). Once its queue has no room for a whole moved
        # connection, the new key holder hands the rest to the other worker:
        # it never sends part of one and waits for the stuck worker.
        count = 60
        backend = proxy.Backend(proxy.echo, count=count)
        clients = []
        with ktls_interop.environment(HOSTILE.env(handback=False)), self.proxy(backend.port) as server:
            upgraded = Upgraded(server)
            try:
                for _ in range(count):
                    clients.append(self.connect(server))
                    self.assertEqual(clients[-1].echo(b"before"), b"before")
                HOSTILE.stall(600 * 1000, 1)
                server.proc.send_signal(signal.SIGUSR2)
                new_pid = upgraded.wait_taken_over()
                self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 2), 0, server.err.text())
                self.assertTrue(wait_until(lambda: "handed over everything it could" in server.err.text(),
                                           STEP_TIMEOUT * 2), server.err.text())
                workers = ktls_interop.privsep_workers(new_pid)
                running = [pid for pid in workers if f"worker {pid}: proxying" in server.err.text()]
                self.assertEqual((len(workers), len(running)), (2, 1), server.err.text())
                # None ended: the burst waited for room while the running
                # worker started. Each connection is the running worker's
                # (more than its turns: the stuck one was passed over), or
                # waits in the stuck worker's queue (held by no process).
                self.assertNotIn("not moved", server.err.text())
                holders = [ktls_interop.socket_holders(server.port, client.sock.getsockname()[1],
                                                       [new_pid, *workers]) for client in clients]
                self.assertEqual([h for h in holders if h and h != running], [], server.err.text())
                self.assertGreater(holders.count(running), count // 2, server.err.text())
                for client, holder in zip(clients, holders):
                    if holder:
                        self.assertEqual(client.echo(b"after"), b"after")
            finally:
                HOSTILE.unstall()
                for client in clients:
                    client.sock.close()
                upgraded.stop()

    def test_a_worker_started_again_during_the_hand_over_outlives_it(self):
        # A new worker dies before the old workers hand anything back (they
        # wait: hostile_worker.c's hold); the first connection for its
        # slot starts a worker again, from the hand-over's thread. A
        # worker's PR_SET_PDEATHSIG follows the thread that forked it: it
        # must not be that one, which ends right after.
        backend = proxy.Backend(proxy.echo, count=2)
        with ktls_interop.environment(HOSTILE.env(handback=False)), self.proxy(backend.port) as server:
            upgraded = Upgraded(server)
            try:
                # Round robin: one in each old worker, then one in each slot
                # of the new key holder.
                clients = [self.connect(server), self.connect(server)]
                for client in clients:
                    self.assertEqual(client.echo(b"before"), b"before")
                HOSTILE.hold()
                server.proc.send_signal(signal.SIGUSR2)
                new_pid = upgraded.wait_taken_over()
                self.assert_new_workers_ready(server, new_pid)
                first_new = ktls_interop.privsep_workers(new_pid)
                os.kill(first_new[0], signal.SIGKILL)
                self.assertTrue(wait_until(lambda: ktls_interop.gone(first_new[0]), STEP_TIMEOUT))
                HOSTILE.release()
                self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 2), 0, server.err.text())
                self.assertTrue(wait_until(lambda: "handed over everything it could" in server.err.text(),
                                           STEP_TIMEOUT), server.err.text())
                [again] = [pid for pid in ktls_interop.privsep_workers(new_pid) if pid not in first_new]
                self.assertTrue(wait_until(lambda: f"worker {again}: proxying" in server.err.text(), STEP_TIMEOUT))
                for client in clients:
                    self.assertEqual(client.echo(b"after"), b"after")
                self.assertEqual(sorted(pid for client in clients for pid in ktls_interop.socket_holders(
                    server.port, client.sock.getsockname()[1], [again, first_new[1]])), sorted([again, first_new[1]]))
                self.assertFalse(wait_until(lambda: f"worker {again}: signal" in server.err.text(), 3),
                                 "the worker started again was told to end: " + server.err.text())
                self.assertEqual(clients[0].echo(b"still"), b"still")
                self.assertEqual(clients[1].echo(b"still"), b"still")
            finally:
                HOSTILE.release()
                upgraded.stop()

    def test_a_stopped_worker_is_killed_and_the_upgrade_finishes(self):
        backend = proxy.SelectorEchoBackend()
        try:
            with self.proxy(backend.port, *self.RECALL_BOUND) as server:
                upgraded = Upgraded(server)
                try:
                    kept, lost = self.connect(server), self.connect(server)
                    # Round robin: one connection in each old worker.
                    self.assertEqual(kept.echo(b"kept"), b"kept")
                    self.assertEqual(lost.echo(b"lost"), b"lost")
                    [stopped] = socket_holders(server.port, lost.port, server.first_workers)
                    self.assertNotIn(stopped, socket_holders(server.port, kept.port, server.first_workers))
                    first = self.upgrade_with_a_stopped_worker(server, upgraded, stopped)
                    self.assertEqual(kept.echo(b"after"), b"after", "moved from the healthy worker")
                    self.served_by_new_process(server, kept, first)
                    self.assertEqual(socket_holders(server.port, lost.port, [first, *privsep_workers(first)]), [],
                                     "lost with its worker")
                    other = self.connect(server)
                    self.assertEqual(other.echo_and_close(b"new"), (b"new", "close_notify"), "new clients too")
                    # The old key holder closed its stream: the new one upgrades again.
                    self.assertTrue(wait_until(lambda: "handed over everything" in server.err.text(), STEP_TIMEOUT))
                    os.kill(first, signal.SIGUSR2)
                    self.assertTrue(wait_until(lambda: server.err.text().count("serves now") == 2, STEP_TIMEOUT),
                                    server.err.text())
                    upgraded.pid = int(re.findall(r"upgrade: pid (\d+) serves now", server.err.text())[1])
                    self.assertTrue(wait_until(lambda: ktls_interop.zombie(first), STEP_TIMEOUT), server.err.text())
                    self.assertEqual(kept.echo_and_close(b"third"), (b"third", "close_notify"))
                    self.assertNotIn("no upgrade", server.err.text())
                finally:
                    upgraded.stop()
        finally:
            backend.stop()

    def test_a_worker_at_max_connections_hands_back_its_connections(self):
        """--max-connections 1, two workers: the third client waits,
        handshaken, in the queue of a worker that is full (it stopped
        reading its socket); kRecall comes after it."""
        backend = proxy.SelectorEchoBackend()
        try:
            with self.proxy(backend.port, "--max-connections", "1", *self.RECALL_BOUND) as server:
                upgraded = Upgraded(server)
                try:
                    clients = [self.connect(server), self.connect(server)]
                    for client in clients:
                        self.assertEqual(client.echo(b"before"), b"before")
                    queued = self.connect(server)
                    clients.append(queued)
                    # Out of the key holder, in no worker: on its way, in a full worker's queue.
                    self.assertTrue(wait_until(lambda: socket_holders(server.port, queued.port,
                                                                      [server.proc.pid, *server.first_workers]) == [],
                                               STEP_TIMEOUT))
                    new_pid = self.upgrade(server, upgraded)
                    self.assertIn("handing 2 connection(s) back", server.err.text(), "the full worker's and its queued one")
                    # The new workers are as full: one connection waits again, until the others end.
                    got = {}

                    def read_after(client):
                        got[client.port] = client.read(5)[0]
                    readers = [threading.Thread(target=read_after, args=(c,), daemon=True) for c in clients]
                    for client, reader in zip(clients, readers):
                        client.send(b"after")
                        reader.start()
                    self.assertTrue(wait_until(lambda: len(got) >= 2, STEP_TIMEOUT), server.err.text())
                    echoed = [c for c in clients if c.port in got]
                    self.assertEqual(len(echoed), 2, "one waits for a free slot")
                    for client in echoed:
                        self.assertEqual(got[client.port], b"after")
                        self.served_by_new_process(server, client, new_pid)
                        self.assertEqual(client.echo_and_close(b"end"), (b"end", "close_notify"))
                    [last] = [c for c in clients if c not in echoed]
                    readers[clients.index(last)].join(STEP_TIMEOUT)
                    self.assertEqual(got.get(last.port), b"after", "served once a slot is free")
                    self.assertEqual(last.echo_and_close(b"end"), (b"end", "close_notify"))
                    for client in clients:
                        self.assertEqual(server.line_for(client.port)["end"], "client_close_notify")
                finally:
                    upgraded.stop()
        finally:
            backend.stop()


def set_up(directory):
    global BINARY, DOWN, UP, HOSTILE
    proxy.PKI = proxy.Pki(directory)
    # --privsep's workers (nobody) read nothing of it, but start from the
    # copy of the binary: it must be theirs to run.
    os.chmod(directory, 0o755)
    BINARY = os.path.join(directory, "ktls-proxy")
    shutil.copy2(proxy.PROXY, BINARY)
    DOWN = os.urandom(DOWN_LEN)
    UP = os.urandom(UP_LEN)
    HOSTILE = ktls_interop.HostileWorkers(directory)


def main():
    # As root: the --privsep case starts as root (the UML guests run as root).
    return proxy.suite_main(sys.modules[__name__], "ktls-proxy-upgrade-", set_up, as_root=True)


if __name__ == "__main__":
    sys.exit(main())
