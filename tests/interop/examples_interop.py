#!/usr/bin/env python3
"""Runs each program in examples/ once, on a kernel with kTLS, so the code
users copy keeps working.

usage: examples_interop.py DIR/WITH/example_* [TEST_NAME_SUBSTRING...]

Each runs against a peer without kTLS of its own (Python's ssl), so that
while the connection is open TlsCurrTxSw/TlsCurrRxSw count exactly the
example's directions: TX, and RX too where the kernel can rekey (Linux
6.14+, the library's default).

- example_echo_server and example_own_ssl_server (your own SSL_accept, then
  OffloadSsl): the bytes come back; the server says where each direction
  went, and the echo server what sock_diag says (ulp=tls);
- example_client: its message arrives, the answer comes back; and against
  example_echo_server, ktls at both ends;
- example_asio_https_server: a 1 MiB file by async_sendfile, byte for
  byte, to Python and to curl.

Exit status as the other interop suites: 0, 1, or 77 (SKIP) without kTLS
(a failure with KTLS_REQUIRE_KERNEL=1).
"""
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
from ktls_interop import HOST, STEP_TIMEOUT, Pump, read_tls_stat, run_openssl, stop_process, wait_for_exit, wait_until  # noqa: E402

BIN = ""     # The directory with the example_* programs (main() sets it).
CERT = ""    # A self-signed certificate for localhost (set_up), its own CA.
KEY = ""
FILE = ""    # 1 MiB of random bytes, for the HTTPS server.
REKEY = False  # RX goes to the kernel by default only where it can rekey.


def example(name):
    return os.path.join(BIN, "example_" + name)


class Server:
    """An example server for a `with` block: it prints "listening on
    127.0.0.1:PORT" on stdout once it listens."""

    def __init__(self, *cmd):
        self.cmd = cmd

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out = Pump(self.proc.stdout)
        self.err = Pump(self.proc.stderr)
        self.out.start()
        self.err.start()
        if not wait_until(lambda: "listening on" in self.out.text() or self.proc.poll() is not None, STEP_TIMEOUT):
            self.stop()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.out.text())
        if not match:
            self.stop()
            raise AssertionError(f"{self.cmd[0]} did not listen: {self.err.text()}")
        self.port = int(match.group(1))
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait(self):
        """The exit status, once it exits by itself, with all its output read."""
        return wait_for_exit(self.proc, (self.out, self.err))

    def stop(self):
        stop_process(self.proc, (self.out, self.err))


def open_delta(before):
    """TlsCurrTxSw and TlsCurrRxSw now, less before: the kTLS sessions open
    now that were not then. (Every process probes the kernel once, with
    sockets of its own, but closes them before its first offload: only
    the Curr* counters are exact while a connection is open.)"""
    after = read_tls_stat()
    return after["TlsCurrTxSw"] - before["TlsCurrTxSw"], after["TlsCurrRxSw"] - before["TlsCurrRxSw"]


def tls_client(port):
    ctx = ssl.create_default_context(cafile=CERT)
    raw = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def recv_exactly(sock, length):
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise AssertionError(f"closed after {len(data)} of {length} bytes")
        data += chunk
    return data


class Examples(unittest.TestCase):
    def echo_server(self, cmd):
        """A Python client (no kTLS of its own) against an example echo
        server: the echo comes back, and while the connection is open the
        kernel holds exactly the server's TX (and RX where it can rekey)."""
        before = read_tls_stat()
        with Server(*cmd) as server:
            with tls_client(server.port) as tls:
                tls.sendall(b"ping through kTLS")
                self.assertEqual(recv_exactly(tls, 17), b"ping through kTLS")
                self.assertEqual(open_delta(before), (1, 1 if REKEY else 0))
                tls.unwrap()  # close_notify, and the server's back.
            self.assertEqual(server.wait(), 0, server.err.text())
            self.assertIn(f"connection: tx=kernel rx={'kernel' if REKEY else 'user'}", server.out.text())
        self.assertEqual(open_delta(before), (0, 0), "kTLS sessions left open")
        return server.out.text()

    def test_echo_server(self):
        out = self.echo_server([example("echo_server"), CERT, KEY, "0", "1"])
        self.assertIn("ulp=tls", out, "the kernel's view (sock_diag) of the server's connection")

    def test_own_ssl_server(self):
        self.echo_server([example("own_ssl_server"), CERT, KEY, "0"])

    def test_client(self):
        """example_client against a Python server (no kTLS of its own) that
        looks at tls_stat once the client's message has arrived, while the
        client waits for the answer."""
        before = read_tls_stat()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(CERT, KEY)
        seen = {}
        with socket.create_server((HOST, 0)) as listener:
            client = subprocess.Popen([example("client"), "localhost", str(listener.getsockname()[1]), CERT,
                                       "ping through kTLS"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                listener.settimeout(STEP_TIMEOUT)
                raw, _ = listener.accept()
                with ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(STEP_TIMEOUT)
                    message = recv_exactly(tls, 17)
                    seen["open"] = open_delta(before)
                    tls.sendall(message[::-1])
                    self.assertEqual(tls.recv(4096), b"", "then the client's close_notify")
                    tls.unwrap()
                out, err = client.communicate(timeout=STEP_TIMEOUT)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        self.assertEqual(client.returncode, 0, err)
        self.assertEqual(message, b"ping through kTLS")
        self.assertEqual(out, b"SLTk hguorht gnip\n")
        self.assertIn(f"tx=kernel rx={'kernel' if REKEY else 'user'} TLSv1.3", err.decode())
        self.assertEqual(seen["open"], (1, 1 if REKEY else 0))
        self.assertEqual(open_delta(before), (0, 0), "kTLS sessions left open")

    def test_client_with_echo_server(self):
        with Server(example("echo_server"), CERT, KEY, "0", "1") as server:
            client = subprocess.run([example("client"), "localhost", str(server.port), CERT, "both ends ktls"],
                                    capture_output=True, text=True, timeout=STEP_TIMEOUT)
            self.assertEqual(client.returncode, 0, client.stderr)
            self.assertEqual(client.stdout, "both ends ktls\n")
            self.assertEqual(server.wait(), 0, server.err.text())
            rx = "kernel" if REKEY else "user"
            self.assertIn(f"tx=kernel rx={rx}", client.stderr)
            self.assertIn(f"connection: tx=kernel rx={rx}", server.out.text())

    def test_asio_https_server_sendfile(self):
        if not os.access(example("asio_https_server"), os.X_OK):
            self.fail("example_asio_https_server was not built (ktls::asio needs Boost)")
        with open(FILE, "rb") as f:
            contents = f.read()
        before = read_tls_stat()
        with Server(example("asio_https_server"), CERT, KEY, FILE, "0") as server:
            with tls_client(server.port) as tls:
                tls.sendall(b"GET /anything HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += recv_exactly(tls, 1)
                self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
                self.assertIn(f"Content-Length: {len(contents)}\r\n".encode(), head)
                self.assertEqual(recv_exactly(tls, len(contents)), contents)
                self.assertEqual(open_delta(before), (1, 1 if REKEY else 0))
            got = subprocess.run(["curl", "-sS", "--cacert", CERT, "--http1.1",
                                  f"https://localhost:{server.port}/again"], capture_output=True,
                                 timeout=STEP_TIMEOUT * 3)
            self.assertEqual(got.returncode, 0, got.stderr)
            self.assertEqual(got.stdout, contents)
            server.proc.terminate()
            self.assertEqual(server.wait(), 0, server.err.text())
        self.assertEqual(open_delta(before), (0, 0), "kTLS sessions left open")


def set_up(directory):
    global CERT, KEY, FILE
    CERT = os.path.join(directory, "cert.pem")
    KEY = os.path.join(directory, "key.pem")
    run_openssl("req", "-x509", *ktls_interop.P256_KEY_ARGS, "-nodes", "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", KEY, "-out", CERT)
    FILE = os.path.join(directory, "file.bin")
    with open(FILE, "wb") as f:
        f.write(os.urandom(1024 * 1024))


def main():
    global BIN, REKEY
    if len(sys.argv) < 2:
        print("usage: examples_interop.py DIR/WITH/example_* [TEST_NAME_SUBSTRING...]", file=sys.stderr)
        return 2
    BIN = os.path.abspath(sys.argv[1])
    status = ktls_interop.check_kernel_tls()
    if status is not None:
        return status
    if not ktls_interop.find_openssl() or not shutil.which("curl"):
        return ktls_interop.fail("needs the openssl CLI and curl in PATH")
    REKEY = tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 14)
    print(f"kernel {os.uname().release}", flush=True)
    return ktls_interop.run_tests(sys.modules[__name__], sys.argv[2:], "ktls-examples-", set_up)


if __name__ == "__main__":
    sys.exit(main())
