#!/usr/bin/env python3
"""ktls-proxy --privsep, on a kernel with kTLS: a handshake process that
holds the key, and workers running as another user that connect to the
backend and proxy, each client connection moved to them
(Connection::Export/Import, SCM_RIGHTS).

usage: proxy_privsep_interop.py PATH/TO/ktls-proxy [TEST_NAME_SUBSTRING...]

Runs as root (the UML guests do): --privsep starts as root and runs its
workers as `nobody`. On kernels before 6.14 the proxy runs with --rx
(without it RX stays in OpenSSL there, and no connection could move).

- the workers run as nobody in every uid field, are not dumpable, hold no
  socket but their one to the handshake process while idle, and cannot
  open the key (tried with their own ids);
- an echo through a worker is byte-exact both ways, its line (written by
  the worker) says tx=kernel rx=kernel, and each direction was offloaded
  once (tls_stat): moving did not offload again;
- with --backend-tls the worker makes its own client context (the CA, no
  server key): both legs in the kernel;
- killing a worker ends only the connections it held: the handshake process
  goes on, the other worker's connection goes on, and new connections are
  proxied (the dead worker is started again);
- a connection that cannot move (--no-rx; on 6.1 also no --rx) is never
  proxied by the key holder: close_notify, a line with end=cannot_move and
  the reason, and the backend sees no connection;
- SIGTERM drains: a connection open in a worker goes on until it ends, then
  every process exits;
- --metrics (read by prometheus_client's parser): the key holder's /metrics
  counts each connection once (its handshake tx=kernel rx=kernel there,
  its end and bytes in the worker, exactly what the lines say), the open
  gauge is k while k are connected and 0 after; a killed worker's
  connection leaves the gauge, no counter goes down, the scrape starts the
  worker again, and counting goes on in it;
- --privsep without --user, with root, or with --no-offload is refused.

Exit status as the other interop suites: 0, 1, or 77 (SKIP) without kTLS
(a failure with KTLS_REQUIRE_KERNEL=1).
"""
import os
import pwd
import signal
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
import proxy_interop as proxy  # noqa: E402
import serve_metrics_interop as metrics  # noqa: E402
from ktls_interop import (HOST, STEP_TIMEOUT, can_open_as, ids, read_tls_stat, sanitized, sha,  # noqa: E402
                          sockets_of, uids, wait_until)

USER = "nobody"
PAYLOAD = b""  # 2 MiB and a bit, random.


class PrivsepProxy(ktls_interop.PrivsepWorkers, proxy.Proxy):
    """ktls-proxy --privsep --user nobody --threads 2 (two workers), with
    --rx where the kernel would keep RX in OpenSSL (rx=False: without)."""

    def __init__(self, backend_port, *args, rx=True):
        rx_args = ("--rx",) if rx and not proxy.REKEY else ()
        super().__init__(backend_port, "--privsep", "--user", USER, *rx_args, *args)


class PrivsepMetricsProxy(PrivsepProxy):
    """PrivsepProxy with --metrics on a free loopback port (scrape())."""

    def __init__(self, backend_port, *args):
        super().__init__(backend_port, "--metrics", f"{HOST}:0", *args)

    def __enter__(self):
        super().__enter__()
        ports = metrics.metrics_ports(self.err.text())
        if len(ports) != 1:
            self.stop()
            raise AssertionError("ktls-proxy did not say where its metrics are: " + self.err.text())
        self.metrics = metrics.MetricsAt(ports[0])
        return self

    def samples(self):
        return self.metrics.scrape()[0]


def zombie_or_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


class Privsep(proxy.ProxyTest):
    def expected_rx(self):
        return "kernel"  # Only connections with both directions in the kernel move.

    def test_workers_run_as_the_user_and_cannot_open_the_key(self):
        nobody = pwd.getpwnam(USER)
        backend = proxy.Backend(proxy.echo, count=0)
        with PrivsepProxy(backend.port) as server:
            for pid in server.workers():
                self.assertEqual(uids(pid), [nobody.pw_uid] * 4, f"worker {pid}")
                # /proc/PID belongs to root exactly when the process is not
                # dumpable (a sanitizer build stays dumpable for its leak
                # checker).
                if not sanitized(proxy.PROXY):
                    self.assertEqual(os.stat(f"/proc/{pid}/environ").st_uid, 0, f"worker {pid} is dumpable")
                # Idle: its socket to the handshake process, no listener.
                self.assertEqual(sockets_of(pid), 1, f"worker {pid}")
                # With the worker's own ids (uid, gid, groups): no key.
                worker = ids(pid)
                self.assertFalse(can_open_as(proxy.PKI.server.key, worker["Uid"][0], worker["Gid"][0],
                                             worker.get("Groups", [])), f"worker {pid} could open the key file")
            self.assertIn(f"workers running as {USER}", server.err.text())
            self.stopped_cleanly(server)

    def test_echo_through_a_worker_both_ways_in_the_kernel_offloaded_once(self):
        backend = proxy.Backend(proxy.echo)
        with PrivsepProxy(backend.port) as server:
            client = proxy.TlsClient(server.port).handshake()
            client.sock.settimeout(STEP_TIMEOUT * 3)
            self.assertEqual(client.echo(b"ping"), b"ping")
            # The connection is in a worker: its socket, the backend's, and
            # the one to the handshake process.
            self.assertEqual(sorted(sockets_of(pid) for pid in server.workers()), [1, 3])
            data, ending = client.echo_and_close(PAYLOAD)
            line = server.line_for(client.port)
            backend.finish(self)
            self.assertEqual(sha(data), sha(PAYLOAD), "the echo arrived changed")
            self.assertEqual(ending, "close_notify")
            self.check_line(line, up=len(PAYLOAD) + 4, down=len(PAYLOAD) + 4, end="client_close_notify")
            self.check_stats(server, 1, rx_kernel=1)  # Offloaded once, by the key holder; not again.
            self.stopped_cleanly(server)

    def test_backend_tls_the_worker_makes_its_own_client_context(self):
        backend = proxy.TlsBackend()
        with PrivsepProxy(backend.port, "--backend-tls", "--backend-ca", proxy.PKI.ca.cert,
                          "--backend-sni", "localhost") as server:
            client = proxy.TlsClient(server.port).handshake()
            data, ending = client.echo_and_close(PAYLOAD)
            line = server.line_for(client.port)
            backend.join(timeout=STEP_TIMEOUT)
            self.assertIsNone(backend.error)
            self.assertEqual((sha(data), ending), (sha(PAYLOAD), "close_notify"))
            self.assertEqual(backend.hash.hexdigest(), sha(PAYLOAD))
            self.check_line(line, backend_tx="kernel", backend_rx="kernel", up=len(PAYLOAD), down=len(PAYLOAD),
                            end="client_close_notify")
            self.check_stats(server, 2, rx_kernel=2)

    def test_killing_a_worker_ends_only_its_connections(self):
        backend = proxy.SelectorEchoBackend()
        try:
            with PrivsepProxy(backend.port) as server:
                # Round robin: the two connections go to the two workers.
                first = proxy.TlsClient(server.port).handshake()
                second = proxy.TlsClient(server.port).handshake()
                for client in (first, second):
                    client.sock.settimeout(STEP_TIMEOUT)
                    self.assertEqual(client.echo(b"ping"), b"ping")
                holders = {pid: sockets_of(pid) for pid in server.workers()}
                self.assertEqual(sorted(holders.values()), [3, 3], f"each worker one connection: {holders}")
                victim = server.workers()[0]
                os.kill(victim, signal.SIGKILL)
                # Dead (a zombie, its files closed), not dying: a hand-off into
                # a dying worker's socket would still be accepted, and lost.
                self.assertTrue(wait_until(lambda: zombie_or_gone(victim), STEP_TIMEOUT))
                alive = []
                for client in (first, second):
                    try:
                        alive.append(client.echo(b"again") == b"again")
                    except OSError:
                        alive.append(False)
                    client.close()
                self.assertEqual(sorted(alive), [False, True], "exactly the killed worker's connection ended")
                self.assertIsNone(server.proc.poll(), "the handshake process goes on")
                for _ in range(4):  # Both slots, the dead one started again.
                    client = proxy.TlsClient(server.port).handshake()
                    client.sock.settimeout(STEP_TIMEOUT)
                    try:
                        self.assertEqual(client.echo_and_close(b"new"), (b"new", "close_notify"))
                    except OSError as e:
                        raise AssertionError(f"{e}; stdout:\n{server.out.text()}\nstderr:\n{server.err.text()}")
                workers = server.workers()
                self.assertEqual(len(workers), 2)
                self.assertNotIn(victim, workers)
                self.stopped_cleanly(server)
        finally:
            backend.stop()

    def test_a_connection_that_cannot_move_is_ended_with_the_reason_never_proxied(self):
        cases = [(("--no-rx",), False, "RX_is_in_OpenSSL")]
        if not proxy.REKEY:  # 6.1 without --rx: RX stays in OpenSSL, which can follow a KeyUpdate.
            cases.append(((), False, "RX_is_in_OpenSSL_(this_kernel_keeps_TLS_1.3_RX_in_userspace_unless_--rx)"))
        for args, rx, reason in cases:
            with self.subTest(args=args, rx=rx):
                listener = socket.create_server((HOST, 0))
                listener.setblocking(False)
                with listener, PrivsepProxy(listener.getsockname()[1], *args, rx=rx) as server:
                    client = proxy.TlsClient(server.port).handshake()
                    client.send(b"for nobody")
                    data, ending = client.read()
                    client.close()
                    line = server.line_for(client.port)
                    self.assertEqual((data, ending), (b"", "close_notify"))
                    self.assertEqual((line["tx"], line["rx"], line["end"]), ("kernel", "user", "cannot_move"), line)
                    self.assertTrue(line.get("detail", "").startswith(reason), line)
                    with self.assertRaises(BlockingIOError, msg="the backend saw a connection"):
                        listener.accept()
                    self.stopped_cleanly(server)

    def test_sigterm_drains_the_workers(self):
        backend = proxy.Backend(proxy.echo)
        with PrivsepProxy(backend.port) as server:
            workers = server.workers()
            client = proxy.TlsClient(server.port).handshake()
            client.sock.settimeout(STEP_TIMEOUT)
            self.assertEqual(client.echo(b"before"), b"before")
            os.kill(server.proc.pid, signal.SIGTERM)
            # The key holder drains its handshakes, then the workers theirs.
            self.assertTrue(wait_until(lambda: "signal 15: draining 1 connection(s)" in server.err.text(),
                                       STEP_TIMEOUT), server.err.text())
            self.assertEqual(client.echo(b"after"), b"after", "the open connection goes on while draining")
            data, ending = client.echo_and_close(b"last")
            self.assertEqual((data, ending), (b"last", "close_notify"))
            server.proc.wait(timeout=STEP_TIMEOUT)
            self.assertEqual(server.proc.returncode, 0, server.err.text())
            self.assertEqual(server.line_for(client.port)["end"], "client_close_notify")
            backend.finish(self)
            for pid in workers:
                self.assertFalse(os.path.exists(f"/proc/{pid}"), f"worker {pid} still there")

    def test_metrics_count_each_connection_once_and_outlive_a_dead_worker(self):
        key = metrics.key
        kernel = key("ktls_proxy_handshakes_total", tx="kernel", rx="kernel")
        open_now = key("ktls_proxy_connections_open")
        gauges = ("ktls_proxy_connections_open",)

        def from_lines(server, handshakes):
            """The counters the lines logged so far add up to (each line is
            a connection's end, logged where it was counted), with the
            handshakes, and no connection open."""
            want = {kernel: handshakes, open_now: 0}
            for line in server.lines():
                end = key("ktls_proxy_connections_total", end=line["end"])
                want[end] = want.get(end, 0) + 1
                for direction in ("up", "down"):
                    copied = int(line[f"{direction}_copied"])
                    for path, count in (("spliced", int(line[direction]) - copied), ("copied", copied)):
                        name = key("ktls_proxy_bytes_total", direction=direction, path=path)
                        want[name] = want.get(name, 0) + count
            return want

        def echo_and_close(server, payload):
            client = proxy.TlsClient(server.port).handshake()
            client.sock.settimeout(STEP_TIMEOUT)
            self.assertEqual(client.echo_and_close(payload), (payload, "close_notify"))
            line = server.line_for(client.port)
            self.check_line(line, up=len(payload), down=len(payload), end="client_close_notify")

        backend = proxy.SelectorEchoBackend()
        try:
            with PrivsepMetricsProxy(backend.port) as server:
                start = server.samples()
                self.assertTrue(start and all(v == 0 for v in start.values()), start)
                # Known byte counts through the workers (below the echo
                # backend's send buffer), one by one.
                sizes = (1, 1000, 60000)
                for size in sizes:
                    echo_and_close(server, os.urandom(size))
                want = from_lines(server, len(sizes))
                counted = metrics.settled(self, server.samples, want)
                self.assertEqual(want[key("ktls_proxy_connections_total", end="client_close_notify")], 3, want)
                self.assertEqual(sum(v for k, v in want.items() if k[0] == "ktls_proxy_bytes_total"), 2 * sum(sizes))
                self.assertEqual(metrics.moved(start, counted), {k: v for k, v in want.items() if v},
                                 "each connection counted once, and nothing else")

                # Two open at once (round robin: one in each worker).
                clients = [proxy.TlsClient(server.port).handshake() for _ in range(2)]
                for client in clients:
                    client.sock.settimeout(STEP_TIMEOUT)
                    self.assertEqual(client.echo(b"ping"), b"ping")
                holders = {pid: sockets_of(pid) for pid in server.workers()}
                self.assertEqual(sorted(holders.values()), [3, 3], f"each worker one connection: {holders}")
                both_open = metrics.settled(self, server.samples, {open_now: 2, kernel: 5})
                delta = server.stat_delta()
                self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (5, 5), f"offloaded once each: {delta}")
                metrics.not_backwards(self, counted, both_open, gauges)

                # A worker dies holding its connection: the gauge loses it,
                # no counter goes down, and the scrape starts it again.
                victim = server.workers()[0]
                os.kill(victim, signal.SIGKILL)
                self.assertTrue(wait_until(lambda: zombie_or_gone(victim), STEP_TIMEOUT))
                after_kill = metrics.settled(self, server.samples, {open_now: 1, kernel: 5})
                metrics.not_backwards(self, both_open, after_kill, gauges)
                self.assertTrue(wait_until(lambda: len(server.workers()) == 2 and victim not in server.workers(),
                                           STEP_TIMEOUT), server.workers())
                survived = []
                for client in clients:
                    try:
                        survived.append(client.echo_and_close(b"bye") == (b"bye", "close_notify"))
                    except OSError:
                        survived.append(False)
                    client.close()
                self.assertEqual(sorted(survived), [False, True], "exactly the killed worker's connection ended")

                # Both workers, the new one too, count on: two more. (Its
                # start-up probe offloaded too: tls_stat counts from after it,
                # and from when no connection of the proxy is open.)
                self.assertTrue(wait_until(lambda: server.err.text().count(" as uid ") == 3, STEP_TIMEOUT))
                self.assertTrue(wait_until(lambda: all(read_tls_stat()[name] == server.stats_before[name]
                                                       for name in ("TlsCurrTxSw", "TlsCurrRxSw")), STEP_TIMEOUT))
                server.stats_before = read_tls_stat()
                for size in (2000, 3000):
                    echo_and_close(server, os.urandom(size))
                final = metrics.settled(self, server.samples, from_lines(server, 7))
                self.assertEqual(len(server.lines()), 6, "the dead worker's connection has no line")
                metrics.not_backwards(self, after_kill, final, gauges)
                self.check_stats(server, 2, rx_kernel=2)  # Each offloaded once, in the key holder.
                self.stopped_cleanly(server)
        finally:
            backend.stop()

    def test_refuses_without_a_user_with_root_or_without_offload(self):
        base = [proxy.PROXY, "--listen", f"{HOST}:0", "--backend", f"{HOST}:1"]
        for args, want in ((["--privsep"], "--privsep needs --user"),
                           (["--user", USER], "--user needs --privsep"),
                           (["--privsep", "--user", "root"], "must not run as root"),
                           (["--privsep", "--user", USER, "--no-offload"], "not go with --no-offload")):
            done = subprocess.run(base + args, capture_output=True, text=True, timeout=STEP_TIMEOUT)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertIn(want, done.stderr)


def set_up(directory):
    global PAYLOAD
    proxy.PKI = proxy.Pki(directory)
    # The workers, as nobody, read the backend's CA (--backend-tls); the
    # server's key stays root's.
    os.chmod(directory, 0o755)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o600 if name.endswith(".key") else 0o644)
    PAYLOAD = os.urandom(2 * 1024 * 1024 + 5)


def main():
    missing = None
    if metrics.text_string_to_metric_families is None:
        missing = "needs prometheus_client (Debian: python3-prometheus-client; scripts/setup)"
    return proxy.suite_main(sys.modules[__name__], "ktls-proxy-privsep-", set_up, as_root=True, missing=missing)


if __name__ == "__main__":
    sys.exit(main())
