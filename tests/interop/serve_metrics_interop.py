#!/usr/bin/env python3
"""ktls-serve --metrics, on a kernel with kTLS, read by a real Prometheus
text parser (python3-prometheus-client's).

usage: serve_metrics_interop.py PATH/TO/ktls-serve [TEST_NAME_SUBSTRING...]

Each test starts ktls-serve with --metrics on a free loopback port, scrapes
/metrics before and after some connections, and checks what moved, by
exactly how much, and that nothing else did:

- offloaded connections: ktls_connections_total{tx=kernel,rx=kernel}, the
  open-connections gauge while one is open, requests by code, response bytes
  by path (a 64 KiB file by sendfile, exactly; headers and a small file
  written), and that the server's TlsTxSw/TlsRxSw grew by the connections
  the metrics say went to the kernel;
- --no-rx: tx=kernel rx=user, one fallback {direction=rx, reason=disabled};
- a CBC suite (--ciphers lets it in; the kernel cannot carry it): tx=user
  rx=user, fallbacks {tx, cipher} and {rx, cipher}, the file written, not
  sendfile'd, and tls_stat untouched;
- failed handshakes (a client offering only CBC to the default server, one
  that speaks plain HTTP, one that connects and leaves): counted by reason,
  and not as connections;
- a KeyUpdate from openssl s_client: ktls_key_updates_total{received};
- ktls_kernel_tls_stat equals /proc/net/tls_stat, counter for counter.
Also: every family has # HELP and # TYPE, other paths get 404.

Exit status as the other interop suites: 0, 1, or 77 (SKIP) without kTLS
(a failure with KTLS_REQUIRE_KERNEL=1).
"""
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
import serve_interop as serve  # noqa: E402
from ktls_interop import HOST, STEP_TIMEOUT, find_openssl, read_tls_stat, wait_until  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    # Debian's python3-prometheus-client, for a Python (pyenv, a venv) that
    # does not look in Debian's module directory.
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        text_string_to_metric_families = None

SMALL = b"small file\n"
FILE_LEN = 64 * 1024  # Above ktls-serve's 15 KiB: sent by sendfile where TX is in the kernel.
FAMILIES = {  # Sample name -> type.
    "ktls_connections_total": "counter",
    "ktls_open_connections": "gauge",
    "ktls_handshake_failures_total": "counter",
    "ktls_offload_fallbacks_total": "counter",
    "ktls_requests_total": "counter",
    "ktls_response_bytes_total": "counter",
    "ktls_key_updates_total": "counter",
    "ktls_kernel_tls_stat": "gauge",
}


class MetricsServe(serve.Serve):
    """ktls-serve with --metrics on a free loopback port."""

    def __init__(self, *args, rx=True):
        super().__init__("--metrics", f"{HOST}:0", *args, rx=rx)

    def __enter__(self):
        super().__enter__()
        wait_until(lambda: "/metrics" in self.err.text(), STEP_TIMEOUT)
        match = re.search(r"metrics on http://[^:]+:(\d+)/metrics", self.err.text())
        if not match:
            self.stop()
            raise AssertionError("ktls-serve did not say where its metrics are: " + self.err.text())
        self.metrics_port = int(match.group(1))
        return self

    def fetch(self, method="GET", path="/metrics"):
        conn = http.client.HTTPConnection(HOST, self.metrics_port, timeout=STEP_TIMEOUT)
        try:
            conn.request(method, path)
            reply = conn.getresponse()
            return reply.status, reply.getheader("Content-Type"), reply.read().decode()
        finally:
            conn.close()

    def scrape(self):
        """{(sample name, frozenset of labels): value} and {family: (type, help)}."""
        status, content_type, text = self.fetch()
        assert status == 200, (status, text)
        assert content_type.startswith("text/plain; version=0.0.4"), content_type
        samples, families = {}, {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in samples, f"sample twice: {key}"
                samples[key] = sample.value
                families[sample.name] = (family.type, family.documentation)
        return samples, families


class MetricsAt:
    """scrape() of the --metrics listener on port (any tool's: ktls-serve's,
    ktls-proxy's, the process that took over after an upgrade)."""
    fetch = MetricsServe.fetch
    scrape = MetricsServe.scrape

    def __init__(self, port):
        self.metrics_port = port


def metrics_ports(err):
    """The --metrics ports a tool's stderr announced, in order."""
    return [int(port) for port in re.findall(r"metrics on http://[^:]+:(\d+)/metrics", err)]


def settled(test, scrape, want):
    """Calls scrape() (samples) until every key in want has its value (the
    workers count after the last byte went out); the samples, merged."""
    found = {}

    def check():
        found.update(scrape())
        return all(found.get(k) == v for k, v in want.items())
    test.assertTrue(wait_until(check, STEP_TIMEOUT, 0.05), {k: (found.get(k), v) for k, v in want.items()})
    return found


def not_backwards(test, before, after, gauges):
    """No sample of before but the gauges' is less in after."""
    for k, v in before.items():
        if k[0] not in gauges:
            test.assertGreaterEqual(after.get(k, -1), v, f"{k} went backwards")


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def moved(before, after):
    """The samples that changed, {(name, labels): delta}, ignoring the
    kernel's counters (checked on their own)."""
    return {key: after[key] - before.get(key, 0) for key in after
            if key[0] != "ktls_kernel_tls_stat" and after[key] != before.get(key, 0)}


def key(name, **labels):
    return (name, frozenset(labels.items()))


def tls12_context(ciphers):
    ctx = serve.tls_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    return ctx


def keep_alive_gets(port, targets, context=None):
    """GETs targets on one connection (the last with Connection: close);
    returns the bodies. Checks the open-connections gauge from outside."""
    tls = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
    tls = (context or serve.tls_context()).wrap_socket(tls, server_hostname="localhost")
    bodies = []
    with tls:
        for i, target in enumerate(targets):
            last = i == len(targets) - 1
            close = "Connection: close\r\n" if last else ""
            tls.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{close}\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(1)
                assert chunk, "connection closed in a response header"
                head += chunk
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            body = b""
            while len(body) < length:
                chunk = tls.recv(length - len(body))
                assert chunk, "connection closed in a body"
                body += chunk
            bodies.append(body)
    return bodies


class Metrics(unittest.TestCase):
    def wait_closed(self, server):
        """Waits (bounded) for the server to have ended every connection."""
        ok = wait_until(lambda: value(server.scrape()[0], "ktls_open_connections") == 0, STEP_TIMEOUT, 0.05)
        self.assertTrue(ok, "ktls_open_connections did not return to 0")

    def test_format_help_type_and_other_paths(self):
        with MetricsServe() as server:
            samples, families = server.scrape()
            for name, kind in FAMILIES.items():
                self.assertIn(name, families, f"no samples of {name}")
                self.assertEqual(families[name][0], kind, name)
                self.assertTrue(families[name][1], f"{name} has no # HELP text")
            text = server.fetch()[2]
            for name, kind in FAMILIES.items():
                self.assertIn(f"\n# TYPE {name} {kind}\n", "\n" + text)
            # Every fixed label value is listed from the start, at zero.
            self.assertEqual(value(samples, "ktls_connections_total", tx="user", rx="user"), 0)
            self.assertEqual(value(samples, "ktls_offload_fallbacks_total", direction="rx", reason="no_rekey"), 0)
            self.assertEqual(value(samples, "ktls_handshake_failures_total", reason="timeout"), 0)
            self.assertEqual(server.fetch(path="/")[0], 404)
            self.assertEqual(server.fetch(method="POST")[0], 405)
            status, _, body = server.fetch(method="HEAD")
            self.assertEqual((status, body), (200, ""))

    def test_kernel_tls_stat_is_proc_net_tls_stat(self):
        with MetricsServe() as server:
            serve.get(server.port, "/small.txt")  # Some kTLS traffic first.
            self.wait_closed(server)
            before = read_tls_stat()
            samples, _ = server.scrape()
            after = read_tls_stat()
            self.assertEqual(before, after, "tls_stat moved during the scrape: nothing else should run")
            mirrored = {dict(labels)["counter"]: v for (name, labels), v in samples.items()
                        if name == "ktls_kernel_tls_stat"}
            self.assertEqual(mirrored, after)

    def test_offloaded_connections(self):
        with MetricsServe() as server:
            before, _ = server.scrape()
            stats_before = read_tls_stat()
            # Two connections, both directions in the kernel (--rx).
            bodies = keep_alive_gets(server.port, ["/small.txt", "/file.bin"])
            self.assertEqual(bodies, [SMALL, FILE])
            self.assertEqual(serve.get(server.port, "/missing")[0], 404)
            self.wait_closed(server)
            after, _ = server.scrape()
            delta = moved(before, after)
            stats = {name: read_tls_stat()[name] - stats_before[name] for name in stats_before}
            write = delta.pop(key("ktls_response_bytes_total", path="write"), 0)
            # Three headers and the small body, written; never the file.
            self.assertGreater(write, len(SMALL) + 3 * len("HTTP/1.1 200 OK\r\n\r\n"))
            self.assertLess(write, FILE_LEN)
            self.assertEqual(delta, {
                key("ktls_connections_total", tx="kernel", rx="kernel"): 2,
                key("ktls_requests_total", code="200"): 2,
                key("ktls_requests_total", code="404"): 1,
                key("ktls_response_bytes_total", path="sendfile"): FILE_LEN,
            })
            self.assertEqual((stats["TlsTxSw"], stats["TlsRxSw"]), (2, 2), "the kernel counts what the metrics say")
            self.assertEqual(stats["TlsDecryptError"], 0)

    def test_open_connections_gauge(self):
        with MetricsServe() as server:
            self.assertEqual(value(server.scrape()[0], "ktls_open_connections"), 0)
            tls = serve.tls_connect(server.port)
            tls.sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while SMALL not in reply:
                chunk = tls.recv(4096)
                self.assertTrue(chunk, "closed before the response")
                reply += chunk
            self.assertEqual(value(server.scrape()[0], "ktls_open_connections"), 1)
            tls.close()
            self.wait_closed(server)

    def test_no_rx_is_a_fallback_for_rx_only(self):
        with MetricsServe("--no-rx", rx=False) as server:
            before, _ = server.scrape()
            stats_before = read_tls_stat()
            self.assertEqual(serve.get(server.port, "/file.bin")[2], FILE)
            self.wait_closed(server)
            delta = moved(before, server.scrape()[0])
            delta.pop(key("ktls_response_bytes_total", path="write"))
            self.assertEqual(delta, {
                key("ktls_connections_total", tx="kernel", rx="user"): 1,
                key("ktls_offload_fallbacks_total", direction="rx", reason="disabled"): 1,
                key("ktls_requests_total", code="200"): 1,
                key("ktls_response_bytes_total", path="sendfile"): FILE_LEN,
            })
            after = read_tls_stat()
            self.assertEqual((after["TlsTxSw"] - stats_before["TlsTxSw"], after["TlsRxSw"] - stats_before["TlsRxSw"]),
                             (1, 0))

    def test_default_rx_follows_kernel_rekey(self):
        # Without --rx, RX goes to the kernel only where it can follow a
        # KeyUpdate (Linux 6.14); elsewhere that is a fallback, "no_rekey".
        rekey = tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 14)
        with MetricsServe(rx=False) as server:
            before, _ = server.scrape()
            self.assertEqual(serve.get(server.port, "/small.txt")[2], SMALL)
            self.wait_closed(server)
            delta = moved(before, server.scrape()[0])
            delta.pop(key("ktls_response_bytes_total", path="write"))
            expected = {key("ktls_requests_total", code="200"): 1}
            if rekey:
                expected[key("ktls_connections_total", tx="kernel", rx="kernel")] = 1
            else:
                expected[key("ktls_connections_total", tx="kernel", rx="user")] = 1
                expected[key("ktls_offload_fallbacks_total", direction="rx", reason="no_rekey")] = 1
            self.assertEqual(delta, expected)

    def test_cipher_the_kernel_cannot_carry(self):
        with MetricsServe("--ciphers", "ECDHE-ECDSA-AES128-SHA") as server:
            before, _ = server.scrape()
            stats_before = read_tls_stat()
            self.assertEqual(serve.get(server.port, "/file.bin", tls12_context("ECDHE-ECDSA-AES128-SHA"))[2], FILE)
            self.wait_closed(server)
            delta = moved(before, server.scrape()[0])
            write = delta.pop(key("ktls_response_bytes_total", path="write"))
            self.assertGreater(write, FILE_LEN, "the file goes through OpenSSL: written, not sendfile'd")
            self.assertEqual(delta, {
                key("ktls_connections_total", tx="user", rx="user"): 1,
                key("ktls_offload_fallbacks_total", direction="tx", reason="cipher"): 1,
                key("ktls_offload_fallbacks_total", direction="rx", reason="cipher"): 1,
                key("ktls_requests_total", code="200"): 1,
            })
            after = read_tls_stat()
            self.assertEqual((after["TlsTxSw"] - stats_before["TlsTxSw"], after["TlsRxSw"] - stats_before["TlsRxSw"]),
                             (0, 0))

    def test_failed_handshakes_by_reason(self):
        with MetricsServe() as server:
            before, _ = server.scrape()
            with self.assertRaises(ssl.SSLError):
                serve.get(server.port, "/small.txt", tls12_context("ECDHE-ECDSA-AES128-SHA"))  # No shared suite.
            with socket.create_connection((HOST, server.port), timeout=STEP_TIMEOUT) as plain:
                plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # Not TLS.
                plain.recv(4096)
            socket.create_connection((HOST, server.port), timeout=STEP_TIMEOUT).close()  # Leaves at once.
            ok = wait_until(lambda: sum(v for (name, _), v in server.scrape()[0].items()
                                        if name == "ktls_handshake_failures_total") >=
                            sum(v for (name, _), v in before.items() if name == "ktls_handshake_failures_total") + 3,
                            STEP_TIMEOUT, 0.05)
            self.assertTrue(ok, "three failed handshakes were not all counted")
            delta = moved(before, server.scrape()[0])
            self.assertEqual(delta, {
                key("ktls_handshake_failures_total", reason="protocol"): 2,
                key("ktls_handshake_failures_total", reason="truncated"): 1,
            })

    def test_key_update_received(self):
        openssl = find_openssl()
        self.assertTrue(openssl, "the openssl CLI is needed")
        with MetricsServe(rx=False) as server:
            before, _ = server.scrape()
            client = subprocess.Popen([openssl, "s_client", "-connect", f"{HOST}:{server.port}", "-tls1_3",
                                       "-servername", "localhost", "-no_ign_eof"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            err = ktls_interop.Pump(client.stderr)
            out = ktls_interop.Pump(client.stdout)
            err.start()
            out.start()
            try:
                self.assertTrue(wait_until(lambda: "CONNECTED" in out.text() and "---" in out.text(), STEP_TIMEOUT))
                client.stdin.write(b"k\n")
                client.stdin.flush()
                self.assertTrue(wait_until(lambda: "KEYUPDATE" in err.text() + out.text(), STEP_TIMEOUT),
                                err.text())
                client.stdin.write(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                client.stdin.flush()
                self.assertTrue(wait_until(lambda: SMALL.decode() in out.text(), STEP_TIMEOUT), out.text())
            finally:
                ktls_interop.stop_process(client, (out, err))
            self.wait_closed(server)
            delta = moved(before, server.scrape()[0])
            self.assertEqual(delta.get(key("ktls_key_updates_total", direction="received")), 1, delta)
            self.assertIsNone(delta.get(key("ktls_key_updates_total", direction="sent")), delta)


FILE = b""


def set_up(directory):
    global FILE
    serve.SITE = os.path.join(directory, "site")
    os.makedirs(serve.SITE)
    FILE = os.urandom(FILE_LEN)
    for name, data in (("small.txt", SMALL), ("file.bin", FILE)):
        with open(os.path.join(serve.SITE, name), "wb") as f:
            f.write(data)


def suite_main(module, prefix, set_up, as_root=False):
    """The main of a ktls-serve suite that scrapes /metrics (this one, the
    --privsep and the upgrade suites): `SCRIPT PATH/TO/ktls-serve
    [TEST_NAME_SUBSTRING...]`. Checks the kernel and prometheus_client (and
    root, for as_root), sets serve.SERVE, then runs module's tests; the exit
    status."""
    script = os.path.basename(module.__file__)
    if len(sys.argv) < 2:
        print(f"usage: {script} PATH/TO/ktls-serve [TEST_NAME_SUBSTRING...]", file=sys.stderr)
        return 2
    serve.SERVE = os.path.abspath(sys.argv[1])
    status = ktls_interop.check_kernel_tls()
    if status is not None:
        return status
    if text_string_to_metric_families is None:
        return ktls_interop.fail("needs prometheus_client (Debian: python3-prometheus-client; scripts/setup)")
    if as_root and os.geteuid() != 0:
        return ktls_interop.fail(f"{script} starts ktls-serve as root: run it as root (the UML guests do)")
    if not os.access(serve.SERVE, os.X_OK):
        return ktls_interop.fail(f"no ktls-serve at {serve.SERVE}")
    print(f"kernel {os.uname().release}; Python ssl: {ssl.OPENSSL_VERSION}", flush=True)
    return ktls_interop.run_tests(module, sys.argv[2:], prefix, set_up)


def main():
    return suite_main(sys.modules[__name__], "ktls-serve-metrics-", set_up)


if __name__ == "__main__":
    sys.exit(main())
