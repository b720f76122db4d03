#!/usr/bin/env python3
"""ktls-serve --privsep, on a kernel with kTLS: a handshake process that
holds the key, and workers running as another user that serve the requests
on connections moved to them (Connection::Export/Import, SCM_RIGHTS).

usage: serve_privsep_interop.py PATH/TO/ktls-serve [TEST_NAME_SUBSTRING...]

Runs as root (the UML guests do): --privsep starts as root and runs its
workers as `nobody`.

- the workers run as nobody in every uid field, are not dumpable (no ptrace
  by other processes of that user), hold no socket but their one to the
  handshake process while idle, and nobody cannot read the key;
- keep-alive downloads through a worker are byte-exact, both directions in
  the kernel, offloaded once (tls_stat), the access log written by the
  worker;
- killing a worker ends only the connections it held: the handshake process
  goes on, the other worker's connection goes on, and new connections are
  served (the dead worker is started again);
- a stopped worker is passed over once its queue of connections is full:
  the handshake process never waits for it, new connections go to the
  other worker, and the queued ones are served when it goes on;
- a connection that cannot move (--no-rx: RX stays in OpenSSL) is never
  served by the key holder: close_notify, and a log line naming why;
- --metrics (the handshake process's listener; the workers count in shared
  memory), read with prometheus_client's parser: each connection counted
  once, the workers' requests and bytes, the open gauge; a killed worker's
  connections leave the gauge, no counter goes backwards, and the worker
  started again counts on;
- --privsep without --user, or with root, is refused.

Exit status as the other interop suites: 0, 1, or 77 (SKIP) without kTLS
(a failure with KTLS_REQUIRE_KERNEL=1).
"""
import os
import pwd
import selectors
import signal
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
import serve_interop as serve  # noqa: E402
import serve_metrics_interop as metrics  # noqa: E402
from ktls_interop import STEP_TIMEOUT, can_open_as, sanitized, sha, sockets_of, uids, wait_until  # noqa: E402

USER = "nobody"
KEY_DIR = ""  # Root-only: the key and certificate.
FILE = b""    # SITE/file.bin


def privsep_args():
    """--privsep --user nobody, with the key only root can read (make_key)."""
    return ["--privsep", "--user", USER, "--cert", os.path.join(KEY_DIR, "cert.pem"),
            "--key", os.path.join(KEY_DIR, "key.pem")]


class PrivsepServe(ktls_interop.PrivsepWorkers, serve.Serve):
    """ktls-serve --privsep --user nobody with a key only root can read."""

    def __init__(self, *args, rx=True):
        super().__init__(*privsep_args(), *args, rx=rx)


class PrivsepMetricsServe(ktls_interop.PrivsepWorkers, metrics.MetricsServe):
    """PrivsepServe with --metrics on a free loopback port (scrape())."""

    def __init__(self, *args):
        super().__init__(*privsep_args(), *args)


def get(sock, path):
    """One keep-alive GET on an open TLS socket; the body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before the response to {path}: {head!r}")
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed inside the body of {path}")
        body += chunk
    return body


class Privsep(unittest.TestCase):
    def test_workers_run_as_the_user_hold_no_listener_and_cannot_read_the_key(self):
        nobody = pwd.getpwnam(USER)
        with PrivsepServe() as server:
            workers = server.workers()
            for pid in workers:
                self.assertEqual(uids(pid), [nobody.pw_uid] * 4, f"worker {pid}")
                # Not dumpable: another process of the same user cannot
                # ptrace it (a sanitizer build keeps it dumpable for its
                # leak checker, and says so in the binary).
                # /proc/PID belongs to root, not to the process's user,
                # exactly when the process is not dumpable.
                if not sanitized(serve.SERVE):
                    self.assertEqual(os.stat(f"/proc/{pid}/environ").st_uid, 0, f"worker {pid} is dumpable")
                # Idle, a worker has one socket: its own to the handshake
                # process; not the listener, not anyone's connection.
                self.assertEqual(sockets_of(pid), 1, f"worker {pid}")
            self.assertIn(f"as uid {nobody.pw_uid}", server.err.text())
        self.assertFalse(can_open_as(os.path.join(KEY_DIR, "key.pem"), nobody.pw_uid, nobody.pw_gid),
                         "nobody could open the key file")

    def test_keep_alive_downloads_through_a_worker_offloaded_once(self):
        with PrivsepServe() as server:
            with serve.tls_connect(server.port) as sock:
                self.assertEqual(sha(get(sock, "/file.bin")), sha(FILE))
                self.assertEqual(sha(get(sock, "/file.bin")), sha(FILE))
            lines = server.access(2)
            self.assertEqual([(line["path"], line["status"], line["tx"], line["rx"]) for line in lines],
                             [("/file.bin", "200", "kernel", "kernel")] * 2)
            delta = server.stat_delta()
            self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (1, 1), delta)

    def test_killing_a_worker_ends_only_its_connections(self):
        with PrivsepServe() as server:
            # Round robin: the two connections go to the two workers.
            first, second = serve.tls_connect(server.port), serve.tls_connect(server.port)
            self.assertEqual(get(first, "/small.txt"), b"small\n")
            self.assertEqual(get(second, "/small.txt"), b"small\n")
            holders = {pid: sockets_of(pid) for pid in server.workers()}
            self.assertEqual(sorted(holders.values()), [2, 2], f"each worker one connection: {holders}")
            victim = server.workers()[0]
            os.kill(victim, signal.SIGKILL)
            alive = []
            for sock in (first, second):
                try:
                    alive.append(get(sock, "/small.txt") == b"small\n")
                except (OSError, AssertionError):
                    alive.append(False)
                sock.close()
            self.assertEqual(sorted(alive), [False, True], "exactly the killed worker's connection ended")
            self.assertIsNone(server.proc.poll(), "the handshake process goes on")
            for _ in range(4):  # Both slots, the dead one started again.
                with serve.tls_connect(server.port) as sock:
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
            workers = server.workers()
            self.assertEqual(len(workers), 2)
            self.assertNotIn(victim, workers)

    def test_metrics_count_each_connection_once_and_outlive_a_dead_worker(self):
        kernel = metrics.key("ktls_connections_total", tx="kernel", rx="kernel")
        ok = metrics.key("ktls_requests_total", code="200")
        sendfile = metrics.key("ktls_response_bytes_total", path="sendfile")
        written = metrics.key("ktls_response_bytes_total", path="write")
        open_now = metrics.key("ktls_open_connections")
        gauges = ("ktls_open_connections", "ktls_kernel_tls_stat")

        def scrape():
            return server.scrape()[0]

        def settled(want):
            return metrics.settled(self, scrape, want)

        def not_backwards(before, after):
            metrics.not_backwards(self, before, after, gauges)

        with PrivsepMetricsServe() as server:
            for pid in server.workers():  # The key holder's listener only.
                self.assertEqual(sockets_of(pid), 1, f"worker {pid}")
            start = scrape()
            self.assertTrue(all(v == 0 for k, v in start.items() if k[0] != "ktls_kernel_tls_stat"), start)
            # Two connections (round robin: one per worker), five requests.
            first, second = serve.tls_connect(server.port), serve.tls_connect(server.port)
            for _ in range(3):
                self.assertEqual(get(first, "/small.txt"), b"small\n")
            for _ in range(2):
                self.assertEqual(sha(get(second, "/file.bin")), sha(FILE))
            counted = settled({kernel: 2, ok: 5, open_now: 2, sendfile: 2 * len(FILE)})
            self.assertGreater(counted[written], 3 * len(b"small\n"), "headers and small bodies written")
            self.assertEqual(sum(v for k, v in counted.items() if k[0] == "ktls_connections_total"), 2,
                             "each connection counted once")
            self.assertEqual(metrics.moved(start, counted).keys(), {kernel, ok, open_now, sendfile, written})

            # A worker dies holding its connection: the gauge loses it, the
            # counters keep everything, and the scrape starts it again.
            victim = server.workers()[0]
            os.kill(victim, signal.SIGKILL)
            after_kill = settled({open_now: 1, kernel: 2, ok: 5, sendfile: 2 * len(FILE)})
            not_backwards(counted, after_kill)
            self.assertEqual(after_kill[written], counted[written])
            self.assertTrue(wait_until(lambda: len(server.workers()) == 2 and victim not in server.workers(),
                                       STEP_TIMEOUT), server.workers())
            for sock in (first, second):
                sock.close()
            settled({open_now: 0})

            # Both workers, the new one too, count on.
            for _ in range(2):
                with serve.tls_connect(server.port) as sock:
                    self.assertEqual(get(sock, "/small.txt"), b"small\n")
            final = settled({kernel: 4, ok: 7, open_now: 0, sendfile: 2 * len(FILE)})
            not_backwards(after_kill, final)
            self.assertIn(f"as uid {pwd.getpwnam(USER).pw_uid}", server.err.text())

    def test_a_stopped_worker_is_passed_over_and_waited_for_by_nobody(self):
        requests = 200  # More than twice what a worker's queue holds.
        with PrivsepServe() as server:
            stopped = server.workers()[0]
            os.kill(stopped, signal.SIGSTOP)
            try:
                socks = []
                for _ in range(requests):
                    # Each handshake needs the handshake process: were it
                    # waiting on the stopped worker, this would time out.
                    sock = serve.tls_connect(server.port)
                    sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    socks.append(sock)
                with serve.tls_connect(server.port) as late:
                    self.assertEqual(get(late, "/small.txt"), b"small\n", "served by the worker that runs")
                answered = self.responses(socks, 1.0)
                queued = requests - len(answered)
                # Round robin alone would have given the stopped worker half.
                self.assertGreater(queued, 0, "the stopped worker was handed none")
                self.assertLess(queued, requests // 2 - 10, "the stopped worker was not passed over")
            finally:
                os.kill(stopped, signal.SIGCONT)
            answered.update(self.responses([s for s in socks if s not in answered], STEP_TIMEOUT))
            self.assertEqual(len(answered), requests, "every queued connection served once its worker went on")
            for sock in socks:
                self.assertTrue(answered[sock].endswith(b"\r\n\r\nsmall\n"), answered[sock])
                sock.close()
            self.assertNotIn("not moved", server.err.text())

    def responses(self, socks, wait):
        """The whole responses (to GET /small.txt) that arrive on socks
        within wait seconds of the last one: {sock: bytes}."""
        got, done = {sock: b"" for sock in socks}, {}
        with selectors.DefaultSelector() as sel:
            for sock in socks:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
            while len(done) < len(socks):
                ready = sel.select(wait)
                if not ready:
                    break
                for key, _ in ready:
                    sock = key.fileobj
                    try:
                        chunk = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    got[sock] += chunk
                    if not chunk or got[sock].endswith(b"small\n"):
                        sel.unregister(sock)
                        done[sock] = got[sock]
        for sock in socks:
            sock.setblocking(True)
            sock.settimeout(STEP_TIMEOUT)
        return done

    def test_a_connection_that_cannot_move_ends_with_close_notify_and_a_reason(self):
        with PrivsepServe("--no-rx", rx=False) as server:
            with serve.tls_connect(server.port) as sock:
                sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
                self.assertEqual(serve.read_until_close(sock), b"", "no response from the key holder")
            self.assertTrue(wait_until(lambda: "cannot move to a worker: RX is in OpenSSL" in server.err.text(),
                                       STEP_TIMEOUT), server.err.text())
            time.sleep(0.2)
            self.assertEqual(server.out.text(), "", "nothing served")

    def test_refuses_without_a_user_or_with_root(self):
        for args, want in ((["--privsep"], "--privsep needs --user"),
                           (["--privsep", "--user", "root"], "must not run as root")):
            done = subprocess.run([serve.SERVE, "--root", serve.SITE, "--listen", "127.0.0.1:0", *args],
                                  capture_output=True, text=True, timeout=STEP_TIMEOUT)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertIn(want, done.stderr)


def set_up(directory):
    global FILE
    os.chmod(directory, 0o755)  # The workers, as nobody, open the site beneath it.
    serve.SITE = os.path.join(directory, "site")
    os.makedirs(serve.SITE, mode=0o755)
    FILE = os.urandom(3 * 1024 * 1024 + 7)
    for name, data in (("small.txt", b"small\n"), ("file.bin", FILE)):
        path = os.path.join(serve.SITE, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
    make_key(directory)


def make_key(directory):
    """A key and certificate in directory/keys, which only root can read
    (KEY_DIR)."""
    global KEY_DIR
    KEY_DIR = os.path.join(directory, "keys")
    os.makedirs(KEY_DIR, mode=0o700)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-keyout", os.path.join(KEY_DIR, "key.pem"),
                    "-out", os.path.join(KEY_DIR, "cert.pem")], check=True, capture_output=True)
    os.chmod(os.path.join(KEY_DIR, "key.pem"), 0o600)


def main():
    # --privsep starts as root (to start the workers as another user).
    return metrics.suite_main(sys.modules[__name__], "ktls-serve-privsep-", set_up, as_root=True)


if __name__ == "__main__":
    sys.exit(main())
