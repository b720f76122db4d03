#!/usr/bin/env python3
"""Interop tests for ktls-serve, the HTTPS file server, on a kernel with kTLS.

usage: serve_interop.py PATH/TO/ktls-serve [TEST_NAME_SUBSTRING...]

Real clients: curl (a 64 MiB download, keep-alive, HEAD, ranges, 304,
traversal attempts in every encoding), Python's http.client over ssl,
headless Chromium (a page with an image and a script, checked in the
rendered DOM), and raw TLS sockets for bad requests, timeouts, the
connection limit and a drain on SIGTERM. ktls-serve runs with --rx, so both
directions go to the kernel on 6.1 as well.

/proc/net/tls_stat proves that the kernel did the work: TlsTxSw and TlsRxSw
grow by one per connection ktls-serve offloaded (counted from after its
start-up probe), TlsDecryptError does not move; the access log says
tx=kernel rx=kernel for each request.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import email.utils
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_badpeer  # noqa: E402
import ktls_interop  # noqa: E402
from ktls_interop import HOST, STEP_TIMEOUT, Pump, read_tls_stat, sha, stop_process, wait_until  # noqa: E402

SERVE = ""  # ktls-serve (main() sets it)
SITE = ""   # The served root: a directory made by set_up.
SECRET = b"this file is outside the root"
BIG_LEN = 64 * 1024 * 1024
BIG = b""   # Contents of SITE/big.bin.
MEDIUM = b""  # Contents of SITE/medium.bin (8 MiB).
# The idle-timeout tests: ktls-serve --idle-timeout, and how late after it
# the close may come: its sweep fires up to two sweep periods (an eighth of
# the timeout) late, then the close_notify and the client's read run on
# UML's one slow CPU shared with the other tests.
IDLE_TIMEOUT = 1.0
IDLE_LATE = 2 * IDLE_TIMEOUT / 8 + 2.0
HEADER_TIMEOUT = IDLE_TIMEOUT  # ktls-serve --header-timeout, late as the idle timeout.

# One access-log line: CLIENT METHOD PATH STATUS BYTES DURATIONms tx=.. rx=..
ACCESS = re.compile(r"^(?P<client>\S+) (?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}) (?P<bytes>\d+) "
                    r"(?P<ms>\d+)ms tx=(?P<tx>kernel|user) rx=(?P<rx>kernel|user)(?: reason=(?P<reason>\S+))?"
                    r"(?: error=.*)?$")


class Serve:
    """ktls-serve on a free port, serving SITE; stopped with SIGTERM, which
    must end it with status 0."""

    def __init__(self, *args, rx=True, prefix=()):
        self.args = ["--root", SITE, "--listen", f"{HOST}:0", "--threads", "2", *(["--rx"] if rx else []), *args]
        self.prefix = list(prefix)  # A command ktls-serve runs under (prlimit ...).

    def __enter__(self):
        self.proc = subprocess.Popen([*self.prefix, SERVE, *self.args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out = Pump(self.proc.stdout)
        self.err = Pump(self.proc.stderr)
        self.out.start()
        self.err.start()
        if not wait_until(lambda: "https://" in self.err.text() or self.proc.poll() is not None, STEP_TIMEOUT):
            self.stop()
            raise AssertionError("ktls-serve did not start: " + self.err.text())
        match = re.search(r"https://[^:]+:(\d+)/", self.err.text())
        if not match:
            self.stop()
            raise AssertionError("ktls-serve did not say where it listens: " + self.err.text())
        self.port = int(match.group(1))
        self.stats_before = read_tls_stat()  # After the start-up probe.
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.returncode = None
        stop_process(self.proc, (self.out, self.err))

    def url(self, path):
        return f"https://{HOST}:{self.port}{path}"

    def access(self, count, timeout=STEP_TIMEOUT):
        """The first `count` access-log lines, parsed (waits for them)."""
        wait_until(lambda: len(self.out.text().splitlines()) >= count, timeout)
        lines = self.out.text().splitlines()
        parsed = [ACCESS.match(line) for line in lines]
        assert all(parsed), f"malformed access-log lines: {lines}"
        return [m.groupdict() for m in parsed]

    def stat_delta(self):
        after = read_tls_stat()
        return {name: after[name] - self.stats_before[name] for name in after if name in self.stats_before}


def curl(*args, timeout=STEP_TIMEOUT * 3):
    """Runs curl (TLS verification off: the certificate is self-signed);
    returns (status, stdout bytes, stderr text)."""
    done = subprocess.run(["curl", "-sS", "-k", "--http1.1", *args], capture_output=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


def tls_context():
    return ktls_interop.unverified_client_context()


def tls_connect(port, timeout=STEP_TIMEOUT):
    raw = socket.create_connection((HOST, port), timeout=timeout)
    return tls_context().wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


def read_until_close(sock):
    """Everything until the peer's close_notify; raises ssl.SSLEOFError on a
    close without it."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


class OffloadedDownloads(unittest.TestCase):
    def setUp(self):
        self.tmp = os.path.join(SITE, "..", "curl-" + self.id().rsplit(".", 1)[-1])
        os.makedirs(self.tmp, exist_ok=True)

    def test_64mib_download_is_byte_exact_with_both_directions_in_the_kernel(self):
        with Serve() as server:
            status, body, err = curl(server.url("/big.bin"))
            self.assertEqual(status, 0, err)
            self.assertEqual(len(body), BIG_LEN)
            self.assertEqual(sha(body), sha(BIG))
            [line] = server.access(1)
            self.assertEqual((line["method"], line["path"], line["status"], line["bytes"]),
                             ("GET", "/big.bin", "200", str(BIG_LEN)))
            self.assertEqual((line["tx"], line["rx"]), ("kernel", "kernel"))
            delta = server.stat_delta()
            self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (1, 1), delta)
            self.assertEqual(delta["TlsDecryptError"], 0)

    def test_keep_alive_serves_several_requests_on_one_connection(self):
        with Serve() as server:
            out = [os.path.join(self.tmp, f"out{i}") for i in range(3)]
            status, body, err = curl("-w", "%{num_connects}\\n", "-o", out[0], server.url("/index.html"),
                                     "-o", out[1], server.url("/medium.bin"), "-o", out[2], server.url("/app.js"))
            self.assertEqual(status, 0, err)
            # num_connects per transfer: 1 for the first, 0 when reused.
            self.assertEqual(body.split(), [b"1", b"0", b"0"])
            with open(out[1], "rb") as f:
                self.assertEqual(sha(f.read()), sha(MEDIUM))
            lines = server.access(3)
            self.assertEqual([line["path"] for line in lines], ["/index.html", "/medium.bin", "/app.js"])
            self.assertEqual(len({line["client"] for line in lines}), 1, "not one connection")
            delta = server.stat_delta()
            self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (1, 1), delta)

    def test_head_sends_headers_only(self):
        with Serve() as server:
            status, body, err = curl("-I", server.url("/medium.bin"))
            self.assertEqual(status, 0, err)
            headers = body.decode()
            self.assertIn("HTTP/1.1 200", headers)
            self.assertIn(f"Content-Length: {len(MEDIUM)}", headers)
            self.assertIn("Accept-Ranges: bytes", headers)
            [line] = server.access(1)
            self.assertEqual((line["method"], line["status"], line["bytes"]), ("HEAD", "200", "0"))

    def test_ranges_at_start_middle_and_end_and_unsatisfiable(self):
        size = len(MEDIUM)
        cases = [("0-99", 0, 100), ("4000000-4099999", 4000000, 100000), (f"{size - 10}-", size - 10, 10),
                 ("-777", size - 777, 777)]
        with Serve() as server:
            for spec, start, length in cases:
                status, body, err = curl("-D", "-", "-H", f"Range: bytes={spec}", server.url("/medium.bin"))
                self.assertEqual(status, 0, err)
                head, _, payload = body.partition(b"\r\n\r\n")
                self.assertIn(b"HTTP/1.1 206", head, spec)
                self.assertIn(f"Content-Range: bytes {start}-{start + length - 1}/{size}".encode(), head, spec)
                self.assertEqual(payload, MEDIUM[start:start + length], spec)
            status, body, err = curl("-D", "-", "-H", f"Range: bytes={size}-", server.url("/medium.bin"))
            self.assertEqual(status, 0, err)
            self.assertIn(b"HTTP/1.1 416", body)
            self.assertIn(f"Content-Range: bytes */{size}".encode(), body)
            lines = server.access(5)  # One connection each: batches from two threads, in either order.
            self.assertEqual(sorted(line["status"] for line in lines), ["206"] * 4 + ["416"])
            self.assertTrue(all((line["tx"], line["rx"]) == ("kernel", "kernel") for line in lines))

    def test_if_modified_since_gives_304(self):
        with Serve() as server:
            status, head, err = curl("-I", server.url("/index.html"))
            self.assertEqual(status, 0, err)
            modified = re.search(rb"Last-Modified: ([^\r\n]+)", head).group(1).decode()
            self.assertEqual(email.utils.parsedate_to_datetime(modified).timestamp(),
                             int(os.stat(os.path.join(SITE, "index.html")).st_mtime))
            status, body, err = curl("-D", "-", "-H", f"If-Modified-Since: {modified}", server.url("/index.html"))
            self.assertEqual(status, 0, err)
            self.assertIn(b"HTTP/1.1 304", body)
            self.assertTrue(body.endswith(b"\r\n\r\n"), "a 304 has no body")
            status, body, err = curl("-H", "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
                                     server.url("/index.html"))
            self.assertIn(b"<img", body)

    def test_traversal_in_every_encoding_gets_nothing_from_outside(self):
        # A ".." segment, however encoded, is refused after decoding (403);
        # so is a symlink out of the root, by openat2(RESOLVE_BENEATH) (EXDEV:
        # 403).
        targets = ["/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/.%2e/secret.txt",
                   "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/sub/..%2f..%2fsecret.txt",
                   "/sub/%2e%2e/%2e%2e/secret.txt", "/link-out", "/sub/link-out-relative"]
        with Serve() as server:
            for target in targets:
                status, body, err = curl("--path-as-is", "-D", "-", server.url(target))
                self.assertEqual(status, 0, err)
                code = int(body.split(b" ", 2)[1])
                self.assertEqual(code, 403, target)
                self.assertNotIn(SECRET, body, target)
            status, body, err = curl(server.url("/sub/link-in"))
            self.assertEqual(body, MEDIUM[:0] + open(os.path.join(SITE, "index.html"), "rb").read(),
                             "a symlink inside the root is served")

    def test_no_offload_and_no_rx_say_so_in_the_log(self):
        for flag, want in (("--no-offload", ("user", "user")), ("--no-rx", ("kernel", "user"))):
            with Serve(flag, rx=False) as server:
                status, body, err = curl(server.url("/medium.bin"))
                self.assertEqual(status, 0, err)
                self.assertEqual(sha(body), sha(MEDIUM))
                [line] = server.access(1)
                self.assertEqual((line["tx"], line["rx"]), want, flag)
                delta = server.stat_delta()
                self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]),
                                 (int(want[0] == "kernel"), int(want[1] == "kernel")), flag)


# Headless Chromium starts slowly in the 6.1 guest (about 45 s alone, all
# its system calls through UML), and more slowly beside another guest in
# the parallel suite: a bound against a hang, not a performance figure.
CHROMIUM_TIMEOUT = 180


class OpenFileCache(unittest.TestCase):
    def test_cached_files_are_right_and_a_replaced_file_is_served_new_after_the_valid_time(self):
        path = os.path.join(SITE, "cached.txt")
        with open(path, "wb") as f:
            f.write(b"first version\n")
        with Serve("--open-file-cache", "--open-file-cache-valid", "300") as server:
            for _ in range(3):  # Opened once, then from the cache: the same bytes.
                self.assertEqual(get(server.port, "/cached.txt")[0::2], (200, b"first version\n"))
            for _ in range(2):  # A large file goes out by sendfile from the cached descriptor.
                status, out, err = curl(server.url("/medium.bin"))
                self.assertEqual((status, sha(out)), (0, sha(MEDIUM)), err)
            status, _, body = get(server.port, "/cached.txt")
            # Replaced as deployments do, by rename: served new once 300 ms
            # have passed since the cache last looked.
            with open(path + ".tmp", "wb") as f:
                f.write(b"second, longer version\n")
            os.rename(path + ".tmp", path)
            replaced = time.monotonic()
            requests = 6
            while True:
                requests += 1
                asked = time.monotonic()
                status, _, body = get(server.port, "/cached.txt")
                self.assertEqual(status, 200)
                if body == b"second, longer version\n":
                    break
                self.assertEqual(body, b"first version\n")
                self.assertLess(asked - replaced, 0.3, "the old file was served after the valid time")
            os.remove(path)
            time.sleep(0.35)
            self.assertEqual(get(server.port, "/cached.txt")[0], 404)
            lines = server.access(requests + 1)
            self.assertTrue(all((line["tx"], line["rx"]) == ("kernel", "kernel") for line in lines))
            self.assertEqual(sorted(line["status"] for line in lines), ["200"] * requests + ["404"])


class OtherClients(unittest.TestCase):
    def test_python_http_client_keep_alive(self):
        with Serve() as server:
            conn = http.client.HTTPSConnection(HOST, server.port, context=tls_context(), timeout=STEP_TIMEOUT)
            try:
                for path, want, ctype in (("/index.html", None, "text/html"), ("/medium.bin", MEDIUM, "application/"),
                                          ("/pic.png", None, "image/png")):
                    conn.request("GET", path)
                    response = conn.getresponse()
                    body = response.read()
                    self.assertEqual(response.status, 200, path)
                    self.assertEqual(response.version, 11)
                    self.assertTrue(response.getheader("Content-Type").startswith(ctype), path)
                    if want is not None:
                        self.assertEqual(sha(body), sha(want))
            finally:
                conn.close()
            lines = server.access(3)
            self.assertEqual(len({line["client"] for line in lines}), 1, "not one connection")
            self.assertTrue(all((line["tx"], line["rx"]) == ("kernel", "kernel") for line in lines))

    def test_headless_chromium_renders_page_with_image_and_script(self):
        chromium = shutil.which("chromium")
        self.assertIsNotNone(chromium, "Debian's chromium package is not installed")
        with Serve() as server:
            done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
                                   "--virtual-time-budget=5000", "--dump-dom", server.url("/")],
                                  capture_output=True, timeout=CHROMIUM_TIMEOUT)
            dom = done.stdout.decode(errors="replace")
            # app.js writes what it saw once the page (and its image) loaded.
            self.assertIn('<p id="out">script ran; image 3x2</p>', dom, done.stderr.decode(errors="replace")[-2000:])
            lines = server.access(3)
            paths = {line["path"]: line for line in lines}
            for path in ("/", "/app.js", "/pic.png"):
                self.assertIn(path, paths)
                self.assertEqual(paths[path]["status"], "200")
                self.assertEqual((paths[path]["tx"], paths[path]["rx"]), ("kernel", "kernel"))


class Robustness(unittest.TestCase):
    def test_bad_request_gets_400_and_close_while_others_are_served(self):
        with Serve() as server:
            with tls_connect(server.port) as bad:
                bad.sendall(b"GARBAGE\x01 / NOT-HTTP\r\n\r\n")
                reply = read_until_close(bad)  # Ends with close_notify.
            self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply[:100])
            with tls_connect(server.port) as big_header:
                big_header.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 20000 + b"\r\n\r\n")
                reply = read_until_close(big_header)
            self.assertTrue(reply.startswith(b"HTTP/1.1 431"), reply[:100])
            status, body, err = curl(server.url("/medium.bin"))
            self.assertEqual(sha(body), sha(MEDIUM), err)

    def test_client_still_sending_its_body_reads_the_400_and_close_notify_not_a_reset(self):
        # No request body is accepted: 400, and the server ends the
        # connection while the client is still sending the body it
        # announced. The server lingers (reads and drops what comes, within
        # its budget) before it closes, so the client's sends succeed and it
        # reads the whole answer and close_notify. Closing at once, with the
        # body unread, would send a reset that can destroy both.
        with Serve() as server:
            with tls_connect(server.port) as client:
                client.sendall(b"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 131072\r\n\r\n")
                time.sleep(0.5)  # The server has answered and ended the connection by now.
                for _ in range(8):
                    client.sendall(os.urandom(16384))
                reply = read_until_close(client)  # Raises on a reset, or on a close without close_notify.
            self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply[:100])
            status, body, err = curl(server.url("/medium.bin"))
            self.assertEqual(sha(body), sha(MEDIUM), err)

    def test_silent_client_is_dropped_after_the_handshake_timeout(self):
        with Serve("--handshake-timeout", "500") as server:
            with socket.create_connection((HOST, server.port), timeout=STEP_TIMEOUT) as silent:
                started = time.monotonic()
                status, body, err = curl(server.url("/index.html"))  # Served meanwhile.
                self.assertEqual(status, 0, err)
                self.assertEqual(silent.recv(1), b"", "the server did not close the silent connection")
                self.assertLess(time.monotonic() - started, STEP_TIMEOUT)
            self.assertTrue(wait_until(lambda: "timed out" in server.err.text(), 5), server.err.text())

    def test_idle_connection_is_closed_with_close_notify(self):
        with Serve("--idle-timeout", str(int(IDLE_TIMEOUT * 1000))) as server:
            with tls_connect(server.port) as idle:
                # The server arms its idle timeout when its handshake ends,
                # which is after ours (it ends on our Finished).
                connected = time.monotonic()
                self.assertEqual(read_until_close(idle), b"")  # close_notify, not a bare FIN.
                waited = time.monotonic() - connected
        self.assertGreaterEqual(waited, IDLE_TIMEOUT, "closed before the idle timeout")
        self.assertLess(waited, IDLE_TIMEOUT + IDLE_LATE, "closed long after the idle timeout")

    def test_client_trickling_its_request_header_is_dropped_after_the_header_timeout(self):
        # A byte of header every tenth of the header timeout: each within
        # the (long) idle timeout, but the header is not complete within the
        # header timeout of its first byte, so the client is dropped (a
        # slowloris client must not hold a connection for ever).
        with Serve("--header-timeout", str(int(HEADER_TIMEOUT * 1000)), "--idle-timeout", "30000") as server:
            with tls_connect(server.port) as slow:
                header = b"GET /index.html HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
                reply = None
                sent = 0
                started = time.monotonic()
                for byte in header:
                    slow.sendall(bytes([byte]))
                    sent += 1
                    # Waits a tenth of the timeout; takes in the session
                    # tickets, then the server's close_notify (b"").
                    slow.settimeout(HEADER_TIMEOUT / 10)
                    try:
                        reply = slow.recv(65536)
                        break
                    except (socket.timeout, TimeoutError):
                        pass
                    if time.monotonic() - started > HEADER_TIMEOUT + IDLE_LATE:
                        break
                waited = time.monotonic() - started
                # close_notify (not a bare FIN, not a response) while the
                # client was still sending, bytes apart.
                self.assertEqual(reply, b"", f"no close_notify after {sent} bytes in {waited:.1f} s")
                self.assertGreater(sent, 5, "the client did not trickle")
                # Everyone else is still served.
                status, body, err = curl(server.url("/index.html"))
                self.assertEqual(status, 0, err)
            self.assertIn("dropped: request header not complete within the header timeout", server.err.text())
        self.assertGreaterEqual(waited, HEADER_TIMEOUT, "dropped before the header timeout")
        self.assertLess(waited, HEADER_TIMEOUT + IDLE_LATE + HEADER_TIMEOUT / 10, "dropped long after the header timeout")

    def test_transfer_encoding_gets_400_and_close_as_soon_as_its_header_is_in(self):
        # No request body is accepted: a Transfer-Encoding header, whatever
        # its coding, is answered with 400 and close_notify once the header
        # is in, before anything after it is read as a body (an endless
        # chunk line or trailer would grow the server's buffer for ever) or
        # as the next request (a body the client meant, taken for a second
        # request: request smuggling).
        endless = b"a" * 65536
        second = b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        shapes = {
            "endless chunk extension": b"Transfer-Encoding: chunked\r\n\r\n0;ext=" + endless,
            "endless trailer": b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: " + endless,
            "empty chunked body": b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "gzip, then a request": b"Transfer-Encoding: gzip\r\n\r\n" + second,
            "chunked, gzip, then a request": b"Transfer-Encoding: chunked, gzip\r\n\r\n" + second,
        }
        with Serve() as server:
            for name, rest in shapes.items():
                with tls_connect(server.port) as client:
                    client.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n" + rest)
                    # close_notify, or raises: a timeout (the idle timeout
                    # is longer) when the server waits for more.
                    reply = read_until_close(client)
                self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), (name, reply[:100]))
                self.assertEqual(reply.count(b"HTTP/1.1 "), 1, (name, reply))
                self.assertIn(b"\r\nConnection: close\r\n", reply, name)
            lines = server.access(len(shapes))
            self.assertEqual([(line["status"], line["reason"]) for line in lines],
                             [("400", "transfer-encoding")] * len(shapes))
            status, body, err = curl(server.url("/index.html"))
            self.assertEqual(status, 0, err)

    def test_existing_file_gets_503_not_404_when_descriptors_run_out(self):
        # Clients hold connections until the server has no descriptor left
        # (the next handshake waits in the listen queue): a request for a
        # file that exists then gets 503, to try again, not 404 (gone), and
        # the log says why. Once connections end, it is served again.
        with Serve(prefix=("prlimit", "--nofile=64:64")) as server:
            held = []
            try:
                while len(held) < 100:
                    try:
                        held.append(tls_connect(server.port, timeout=3))
                    except (socket.timeout, TimeoutError):
                        break
                self.assertLess(len(held), 64, "the server never ran out of descriptors")
                held[-1].sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
                held[-1].settimeout(STEP_TIMEOUT)
                reply = held[-1].recv(65536)
                self.assertTrue(reply.startswith(b"HTTP/1.1 503 "), reply[:100])
                self.assertIn(b"\r\nContent-Length: ", reply)
                self.assertIn("accept: ", server.err.text())  # Out of descriptors there too.
            finally:
                for sock in held:
                    sock.close()
            status, body, err = curl(server.url("/index.html"))
            self.assertEqual(status, 0, err)
            self.assertTrue(body.startswith(b"<!doctype html>"), body[:100])
            # Threads write their lines in batches: in either order.
            lines = server.access(2)
            self.assertEqual(sorted((line["path"], line["status"], line["reason"] or "") for line in lines),
                             [("/index.html", "200", ""), ("/index.html", "503", "out-of-descriptors")])

    def test_connection_limit_queues_the_next_client(self):
        with Serve("--max-connections", "1") as server:
            first = tls_connect(server.port)
            raw = socket.create_connection((HOST, server.port), timeout=1)
            second = tls_context().wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
            with self.assertRaises((socket.timeout, TimeoutError)):
                second.do_handshake()  # Waits in the listen queue.
            first.close()
            second.settimeout(STEP_TIMEOUT)
            # The timed-out attempt left OpenSSL mid-handshake: start afresh.
            second.close()
            with tls_connect(server.port) as third:
                third.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                self.assertTrue(read_until_close(third).startswith(b"HTTP/1.1 200"))

    def test_sigterm_finishes_the_response_in_flight_and_exits_0(self):
        with Serve("--drain-timeout", "20000") as server:
            target = os.path.join(SITE, "..", "sigterm-download")
            download = subprocess.Popen(["curl", "-sS", "-k", "--http1.1", "--limit-rate", "4M", "-o", target,
                                         server.url("/medium.bin")], stderr=subprocess.PIPE)
            # The response must be in flight when the signal comes.
            self.assertTrue(wait_until(lambda: os.path.exists(target) and os.path.getsize(target) > 0, STEP_TIMEOUT))
            with tls_connect(server.port) as idle:
                idle.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
                first = idle.recv(65536)
                self.assertTrue(first.startswith(b"HTTP/1.1 200"))
                server.proc.send_signal(signal.SIGTERM)
                # The idle keep-alive connection gets close_notify.
                self.assertEqual(read_until_close(idle).find(b"HTTP/1.1"), -1)
            _, err = download.communicate(timeout=STEP_TIMEOUT * 2)
            self.assertEqual(download.returncode, 0, err)
            with open(target, "rb") as f:
                self.assertEqual(sha(f.read()), sha(MEDIUM), "the response in flight was cut")
            self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT), 0)
            self.assertIn("draining", server.err.text())

# --- Hardening: redirects, dotfiles, cipher suites, HSTS -------------------------

def exchange(port, request, context=None):
    """Sends one raw request (with Connection: close) and returns the whole
    reply up to the server's close_notify."""
    raw = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
    with (context or tls_context()).wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
        tls.sendall(request)
        return read_until_close(tls)


def get(port, target, context=None):
    """(status, headers dict with lower-case names, body) of GET target."""
    reply = exchange(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), context)
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


def tls12_context(ciphers):
    ctx = tls_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    return ctx


def add_site_files():
    """Adds dotfiles, /.well-known/ and a directory with an index (docs/) to
    SITE, for the tests below."""
    for name, data in ((".env", b"PASSWORD=hunter2"), (".git/config", b"[core]\n"),
                       (".well-known/acme-challenge/token", b"acme proof"), ("docs/index.html", b"<p>docs</p>")):
        os.makedirs(os.path.dirname(os.path.join(SITE, name)), exist_ok=True)
        with open(os.path.join(SITE, name), "wb") as f:
            f.write(data)


class Hardening(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        add_site_files()

    def test_directory_redirect_stays_on_this_host(self):
        # "//sub" must not become "Location: //sub/", a browser's host "sub".
        cases = [("//docs", "/docs/"), ("//docs?next=//evil.example", "/docs/?next=//evil.example"),
                 ("/.//docs", "/docs/"), ("/%2F%2Fdocs", "/docs/"), ("/docs", "/docs/")]
        with Serve() as server:
            for target, location in cases:
                status, headers, _ = get(server.port, target)
                self.assertEqual((status, headers.get("location")), (301, location), target)
            status, out, err = curl("-L", "--path-as-is", "-w", " %{http_code} %{url_effective}", server.url("//docs"))
            self.assertEqual(status, 0, err)
            self.assertEqual(out.decode(), "<p>docs</p> 200 " + server.url("/docs/"))
            lines = server.access(len(cases) + 2)
            self.assertEqual(sorted(line["status"] for line in lines), ["200"] + ["301"] * (len(cases) + 1))

    def test_dotfiles_are_404_with_the_reason_logged_and_well_known_is_served(self):
        with Serve() as server:
            for target in ("/.env", "/.git/config", "/%2egit/config", "/./.env"):
                status, _, body = get(server.port, target)
                self.assertEqual(status, 404, target)
                self.assertNotIn(b"hunter2", body)
            status, _, body = get(server.port, "/.well-known/acme-challenge/token")
            self.assertEqual((status, body), (200, b"acme proof"))
            lines = server.access(5)
            self.assertEqual(sorted((line["status"], line["reason"] or "") for line in lines),
                             [("200", "")] + [("404", "dotfile")] * 4)
        with Serve("--dotfiles") as server:
            self.assertEqual(get(server.port, "/.env")[0::2], (200, b"PASSWORD=hunter2"))

    def test_date_header_host_required_and_if_range(self):
        with Serve() as server:
            # Date (RFC 9110 6.6.1) on every response, the current time
            # (within a generous window: the guest's clock is the host's).
            before = time.time()
            status, headers, _ = get(server.port, "/index.html")
            date = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
            self.assertEqual(status, 200)
            self.assertLess(abs(date - before), 60, headers["date"])
            self.assertIn("date", get(server.port, "/missing")[1])
            # An HTTP/1.1 request without Host, or with two, gets 400 and
            # close (RFC 9112 3.2); HTTP/1.0 needs none.
            for request in (b"GET /index.html HTTP/1.1\r\nConnection: close\r\n\r\n",
                            b"GET /index.html HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
                reply = exchange(server.port, request)
                self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), (request, reply[:100]))
                self.assertIn(b"\r\nConnection: close\r\n", reply)
            self.assertTrue(exchange(server.port, b"GET /index.html HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 "))
            # If-Range (RFC 9110 13.1.5): the range while the validator is
            # the file's Last-Modified; the whole file (200) otherwise.
            index = get(server.port, "/index.html")
            modified = index[1]["last-modified"]
            for validator, status, body in ((modified, 206, index[2][:10]),
                                            ("Sun, 06 Nov 1994 08:49:37 GMT", 200, index[2]),
                                            ('"an-etag"', 200, index[2])):
                reply = exchange(server.port, f"GET /index.html HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n"
                                              f"If-Range: {validator}\r\nConnection: close\r\n\r\n".encode())
                head, _, got = reply.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(f"HTTP/1.1 {status} ".encode()), (validator, head))
                self.assertEqual(got, body, validator)

    def test_tls12_client_offering_only_cbc_fails_with_handshake_failure(self):
        with Serve() as server:
            with self.assertRaises(ssl.SSLError) as caught:
                get(server.port, "/index.html", tls12_context("ECDHE-ECDSA-AES128-SHA"))
            self.assertEqual(ktls_badpeer.alert_name(caught.exception), "handshake_failure", caught.exception)
            # Everyone else is served: TLS 1.2 with an AEAD suite, offloaded.
            ctx = tls12_context("ECDHE-ECDSA-AES128-GCM-SHA256")
            self.assertEqual(get(server.port, "/index.html", ctx)[0], 200)
            [line] = server.access(1)
            self.assertEqual((line["tx"], line["rx"]), ("kernel", "kernel"))
            self.assertIn("handshake failed", server.err.text())

    def test_ciphers_can_enable_cbc_which_stays_in_userspace_and_says_why(self):
        with Serve("--ciphers", "ECDHE-ECDSA-AES128-SHA") as server:
            status, _, body = get(server.port, "/index.html", tls12_context("ECDHE-ECDSA-AES128-SHA"))
            self.assertEqual(status, 200)
            self.assertTrue(body.startswith(b"<!doctype html>"))
            [line] = server.access(1)
            self.assertEqual((line["tx"], line["rx"]), ("user", "user"))
            self.assertIn("ktls-serve: a connection stays in userspace TLS: cipher not offloadable: "
                          "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", server.err.text())
            delta = server.stat_delta()
            self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (0, 0), delta)

    def test_hsts_header_only_when_asked(self):
        with Serve("--hsts", "31536000") as server:
            for target in ("/index.html", "/missing"):
                _, headers, _ = get(server.port, target)
                self.assertEqual(headers.get("strict-transport-security"), "max-age=31536000", target)
        with Serve() as server:
            _, headers, _ = get(server.port, "/index.html")
            self.assertNotIn("strict-transport-security", headers)


# --- One record per small response ---------------------------------------------

class RecordClient:
    """A TLS client that sees every record the server sends: the bytes from
    the socket are cut into records by their headers
    (ktls_badpeer.RecordSplitter) and handed to Python's ssl (over memory
    BIOs) one whole record at a time, so what each record carries is known.
    Records without application data (TLS 1.3 session tickets) are left
    out."""

    def __init__(self, port, context=None):
        self.sock = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (context or tls_context()).wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.splitter = ktls_badpeer.RecordSplitter()
        self.waiting = []  # Whole records received, not yet given to ssl.
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.incoming.write(self.next_record())
        self.flush()

    def flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def next_record(self):
        while not self.waiting:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.waiting += self.splitter.feed(data)
        return self.waiting.pop(0)

    def request(self, request):
        """Sends request; returns the response as the list of the
        plaintexts of the records that carried it."""
        self.tls.write(request)
        self.flush()
        records, response = [], b""
        while not self.complete(response):
            self.incoming.write(self.next_record())
            plaintext = b""
            try:
                while True:
                    plaintext += self.tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            if plaintext:
                records.append(plaintext)
                response += plaintext
        return records

    @staticmethod
    def complete(response):
        head, found, body = response.partition(b"\r\n\r\n")
        if not found:
            return False
        if head.split(b" ", 2)[1] == b"304":
            return True
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        return len(body) >= int(length.group(1))

    def close(self):
        self.sock.close()


class OneRecordPerResponse(unittest.TestCase):
    """Status, headers and a short body leave in one TLS record; a large
    file's header shares the first record with the file's first bytes. A
    client counts the records on the wire."""

    @classmethod
    def setUpClass(cls):
        add_site_files()

    def responses_in_records(self, *flags, rx=True):
        """(records per response, access log, tls_stat delta) for a 404, a
        301, a 304, a small file and 64 KiB of a large file."""
        modified = email.utils.formatdate(os.stat(os.path.join(SITE, "index.html")).st_mtime, usegmt=True)
        requests = [b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /docs HTTP/1.1\r\nHost: x\r\n\r\n",
                    f"GET /index.html HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: {modified}\r\n\r\n".encode(),
                    b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /medium.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-65535\r\n\r\n"]
        with Serve(*flags, rx=rx) as server:
            client = RecordClient(server.port)
            try:
                records = [client.request(request) for request in requests]
            finally:
                client.close()
            return records, server.access(len(requests)), server.stat_delta()

    def check_small_responses(self, records):
        with open(os.path.join(SITE, "index.html"), "rb") as f:
            index = f.read()
        for i, status in enumerate((b"404", b"301", b"304", b"200")):
            self.assertEqual(len(records[i]), 1, f"{status}: {[len(r) for r in records[i]]} bytes per record")
            self.assertTrue(records[i][0].startswith(b"HTTP/1.1 " + status), records[i][0][:40])
        self.assertTrue(records[3][0].endswith(b"\r\n\r\n" + index))

    def check_large_file_first_record(self, records):
        head, _, _ = records[0].partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
        self.assertTrue(head.startswith(b"HTTP/1.1 206"), head)
        self.assertEqual(b"".join(records), head + MEDIUM[:65536])
        # Header and file share the first record, which is full.
        self.assertEqual(records[0], head + MEDIUM[:16384 - len(head)])

    def test_with_tx_in_the_kernel(self):
        records, lines, delta = self.responses_in_records()
        self.assertTrue(all((line["tx"], line["rx"]) == ("kernel", "kernel") for line in lines), lines)
        self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (1, 1), delta)
        self.check_small_responses(records)
        self.check_large_file_first_record(records[4])

    def test_with_tx_in_userspace(self):
        records, lines, delta = self.responses_in_records("--no-offload", rx=False)
        self.assertTrue(all((line["tx"], line["rx"]) == ("user", "user") for line in lines), lines)
        self.assertEqual((delta["TlsTxSw"], delta["TlsRxSw"]), (0, 0), delta)
        self.check_small_responses(records)
        self.check_large_file_first_record(records[4])


# --- Main ----------------------------------------------------------------------

def tiny_png(width, height):
    """A valid RGB PNG, made by hand (no imaging library needed)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def set_up(directory):
    global SITE, BIG, MEDIUM
    SITE = os.path.join(directory, "site")
    os.makedirs(os.path.join(SITE, "sub"))
    with open(os.path.join(directory, "secret.txt"), "wb") as f:
        f.write(SECRET)
    BIG = os.urandom(BIG_LEN)
    MEDIUM = os.urandom(8 * 1024 * 1024 + 123)
    files = {
        "big.bin": BIG,
        "medium.bin": MEDIUM,
        "index.html": b'<!doctype html><html><head><script src="app.js"></script></head>'
                      b'<body><img id="pic" src="pic.png"><p id="out">waiting</p></body></html>',
        "app.js": b"window.addEventListener('load', () => {\n"
                  b"  const img = document.getElementById('pic');\n"
                  b"  document.getElementById('out').textContent =\n"
                  b"      'script ran; image ' + img.naturalWidth + 'x' + img.naturalHeight;\n"
                  b"});\n",
        "pic.png": tiny_png(3, 2),
    }
    for name, data in files.items():
        with open(os.path.join(SITE, name), "wb") as f:
            f.write(data)
    os.symlink(os.path.join(directory, "secret.txt"), os.path.join(SITE, "link-out"))
    os.symlink("../../secret.txt", os.path.join(SITE, "sub", "link-out-relative"))
    os.symlink("../index.html", os.path.join(SITE, "sub", "link-in"))


def main():
    global SERVE
    if len(sys.argv) < 2:
        print("usage: serve_interop.py PATH/TO/ktls-serve [TEST_NAME_SUBSTRING...]", file=sys.stderr)
        return 2
    SERVE = os.path.abspath(sys.argv[1])
    status = ktls_interop.check_kernel_tls()
    if status is not None:
        return status
    if not shutil.which("curl") or not os.access(SERVE, os.X_OK):
        return ktls_interop.fail(f"need curl in PATH and ktls-serve at {SERVE}")
    print(f"kernel {os.uname().release}; Python ssl: {ssl.OPENSSL_VERSION}", flush=True)
    return ktls_interop.run_tests(sys.modules[__name__], sys.argv[2:], "ktls-serve-interop-", set_up)


if __name__ == "__main__":
    sys.exit(main())
