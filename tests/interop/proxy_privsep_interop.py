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
- --privsep without --user, with root, or with --metrics is refused.

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
from ktls_interop import (HOST, STEP_TIMEOUT, can_open_as, ids, sanitized, sha, sockets_of, uids,  # noqa: E402
                          wait_until)

USER = "nobody"
PAYLOAD = b""  # 2 MiB and a bit, random.


class PrivsepProxy(ktls_interop.PrivsepWorkers, proxy.Proxy):
    """ktls-proxy --privsep --user nobody --threads 2 (two workers), with
    --rx where the kernel would keep RX in OpenSSL (rx=False: without)."""

    def __init__(self, backend_port, *args, rx=True):
        rx_args = ("--rx",) if rx and not proxy.REKEY else ()
        super().__init__(backend_port, "--privsep", "--user", USER, *rx_args, *args)


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

    def test_refuses_without_a_user_with_root_or_with_metrics(self):
        base = [proxy.PROXY, "--listen", f"{HOST}:0", "--backend", f"{HOST}:1"]
        for args, want in ((["--privsep"], "--privsep needs --user"),
                           (["--user", USER], "--user needs --privsep"),
                           (["--privsep", "--user", "root"], "must not run as root"),
                           (["--privsep", "--user", USER, "--metrics", f"{HOST}:0"], "not go with --metrics")):
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
    return proxy.suite_main(sys.modules[__name__], "ktls-proxy-privsep-", set_up, as_root=True)


if __name__ == "__main__":
    sys.exit(main())
