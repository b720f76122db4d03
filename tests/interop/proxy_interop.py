#!/usr/bin/env python3
"""Interop tests for ktls-proxy, the TLS-terminating TCP proxy, on a kernel
with kTLS.

usage: proxy_interop.py PATH/TO/ktls-proxy [TEST_NAME_SUBSTRING...]

Clients: Python's ssl module (over memory BIOs, so a test can send
close_notify and go on reading, and tell close_notify from a bare FIN and
from a reset) and `openssl s_client` (quiet, and interactive for KeyUpdates).
Backends: plain TCP servers on Python threads, and a Python ssl server for
--backend-tls. Every payload is checked by SHA-256 at the other end, and
every connection by ktls-proxy's line for it on stdout:

  CLIENT -> BACKEND tx=.. rx=.. [backend_tx=.. backend_rx=..] up=N down=N
  up_spliced=N up_copied=N down_spliced=N down_copied=N duration=MSms
  end=REASON [detail=...]

What is covered: 64 MiB down and 16 MiB up (splice, and --copy); openssl
s_client; TLS 1.2; --backend-tls (and a backend whose certificate does not
verify); half-close both ways; a backend that refuses, one that resets, a
client that resets, handshake garbage and a client's alert; KeyUpdates from
the client (7.2: RX re-keyed in the kernel; 6.1: RX stays in OpenSSL by
default, so update_not_requested goes on, and update_requested ends the
connection with internal_error, as the README says); 500 connections at once
and the proxy's fds back to where they were; the PROXY v2 header; the idle,
handshake and drain timeouts, and a download or upload cut short by them
(both sides reset, no clean end); and under strace, that a 64 MiB download moves
by splice(2) with next to no read/write calls and no bytes copied.

/proc/net/tls_stat proves the kernel did the work: TlsTxSw (and TlsRxSw
where RX went to the kernel) grow by one per offloaded connection,
TlsDecryptError does not move, TlsCurrTxSw/TlsCurrRxSw are back at the end.
ktls-proxy runs without --rx: RX goes to the kernel where it can follow a
KeyUpdate (7.2), and stays in OpenSSL on 6.1.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import hashlib
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_badpeer  # noqa: E402
import ktls_interop  # noqa: E402
from key_update_interop import kernel_can_rekey  # noqa: E402
from ktls_interop import (HOST, STEP_TIMEOUT, PkiBase, Pump, exchange, free_port, read_tls_stat,  # noqa: E402
                          received, sha, stop_process, wait_until)

PROXY = ""     # ktls-proxy (argv[1])
OPENSSL = ""   # the openssl CLI
STDBUF = ""    # coreutils' stdbuf, for s_client's interactive output
STRACE = ""    # strace, for the no-copy proof ("" when missing: that test fails)
PKI = None
REKEY = False  # Linux 6.14+: RX goes to the kernel by default, and KeyUpdates re-key it.

MIB = 1024 * 1024
DOWN_LEN = 64 * MIB
UP_LEN = 16 * MIB
DOWN = b""  # DOWN_LEN random bytes, made once.
UP = b""

# One connection line of ktls-proxy.
LINE = re.compile(r"^(?P<client>\S+) -> (?P<backend>\S+) (?P<rest>.*)$")


class Pki(PkiBase):
    def __init__(self, directory):
        super().__init__(directory)
        self.ca = self.make_ca("ca", "ktls proxy test CA")
        self.other_ca = self.make_ca("other-ca", "ktls proxy test other CA")
        self.server = self.make_leaf("server", self.ca, "localhost", "serverAuth",
                                     "subjectAltName=DNS:localhost,IP:127.0.0.1")
        # The server's certificate, then the CA's many times over: a chain
        # of about 18 KiB (DER) that still verifies (the copies go unused).
        with open(self.server.cert) as f:
            leaf = f.read()
        with open(self.ca.cert) as f:
            ca = f.read()
        self.fat_chain = self.path("fat-chain.pem")
        with open(self.fat_chain, "w") as f:
            f.write(leaf + ca * (24 * 1024 // len(ca) + 1))


# --- ktls-proxy ------------------------------------------------------------------

def parse_line(line):
    match = LINE.match(line)
    if not match:
        return None
    fields = dict(word.partition("=")[::2] for word in match.group("rest").split())
    fields["client"], fields["backend"] = match.group("client"), match.group("backend")
    return fields


class Proxy:
    """ktls-proxy in front of backend_port, for a `with` block. Its stdout
    (the connection lines) and stderr are collected; stop() sends SIGTERM,
    which must end it with status 0. wrap: a command to run it under
    (strace)."""

    def __init__(self, backend_port, *args, wrap=()):
        self.cmd = [*wrap, PROXY, "--listen", f"{HOST}:0", "--backend", f"{HOST}:{backend_port}",
                    "--cert", PKI.server.cert, "--key", PKI.server.key, "--threads", "2", *args]
        self.wrapped = bool(wrap)
        self.returncode = None

    def __enter__(self):
        env = None
        if self.wrapped:
            # LeakSanitizer cannot run under ptrace (an ASan build, in
            # scripts/test-sanitizers): its exit check would fail the run.
            env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.out, self.err = Pump(self.proc.stdout), Pump(self.proc.stderr)
        self.out.start()
        self.err.start()
        wait_until(lambda: "listening on" in self.err.text() or self.proc.poll() is not None, STEP_TIMEOUT * 2)
        match = re.search(r"listening on \S+:(\d+),", self.err.text())
        if not match:
            self.stop()
            raise AssertionError(f"ktls-proxy did not start ({' '.join(self.cmd)}): {self.err.text()}")
        self.port = int(match.group(1))
        self.pid = self.find_pid() if self.wrapped else self.proc.pid
        self.stats_before = read_tls_stat()  # After the start-up probe.
        return self

    def __exit__(self, *exc):
        self.stop()

    def find_pid(self):
        """ktls-proxy's pid under a wrapper: the wrapper's child."""
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid and "ktls-proxy" in stat:
                    return int(entry)
        raise AssertionError("ktls-proxy's pid not found under its wrapper")

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=STEP_TIMEOUT * 3)
            except subprocess.TimeoutExpired:
                self.returncode = None
        stop_process(self.proc, (self.out, self.err))

    def lines(self):
        return [parsed for parsed in map(parse_line, self.out.text().splitlines()) if parsed]

    def line_for(self, client_port, timeout=STEP_TIMEOUT):
        """The line of the connection from client_port (waits for it)."""
        client = f"{HOST}:{client_port}"
        found = []

        def logged():
            found[:] = [line for line in self.lines() if line["client"] == client]
            return bool(found)

        if not wait_until(logged, timeout):
            raise AssertionError(f"no line for {client}; stdout:\n{self.out.text()}\nstderr:\n{self.err.text()}")
        return found[0]

    def stat_delta(self):
        after = read_tls_stat()
        return {name: after[name] - self.stats_before[name] for name in after if name in self.stats_before}

    def num_fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))


# --- Clients -----------------------------------------------------------------------

class TlsClient(ktls_badpeer.TlsClient):
    """A TLS 1.3 client (TLS 1.2 with version=) on Python's ssl module over
    memory BIOs: it can send close_notify and go on reading, and read()
    says how the proxy ended the connection (close_notify, eof, reset,
    alert:NAME, ...)."""

    def __init__(self, port, version=ssl.TLSVersion.TLSv1_3, cafile=None):
        super().__init__(port, cafile or PKI.ca.cert, PKI.dir, version=version)

    def handshake(self):
        try:
            return super().handshake()
        except ssl.SSLError:
            self.flush()  # Our alert, for the proxy to read.
            raise

    def send(self, data):
        view = memoryview(data)
        for start in range(0, len(data), MIB):
            super().send(view[start:start + MIB])

    def reset(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def echo_and_close(self, payload):
        """Sends payload, reads as much back, then close_notify both ways.
        Returns (what came back, how the proxy ended)."""
        self.send(payload)
        data, _ = self.read(len(payload))
        self.close_notify()
        rest, ending = self.read()
        self.close()
        return data + rest, ending


def s_client_cmd(port, *args, quiet=True):
    cmd = [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
           "-CAfile", PKI.ca.cert, "-verify_hostname", "localhost", "-verify_return_error"]
    if quiet:
        cmd += ["-quiet", "-nocommands"]
    return cmd + ["-no_ign_eof", *args]


# --- Backends ----------------------------------------------------------------------

class Backend(threading.Thread):
    """A plain TCP server on a Python thread: serve(conn) runs for each of
    `count` connections (each on a thread of its own). Errors end up in
    self.errors; results in whatever serve() keeps."""

    def __init__(self, serve, count=1):
        super().__init__(daemon=True)
        self.serve_one = serve
        self.count = count
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(STEP_TIMEOUT * 3)
        self.port = self.listener.getsockname()[1]
        self.errors = []
        self.workers = []
        self.start()

    def run(self):
        try:
            for _ in range(self.count):
                conn, _ = self.listener.accept()
                conn.settimeout(STEP_TIMEOUT * 3)
                worker = threading.Thread(target=self.guarded, args=(conn,), daemon=True)
                self.workers.append(worker)
                worker.start()
        except Exception as e:
            self.errors.append(e)
        finally:
            self.listener.close()

    def guarded(self, conn):
        try:
            with conn:
                self.serve_one(conn)
        except Exception as e:
            self.errors.append(e)

    def finish(self, test):
        self.join(timeout=STEP_TIMEOUT * 3)
        for worker in self.workers:
            worker.join(timeout=STEP_TIMEOUT * 3)
        test.assertFalse(self.errors, f"backend: {self.errors}")


def recv_all(conn, hasher=None):
    """Everything until the peer's FIN (bytes, or its length into hasher)."""
    data = bytearray()
    count = 0
    while True:
        chunk = conn.recv(256 * 1024)
        if not chunk:
            return count if hasher else bytes(data)
        count += len(chunk)
        if hasher:
            hasher.update(chunk)
        else:
            data += chunk


def echo(conn):
    """Echoes until the peer's FIN, then sends its own."""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def echo_noting_end(ends):
    """echo for a Backend, noting how each connection ended in the list
    ends: "fin" (the proxy's FIN), or "reset"."""

    def serve(conn):
        try:
            echo(conn)
            ends.append("fin")
        except ConnectionResetError:
            ends.append("reset")

    return serve


class SelectorEchoBackend(threading.Thread):
    """Echoes on any number of connections at once, on one thread
    (selectors), until stop()."""

    def __init__(self):
        super().__init__(daemon=True)
        self.listener = socket.create_server((HOST, 0), backlog=1024)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.stopping = False
        self.accepted = 0
        self.start()

    def run(self):
        while not self.stopping:
            for key, _ in self.selector.select(timeout=0.1):
                if key.fileobj is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(True)
                    conn.settimeout(STEP_TIMEOUT)
                    self.accepted += 1
                    self.selector.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if data:
                    conn.sendall(data)  # Small: fits in the send buffer.
                else:
                    self.selector.unregister(conn)
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    conn.close()
        self.listener.close()

    def stop(self):
        self.stopping = True
        self.join(timeout=STEP_TIMEOUT)


class TlsBackend(threading.Thread):
    """A TLS server (Python ssl) for one connection: echoes until the
    client's close_notify, then answers with its own."""

    def __init__(self, chain=None):
        super().__init__(daemon=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(chain or PKI.server.cert, PKI.server.key)
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(STEP_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.hash = hashlib.sha256()
        self.peer_end = None
        self.error = None
        self.start()

    def run(self):
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(STEP_TIMEOUT)
            with self.ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
                while True:
                    try:
                        data = tls.recv(65536)
                    except ssl.SSLEOFError:
                        self.peer_end = "eof"
                        return
                    if not data:
                        self.peer_end = "close_notify"
                        tls.unwrap()
                        return
                    self.received += len(data)
                    self.hash.update(data)
                    tls.sendall(data)
        except Exception as e:
            self.error = e
        finally:
            self.listener.close()


# --- The tests -----------------------------------------------------------------------

class ProxyTest(unittest.TestCase):
    def expected_rx(self):
        return "kernel" if REKEY else "user"

    def check_line(self, line, **expected):
        expected = {"tx": "kernel", "rx": self.expected_rx(), **{k: str(v) for k, v in expected.items()}}
        got = {key: line.get(key) for key in expected}
        self.assertEqual(got, expected, f"line: {line}")

    def check_stats(self, proxy, connections, rx_kernel=None):
        """tls_stat since the proxy started: every connection's TX (and RX
        where it went to the kernel) counted, no decrypt error, and, once
        the proxy has closed them, no kTLS socket left open."""
        rx_kernel = connections if (rx_kernel is None and REKEY) else (rx_kernel or 0)
        delta = proxy.stat_delta()
        self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (connections, rx_kernel), delta)
        self.assertEqual(delta["TlsDecryptError"], 0, delta)
        self.assertTrue(wait_until(lambda: all(read_tls_stat()[name] == proxy.stats_before[name]
                                               for name in ("TlsCurrTxSw", "TlsCurrRxSw")), STEP_TIMEOUT),
                        f"kTLS sockets left open: {proxy.stat_delta()}")

    def stopped_cleanly(self, proxy):
        proxy.stop()
        self.assertEqual(proxy.returncode, 0, proxy.err.text())


class TransferTest(ProxyTest):
    """Big payloads both ways, by splice and with --copy."""

    def big_transfer(self, *proxy_args, wrap=()):
        """16 MiB up, then the client's close_notify; 64 MiB down, then the
        backend's FIN. Returns (proxy, line)."""
        got_up = hashlib.sha256()

        def serve(conn):
            sender = threading.Thread(target=conn.sendall, args=(DOWN,), daemon=True)
            sender.start()
            recv_all(conn, got_up)
            sender.join(timeout=STEP_TIMEOUT * 6)
            conn.shutdown(socket.SHUT_WR)

        backend = Backend(serve)
        with Proxy(backend.port, *proxy_args, wrap=wrap) as proxy:
            client = TlsClient(proxy.port).handshake()
            client.sock.settimeout(STEP_TIMEOUT * 3)
            client.send(UP)
            client.close_notify()
            data, ending = client.read()
            client.close()
            line = proxy.line_for(client.port)
            backend.finish(self)
            self.assertEqual((len(data), ending), (DOWN_LEN, "close_notify"))
            self.assertEqual(sha(data), sha(DOWN), "the download arrived changed")
            self.assertEqual(got_up.hexdigest(), sha(UP), "the upload arrived changed")
            self.check_line(line, up=UP_LEN, down=DOWN_LEN)
            self.assertIn(line["end"], ("client_close_notify", "backend_eof"), line)
            self.check_stats(proxy, 1)
            self.stopped_cleanly(proxy)
            return proxy, line

    def test_64mib_down_16mib_up_by_splice(self):
        _, line = self.big_transfer()
        # Down: the backend's socket to the pipe to the client's kTLS socket,
        # never through the proxy.
        self.assertEqual((int(line["down_spliced"]), int(line["down_copied"])), (DOWN_LEN, 0), line)
        if REKEY:
            self.assertEqual((int(line["up_spliced"]), int(line["up_copied"])), (UP_LEN, 0), line)
        else:
            # 6.1: RX stays in OpenSSL (no rekey), so the upload is copied.
            self.assertEqual(int(line["up_copied"]), UP_LEN, line)

    def test_64mib_down_16mib_up_with_copy(self):
        _, line = self.big_transfer("--copy")
        self.assertEqual((int(line["up_copied"]), int(line["down_copied"])), (UP_LEN, DOWN_LEN), line)
        self.assertEqual((line["up_spliced"], line["down_spliced"]), ("0", "0"), line)

    def test_download_under_strace_moves_by_splice(self):
        """The 64 MiB download under strace -f -c: splice calls, and next to
        no read/write calls (a copying proxy makes at least one read and
        one write per 64 KiB: over 2,000)."""
        self.assertTrue(STRACE, "strace is not installed (scripts/setup installs it)")
        summary = os.path.join(PKI.dir, f"strace-{time.monotonic_ns()}.txt")

        def serve(conn):
            conn.sendall(DOWN)
            conn.shutdown(socket.SHUT_WR)
            recv_all(conn)

        backend = Backend(serve)
        wrap = (STRACE, "-f", "-c", "-o", summary, "-e", "trace=read,write,recvfrom,sendto,recvmsg,sendmsg,splice")
        with Proxy(backend.port, wrap=wrap) as proxy:
            client = TlsClient(proxy.port).handshake()
            client.sock.settimeout(STEP_TIMEOUT * 6)
            data, ending = client.read()
            self.assertEqual((len(data), ending), (DOWN_LEN, "close_notify"))
            client.close_notify()
            client.close()
            line = proxy.line_for(client.port)
            backend.finish(self)
            self.stopped_cleanly(proxy)  # strace writes its summary as ktls-proxy exits.
        self.assertEqual(sha(data), sha(DOWN))
        self.assertEqual((int(line["down_spliced"]), int(line["down_copied"])), (DOWN_LEN, 0), line)
        calls = {}
        with open(summary) as f:
            for row in f:
                fields = row.split()
                if len(fields) >= 5 and fields[-1] in ("read", "write", "recvfrom", "sendto", "recvmsg", "sendmsg",
                                                       "splice"):
                    calls[fields[-1]] = int(fields[3])
        copying = sum(count for name, count in calls.items() if name != "splice")
        print(f"\n  strace -c of ktls-proxy for a {DOWN_LEN} byte download: {calls}; line: {line}", flush=True)
        self.assertGreater(calls.get("splice", 0), DOWN_LEN // (256 * 1024), f"splice calls: {calls}")
        self.assertLess(copying, 200, f"read/write calls: {calls}")

    def test_tx_in_openssl_sends_the_tail_without_more_to_come(self):
        """--no-offload: SpliceWrite copies through OpenSSL, and takes bytes
        from the pipe that a full socket cannot take yet (held, and reported
        as written). The last of a response must still go out while the
        backend waits for the client, with no more bytes and no FIN behind
        it to push them: the proxy flushes what the connection holds. (The
        timing that leaves bytes held at the very end is likely here, with
        the client reading late, but not forced.)"""
        response = os.urandom(8 * MIB + 17)

        def serve(conn):
            conn.sendall(response)
            if conn.recv(10) != b"ack":  # Only once the client has all of it.
                raise AssertionError("no ack")
            conn.shutdown(socket.SHUT_WR)
            recv_all(conn)

        backend = Backend(serve)
        with Proxy(backend.port, "--no-offload") as proxy:
            client = TlsClient(proxy.port).handshake()
            time.sleep(1)  # The response fills the socket buffers meanwhile.
            data, ending = client.read(len(response))
            self.assertEqual((len(data), ending), (len(response), None), "the response's tail never came")
            self.assertEqual(sha(data), sha(response))
            client.send(b"ack")
            # The backend's FIN (as close_notify) first, then ours: the line
            # names the side that closed first.
            self.assertEqual(client.read(), (b"", "close_notify"))
            client.close_notify()
            client.close()
            line = proxy.line_for(client.port)
            backend.finish(self)
            self.check_line(line, tx="user", rx="user", down=len(response), down_copied=len(response),
                            end="backend_eof")

    def test_tls12_small_exchange(self):
        backend = Backend(echo)
        payload = os.urandom(300 * 1024)
        with Proxy(backend.port) as proxy:
            client = TlsClient(proxy.port, version=ssl.TLSVersion.TLSv1_2).handshake()
            self.assertEqual(client.tls.version(), "TLSv1.2")
            data, ending = client.echo_and_close(payload)
            self.assertEqual((sha(data), ending), (sha(payload), "close_notify"))
            line = proxy.line_for(client.port)
            backend.finish(self)
            # TLS 1.2 has no KeyUpdate: RX goes to the kernel on 6.1 too.
            self.check_line(line, rx="kernel", up=len(payload), down=len(payload), end="client_close_notify")
            self.check_stats(proxy, 1, rx_kernel=1)

    def test_openssl_s_client(self):
        backend = Backend(echo)
        payload = os.urandom(100 * 1024)
        with Proxy(backend.port) as proxy:
            result = exchange(s_client_cmd(proxy.port), payload, received(len(payload)))
            self.assertEqual(sha(result.stdout), sha(payload), result.stderr)
            lines = proxy.lines() if wait_until(lambda: proxy.lines(), STEP_TIMEOUT) else []
            backend.finish(self)
            self.assertEqual(len(lines), 1, proxy.out.text())
            self.check_line(lines[0], up=len(payload), down=len(payload), end="client_close_notify")
            self.check_stats(proxy, 1)


class BackendTlsTest(ProxyTest):
    def test_backend_tls_both_legs_in_the_kernel(self):
        backend = TlsBackend()
        payload = os.urandom(2 * MIB + 5)
        with Proxy(backend.port, "--backend-tls", "--backend-ca", PKI.ca.cert, "--backend-sni", "localhost") as proxy:
            client = TlsClient(proxy.port).handshake()
            data, ending = client.echo_and_close(payload)
            line = proxy.line_for(client.port)
            backend.join(timeout=STEP_TIMEOUT)
            self.assertIsNone(backend.error)
            self.assertEqual(sha(data), sha(payload), "the echo through both legs arrived changed")
            self.assertEqual(ending, "close_notify")
            self.assertEqual((backend.received, backend.hash.hexdigest()), (len(payload), sha(payload)))
            self.assertEqual(backend.peer_end, "close_notify", "the client's close_notify reaches the backend as one")
            self.check_line(line, backend_tx="kernel", backend_rx=self.expected_rx(), up=len(payload),
                            down=len(payload), end="client_close_notify")
            self.check_stats(proxy, 2)

    def test_backend_certificate_that_does_not_verify(self):
        backend = TlsBackend()
        with Proxy(backend.port, "--backend-tls", "--backend-ca", PKI.other_ca.cert) as proxy:
            client = TlsClient(proxy.port).handshake()
            data, ending = client.read()
            client.close()
            line = proxy.line_for(client.port)
            backend.join(timeout=STEP_TIMEOUT)
            self.assertEqual((data, ending), (b"", "close_notify"))
            self.assertEqual(line["end"], "backend_handshake_failed", line)


class HalfCloseTest(ProxyTest):
    def test_client_close_notify_then_backend_reply(self):
        """The client's close_notify becomes the backend's FIN; the backend
        answers after it, and the client still gets the answer, then
        close_notify."""
        payload = os.urandom(200 * 1024)

        def serve(conn):
            got = recv_all(conn)
            conn.sendall(hashlib.sha256(got).digest())
            conn.shutdown(socket.SHUT_WR)

        backend = Backend(serve)
        with Proxy(backend.port) as proxy:
            client = TlsClient(proxy.port).handshake()
            client.send(payload)
            client.close_notify()
            reply, ending = client.read()
            client.close()
            line = proxy.line_for(client.port)
            backend.finish(self)
            self.assertEqual((reply, ending), (hashlib.sha256(payload).digest(), "close_notify"))
            self.check_line(line, up=len(payload), down=32, end="client_close_notify")

    def test_backend_fin_first_then_client_data(self):
        """The backend's FIN becomes close_notify to the client (not a bare
        FIN: read() tells them apart); the client then still sends, and the
        backend gets it all."""
        down = os.urandom(150 * 1024)
        up = os.urandom(70 * 1024)
        got_up = []

        def serve(conn):
            conn.sendall(down)
            conn.shutdown(socket.SHUT_WR)
            got_up.append(recv_all(conn))

        backend = Backend(serve)
        with Proxy(backend.port) as proxy:
            client = TlsClient(proxy.port).handshake()
            data, ending = client.read()
            self.assertEqual((sha(data), ending), (sha(down), "close_notify"))
            client.send(up)
            client.close_notify()
            backend.finish(self)
            client.close()
            line = proxy.line_for(client.port)
            self.assertEqual(sha(got_up[0]), sha(up))
            self.check_line(line, up=len(up), down=len(down), end="backend_eof")


class FailureTest(ProxyTest):
    def test_backend_refuses(self):
        with Proxy(free_port()) as proxy:
            client = TlsClient(proxy.port).handshake()
            data, ending = client.read()
            client.close()
            self.assertEqual((data, ending), (b"", "close_notify"))
            line = proxy.line_for(client.port)
            self.check_line(line, up=0, down=0, end="backend_refused")
            self.check_stats(proxy, 1)

    def test_backend_reset_mid_stream_resets_the_client(self):
        sent = os.urandom(MIB)

        def serve(conn):
            conn.sendall(sent)
            conn.recv(100)  # The client's go-ahead: it has read everything.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        backend = Backend(serve)
        with Proxy(backend.port) as proxy:
            client = TlsClient(proxy.port).handshake()
            data, _ = client.read(len(sent))
            self.assertEqual(sha(data), sha(sent))
            client.send(b"go")
            rest, ending = client.read()
            client.close()
            backend.finish(self)
            self.assertIn(ending, ("reset", "eof"), "a reset must not look like a clean end")
            line = proxy.line_for(client.port)
            self.assertEqual(line["end"], "backend_reset", line)

    def test_client_reset_resets_the_backend(self):
        seen = []

        def serve(conn):
            try:
                seen.append(recv_all(conn))
            except ConnectionResetError:
                seen.append("reset")

        backend = Backend(serve)
        with Proxy(backend.port) as proxy:
            client = TlsClient(proxy.port).handshake()
            client.send(b"x" * 1000)
            wait_until(lambda: len(backend.workers) == 1, STEP_TIMEOUT)
            time.sleep(0.2)
            client.reset()
            line = proxy.line_for(client.port)
            backend.finish(self)
            self.assertEqual(seen, ["reset"], "the backend must see a reset, not a FIN")
            self.assertEqual(line["end"], "client_reset", line)

    def test_handshake_garbage_and_a_clients_alert_end_only_that_connection(self):
        backend = Backend(echo, count=1)
        with Proxy(backend.port) as proxy:
            with socket.create_connection((HOST, proxy.port), timeout=STEP_TIMEOUT) as raw:
                garbage_port = raw.getsockname()[1]
                raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
                try:
                    while raw.recv(65536):
                        pass
                except ConnectionResetError:
                    pass
            line = proxy.line_for(garbage_port)
            self.assertEqual(line["end"], "handshake_failed", line)
            self.assertIn("detail", line)
            # A client that does not trust the proxy's certificate: its alert.
            distrustful = TlsClient(proxy.port, cafile=PKI.other_ca.cert)
            with self.assertRaises(ssl.SSLCertVerificationError):
                distrustful.handshake()
            distrustful.close()
            line = proxy.line_for(distrustful.port)
            self.assertEqual(line["end"], "alert:unknown_ca", line)
            # Everyone else is served on.
            client = TlsClient(proxy.port).handshake()
            self.assertEqual(client.echo_and_close(b"still here"), (b"still here", "close_notify"))
            self.check_line(proxy.line_for(client.port), end="client_close_notify")
            backend.finish(self)
            self.stopped_cleanly(proxy)


class KeyUpdateTest(ProxyTest):
    """KeyUpdates from openssl s_client (interactive: a line `k` or `K`)."""

    def s_client_steps(self, proxy_port, steps):
        """Runs steps ("data", "k", "K") through an interactive s_client;
        each data line must come back before the next step. Returns the
        lines echoed and the s_client process's output."""
        proc = subprocess.Popen([STDBUF, "-oL", *s_client_cmd(proxy_port, quiet=False)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = Pump(proc.stdout), Pump(proc.stderr)
        out.start()
        err.start()
        echoed = []
        try:
            self.assertTrue(wait_until(lambda: b"Verify return code: 0" in out.bytes() or proc.poll() is not None,
                                       STEP_TIMEOUT), err.text())
            for index, step in enumerate(steps):
                if step == "data":
                    line = f"line-{index:03d}-{os.urandom(8).hex()}\n".encode()
                    proc.stdin.write(line)
                    proc.stdin.flush()
                    if not wait_until(lambda: line in out.bytes() or proc.poll() is not None, STEP_TIMEOUT) \
                            or line not in out.bytes():
                        break
                    echoed.append(line)
                else:
                    updates = err.text().count("KEYUPDATE")
                    proc.stdin.write(step.encode() + b"\n")
                    proc.stdin.flush()
                    wait_until(lambda: err.text().count("KEYUPDATE") > updates, STEP_TIMEOUT)
            proc.stdin.close()
            proc.wait(timeout=STEP_TIMEOUT)
        except (BrokenPipeError, OSError):
            pass
        finally:
            stop_process(proc, (out, err))
        return echoed, out.bytes() + err.bytes()

    def test_key_updates_from_the_client_not_requested(self):
        """update_not_requested: the proxy's RX follows (7.2: re-keyed in
        the kernel; 6.1: RX is in OpenSSL); the data goes on, intact."""
        backend = Backend(echo)
        steps = ("data", "k", "data", "k", "data")
        with Proxy(backend.port) as proxy:
            echoed, output = self.s_client_steps(proxy.port, steps)
            self.assertEqual(len(echoed), steps.count("data"), f"s_client output:\n{output.decode(errors='replace')}")
            line = proxy.lines()[0] if wait_until(lambda: proxy.lines(), STEP_TIMEOUT) else None
            backend.finish(self)
            self.assertIsNotNone(line, proxy.out.text())
            self.check_line(line, up=sum(map(len, echoed)), down=sum(map(len, echoed)), end="client_close_notify")

    def test_key_update_requested(self):
        """update_requested: 7.2 answers it (TX re-keyed in the kernel) and
        goes on. 6.1 cannot give TX a new key: the README's documented
        outcome there is an internal_error alert, and the connection ends."""
        backend_ends = []
        backend = Backend(echo_noting_end(backend_ends))
        steps = ("data", "K", "data", "K", "data")
        with Proxy(backend.port) as proxy:
            echoed, output = self.s_client_steps(proxy.port, steps)
            line = proxy.lines()[0] if wait_until(lambda: proxy.lines(), STEP_TIMEOUT) else None
            backend.finish(self)
            self.assertIsNotNone(line, proxy.out.text())
            text = output.decode(errors="replace")
            if REKEY:
                self.assertEqual(len(echoed), 3, f"s_client output:\n{text}")
                self.check_line(line, up=sum(map(len, echoed)), down=sum(map(len, echoed)),
                                end="client_close_notify")
            else:
                self.assertEqual(len(echoed), 1, f"s_client output:\n{text}")
                self.assertEqual(line["end"], "client_error:unsupported", line)
                self.assertEqual(backend_ends, ["reset"], "an aborted client connection resets the backend's")
                self.assertIn("internal error", text.lower().replace("_", " "), text)


class LoadTest(ProxyTest):
    NUM = 500

    def test_500_concurrent_connections_and_fds_back_to_baseline(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
        backend = SelectorEchoBackend()
        try:
            with Proxy(backend.port, "--max-connections", "2000") as proxy:
                baseline = proxy.num_fds()
                clients = []
                for _ in range(self.NUM):
                    clients.append(TlsClient(proxy.port).handshake())
                payloads = [os.urandom(64) + i.to_bytes(4, "big") for i in range(self.NUM)]
                for client, payload in zip(clients, payloads):
                    client.send(payload)
                # All 500 are open at once, through the proxy to the backend.
                self.assertTrue(wait_until(lambda: backend.accepted == self.NUM, STEP_TIMEOUT * 2),
                                f"backend accepted {backend.accepted}")
                self.assertGreater(proxy.num_fds(), baseline + 2 * self.NUM)
                for client, payload in zip(clients, payloads):
                    data, _ = client.read(len(payload))
                    self.assertEqual(data, payload)
                for client in clients:
                    client.close_notify()
                endings = [client.read()[1] for client in clients]
                for client in clients:
                    client.close()
                self.assertEqual(endings, ["close_notify"] * self.NUM)
                self.assertTrue(wait_until(lambda: len(proxy.lines()) == self.NUM, STEP_TIMEOUT * 2),
                                f"{len(proxy.lines())} lines")
                self.assertTrue(all(line["end"] == "client_close_notify" and line["tx"] == "kernel"
                                    for line in proxy.lines()), proxy.out.text()[-2000:])
                self.assertTrue(wait_until(lambda: proxy.num_fds() == baseline, STEP_TIMEOUT),
                                f"fds: {proxy.num_fds()}, baseline {baseline}")
                self.check_stats(proxy, self.NUM)
                self.stopped_cleanly(proxy)
        finally:
            backend.stop()


class FeatureTest(ProxyTest):
    def test_max_connections_leaves_the_next_client_waiting(self):
        backend = Backend(echo, count=2)
        with Proxy(backend.port, "--max-connections", "1") as proxy:
            first = TlsClient(proxy.port).handshake()
            second = TlsClient(proxy.port)  # In the listen queue: nobody answers its ClientHello.
            second.sock.settimeout(1.5)
            with self.assertRaises(socket.timeout):
                second.handshake()
            first.close_notify()
            self.assertEqual(first.read(), (b"", "close_notify"))
            first.close()
            second.sock.settimeout(STEP_TIMEOUT)
            second.handshake()  # Served once the first is over.
            self.assertEqual(second.echo_and_close(b"next"), (b"next", "close_notify"))
            self.assertEqual(proxy.line_for(second.port)["end"], "client_close_notify")
            backend.finish(self)

    def test_proxy_protocol_v2_header_first(self):
        headers = []

        def serve(conn):
            header = b""
            while len(header) < 28:
                header += conn.recv(28 - len(header))
            headers.append(header)
            echo(conn)

        backend = Backend(serve)
        with Proxy(backend.port, "--proxy-protocol") as proxy:
            client = TlsClient(proxy.port).handshake()
            self.assertEqual(client.echo_and_close(b"hello"), (b"hello", "close_notify"))
            backend.finish(self)
            expected = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11, 0, 12]) + socket.inet_aton(HOST) +
                        socket.inet_aton(HOST) + struct.pack(">HH", client.port, proxy.port))
            self.assertEqual(headers, [expected])
            self.check_line(proxy.line_for(client.port), up=5, down=5)

    def test_metrics(self):
        """--metrics: Prometheus text at /metrics, counting what the log
        lines say."""
        backend = Backend(echo)
        payload = os.urandom(100 * 1024)
        with Proxy(backend.port, "--metrics", f"{HOST}:0") as proxy:
            match = re.search(r"metrics on http://[^:]+:(\d+)/metrics", proxy.err.text())
            self.assertTrue(match, proxy.err.text())
            client = TlsClient(proxy.port).handshake()
            self.assertEqual(client.echo_and_close(payload), (payload, "close_notify"))
            line = proxy.line_for(client.port)
            backend.finish(self)
            with socket.create_connection((HOST, int(match.group(1))), timeout=STEP_TIMEOUT) as conn:
                conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                response = recv_all(conn).decode()
            self.assertTrue(response.startswith("HTTP/1.1 200 OK\r\n"), response)
            samples = dict(re.findall(r"^(ktls_proxy_\S+) (\d+)$", response, re.M))
            rx = self.expected_rx()
            self.assertEqual(samples.get('ktls_proxy_connections_total{end="client_close_notify"}'), "1", response)
            self.assertEqual(samples.get(f'ktls_proxy_handshakes_total{{tx="kernel",rx="{rx}"}}'), "1", response)
            self.assertEqual(samples.get("ktls_proxy_connections_open"), "0", response)
            up = sum(int(samples[f'ktls_proxy_bytes_total{{direction="up",path="{path}"}}'])
                     for path in ("spliced", "copied"))
            self.assertEqual(up, len(payload))
            self.assertEqual(samples.get('ktls_proxy_bytes_total{direction="down",path="copied"}'),
                             line["down_copied"], response)

    def test_idle_timeout(self):
        backend = Backend(echo)
        with Proxy(backend.port, "--idle-timeout", "1000") as proxy:
            client = TlsClient(proxy.port).handshake()
            started = time.monotonic()
            data, ending = client.read()
            elapsed = time.monotonic() - started
            client.close()
            backend.finish(self)
            self.assertEqual((data, ending), (b"", "close_notify"))
            self.assertGreater(elapsed, 0.9)
            self.assertLess(elapsed, 5)
            self.assertEqual(proxy.line_for(client.port)["end"], "idle_timeout")

    def test_handshake_timeout(self):
        with Proxy(free_port(), "--handshake-timeout", "1000") as proxy:
            with socket.create_connection((HOST, proxy.port), timeout=STEP_TIMEOUT) as raw:
                port = raw.getsockname()[1]
                started = time.monotonic()
                try:
                    while raw.recv(100):
                        pass
                except ConnectionResetError:
                    pass
                self.assertLess(time.monotonic() - started, 5)
            self.assertEqual(proxy.line_for(port)["end"], "handshake_timeout")

    def test_drain_on_sigterm(self):
        """SIGTERM: no new clients; the open connection goes on until it
        ends; then exit 0. A second open one is closed at the drain
        timeout: cut, both sides reset."""
        ends = []
        backend = Backend(echo_noting_end(ends), count=2)
        with Proxy(backend.port, "--drain-timeout", "3000") as proxy:
            busy = TlsClient(proxy.port).handshake()
            idle = TlsClient(proxy.port).handshake()
            busy.send(b"before")
            self.assertEqual(busy.read(6)[0], b"before")
            os.kill(proxy.pid, signal.SIGTERM)
            self.assertTrue(wait_until(lambda: "draining" in proxy.err.text(), STEP_TIMEOUT))
            time.sleep(0.2)
            with self.assertRaises(OSError):
                TlsClient(proxy.port).handshake()
            busy.send(b"during")
            self.assertEqual(busy.read(6)[0], b"during")
            busy.close_notify()
            self.assertEqual(busy.read(), (b"", "close_notify"))
            busy.close()
            self.assertEqual(proxy.line_for(busy.port)["end"], "client_close_notify")
            self.assertEqual(idle.read()[1], "reset", "drain timeout: the rest are cut, not ended cleanly")
            idle.close()
            self.assertEqual(proxy.line_for(idle.port)["end"], "drain_timeout_cut")
            self.assertEqual(proxy.proc.wait(timeout=STEP_TIMEOUT), 0)
            backend.finish(self)
            self.assertEqual(sorted(ends), ["fin", "reset"], "the busy one ends with a FIN, the idle one reset")


class CutTest(ProxyTest):
    """A stream the proxy ends before its source did (the drain timeout; the
    idle timeout with bytes a sink has not taken) is cut: both sides reset,
    never close_notify to the client or a FIN to the backend, which would
    make a part look like the whole. up=/down= count what reached the sink."""

    def stream_until_cut(self):
        """A backend that sends until the proxy cuts it: a Backend, and the
        list where its end goes ("reset")."""
        ends = []

        def serve(conn):
            chunk = os.urandom(65536)
            try:
                while True:
                    conn.sendall(chunk)
            except (ConnectionResetError, BrokenPipeError):
                ends.append("reset")

        return Backend(serve), ends

    def test_drain_timeout_mid_download(self):
        backend, backend_ends = self.stream_until_cut()
        with Proxy(backend.port, "--drain-timeout", "1500") as proxy:
            client = TlsClient(proxy.port).handshake()
            got, ending = client.read(65536)
            self.assertEqual((len(got), ending), (65536, None))
            os.kill(proxy.pid, signal.SIGTERM)
            # A slow reader, so that close_notify would find room.
            deadline = time.monotonic() + STEP_TIMEOUT * 3
            while ending is None and not proxy.lines() and time.monotonic() < deadline:
                piece, ending = client.read(16384)
                got += piece
                time.sleep(0.05)
            if ending is None:
                rest, ending = client.read()
                got += rest
            client.close()
            line = proxy.line_for(client.port)
            self.assertEqual(proxy.proc.wait(timeout=STEP_TIMEOUT), 0)
            backend.finish(self)
            self.assertEqual(ending, "reset", "a download cut short must not end with close_notify")
            self.assertEqual(backend_ends, ["reset"])
            self.check_line(line, end="drain_timeout_cut")
            self.assertLessEqual(len(got), int(line["down"]), line)

    def test_drain_timeout_mid_upload(self):
        seen = []

        def serve(conn):
            count = 0
            try:
                while chunk := conn.recv(65536):
                    count += len(chunk)
                seen.append(("eof", count))
            except ConnectionResetError:
                seen.append(("reset", count))

        backend = Backend(serve)
        with Proxy(backend.port, "--drain-timeout", "1500") as proxy:
            client = TlsClient(proxy.port).handshake()
            client.send(b"u" * 1000)
            sent = 1000
            self.assertTrue(wait_until(lambda: len(backend.workers) == 1, STEP_TIMEOUT))
            os.kill(proxy.pid, signal.SIGTERM)
            # An upload still going on, 1000 bytes every 50 ms, until the
            # proxy ends it.
            ending = None
            deadline = time.monotonic() + STEP_TIMEOUT * 3
            while not proxy.lines() and time.monotonic() < deadline:
                try:
                    client.send(b"u" * 1000)
                except (ConnectionResetError, BrokenPipeError):
                    ending = "reset"
                    break
                sent += 1000
                time.sleep(0.05)
            if ending is None:
                _, ending = client.read()
            client.close()
            line = proxy.line_for(client.port)
            backend.finish(self)
            self.assertEqual(ending, "reset", "the client must not see a clean end")
            self.assertEqual([end for end, _ in seen], ["reset"], "the backend must see a reset, not a FIN")
            self.check_line(line, end="drain_timeout_cut")
            self.assertLessEqual(seen[0][1], int(line["up"]), line)
            self.assertLessEqual(int(line["up"]), sent, line)

    def test_idle_timeout_with_bytes_in_flight(self):
        """A client that stops reading mid-download: at the idle timeout the
        proxy holds bytes it could not give it, so the download is cut (an
        idle connection with nothing in flight gets close_notify:
        test_idle_timeout)."""
        backend, backend_ends = self.stream_until_cut()
        with Proxy(backend.port, "--idle-timeout", "1000") as proxy:
            client = TlsClient(proxy.port).handshake()
            got, ending = client.read(65536)
            self.assertEqual((len(got), ending), (65536, None))
            line = proxy.line_for(client.port, timeout=STEP_TIMEOUT * 3)
            rest, ending = client.read()
            client.close()
            backend.finish(self)
            self.assertEqual(ending, "reset", "a download cut short must not look complete")
            self.assertEqual(backend_ends, ["reset"])
            self.check_line(line, end="idle_timeout_cut")
            self.assertLessEqual(len(got) + len(rest), int(line["down"]), line)


# --- Main ----------------------------------------------------------------------------

def set_up(directory):
    global PKI, DOWN, UP
    PKI = Pki(directory)
    DOWN = os.urandom(DOWN_LEN)
    UP = os.urandom(UP_LEN)


def suite_main(module, prefix, set_up, as_root=False, missing=None):
    """The main of a ktls-proxy suite beside this one (--privsep, the
    upgrade): `SCRIPT PATH/TO/ktls-proxy [TEST_NAME_SUBSTRING...]`. Checks
    the kernel, the openssl CLI (for the PKI) and root (as_root: --privsep
    starts as root), fails saying `missing` when the suite lacks something
    else, sets PROXY and REKEY, then runs module's tests; the exit status."""
    global PROXY, REKEY
    script = os.path.basename(module.__file__)
    if len(sys.argv) < 2:
        print(f"usage: {script} PATH/TO/ktls-proxy [TEST_NAME_SUBSTRING...]", file=sys.stderr)
        return 2
    PROXY = os.path.abspath(sys.argv[1])
    status = ktls_interop.check_kernel_tls()
    if status is not None:
        return status
    if as_root and os.geteuid() != 0:
        return ktls_interop.fail(f"{script}: --privsep starts as root: run this suite as root (the UML guests do)")
    if missing:
        return ktls_interop.fail(missing)
    if not ktls_interop.find_openssl() or not os.access(PROXY, os.X_OK):
        return ktls_interop.fail(f"need the openssl CLI in PATH and ktls-proxy at {PROXY}")
    REKEY = kernel_can_rekey(platform.release())
    print(f"kernel {platform.release()} (rekey: {'yes' if REKEY else 'no'}); Python ssl: {ssl.OPENSSL_VERSION}",
          flush=True)
    return ktls_interop.run_tests(module, sys.argv[2:], prefix, set_up)


def main():
    global PROXY, OPENSSL, STDBUF, STRACE, REKEY
    if len(sys.argv) < 2:
        print("usage: proxy_interop.py PATH/TO/ktls-proxy [TEST_NAME_SUBSTRING...]", file=sys.stderr)
        return 2
    PROXY = os.path.abspath(sys.argv[1])
    status = ktls_interop.check_kernel_tls()
    if status is not None:
        return status
    OPENSSL = ktls_interop.find_openssl()
    STDBUF = shutil.which("stdbuf") or ""
    STRACE = shutil.which("strace") or ""
    if not OPENSSL or not STDBUF or not os.access(PROXY, os.X_OK):
        return ktls_interop.fail(f"need the openssl CLI and stdbuf in PATH and ktls-proxy at {PROXY}")
    REKEY = kernel_can_rekey(platform.release())
    print(f"kernel {platform.release()} (rekey: {'yes' if REKEY else 'no'}); {ktls_interop.openssl_version()}; "
          f"Python ssl: {ssl.OPENSSL_VERSION}; strace: {STRACE or 'none'}", flush=True)
    return ktls_interop.run_tests(sys.modules[__name__], sys.argv[2:], "ktls-proxy-interop-", set_up)


if __name__ == "__main__":
    sys.exit(main())
