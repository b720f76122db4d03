#!/usr/bin/env python3
"""Conformance, client side: for the same bytes on the wire, a ktls client
answers as OpenSSL does in userspace.

usage: conformance_client_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]

A hostile TLS server (Python's ssl for the handshake, then records it seals
itself under its live key, as conformance_interop.py's hostile client does)
sends each case below after the handshake, then one record of data and
close_notify. It sends the same bytes to three clients:

- the reference, `openssl s_client` (OpenSSL in userspace);
- the ktls-echo client with RX in the kernel (--connect --rx);
- the ktls-echo client with RX in OpenSSL (--connect --no-rx).

The server opens every record the client sends (the client's key from the
key log), so it sees the exact alert. Each case asserts one outcome for each
client: a fatal alert, or the connection going on (the data record reaches
the client's output, and it answers close_notify). Every ktls-echo
connection was offloaded (its line: tx=kernel, rx as asked).

Exit status as conformance_interop.py's.
"""
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
from ktls_interop import (HOST, STEP_TIMEOUT, Pump, parse_line, raw_connection_lines, stop_process,  # noqa: E402
                          wait_for_exit)
from ktls_badpeer import (CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, HelloWatcher,  # noqa: E402
                          RecordSplitter, Tls13Protection, handshake_message, read_keylog, tls12_protections)
from conformance_interop import AFTER, ALERTS, GOES_ON, POLL_SECONDS, Pki, fatal  # noqa: E402

ECHO = ""      # the ktls-echo binary (argv[1])
OPENSSL = ""   # the openssl command-line tool
PKI = None
TMP = ""

# A NewSessionTicket (RFC 8446 4.6.1): lifetime, age_add, a 1-byte nonce,
# a 32-byte ticket, no extensions.
TICKET = handshake_message(4, (7200).to_bytes(4, "big") + bytes(4) + b"\x01\x00" + (32).to_bytes(2, "big") +
                           b"T" * 32 + b"\x00\x00")


class HostileServer:
    """Accepts clients on 127.0.0.1, shakes hands with Python's ssl, and
    hands back a Connection that seals its own records."""

    def __init__(self, version):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = self.ctx.maximum_version = version
        self.ctx.load_cert_chain(PKI.server.cert, PKI.server.key)
        self.ctx.num_tickets = 0
        self.tls12 = version == ssl.TLSVersion.TLSv1_2
        if self.tls12:
            self.ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]

    def close(self):
        self.listener.close()

    def accept(self):
        self.listener.settimeout(STEP_TIMEOUT)
        sock, _ = self.listener.accept()
        sock.settimeout(STEP_TIMEOUT)
        fd, keylog = tempfile.mkstemp(dir=TMP)
        os.close(fd)
        self.ctx.keylog_filename = keylog
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(incoming, outgoing, server_side=True)
        watcher = HelloWatcher()  # Our ServerHello: its random, for TLS 1.2's keys.
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(watcher.feed(outgoing.read()))
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the client left in the handshake")
                incoming.write(data)
        sock.sendall(watcher.feed(outgoing.read()))
        keys = read_keylog(keylog)
        if self.tls12:
            [(client_random, master)] = list(keys["CLIENT_RANDOM"].items())
            client_write, server_write = tls12_protections(watcher.hello.suite, master, client_random,
                                                           watcher.hello.random)
            # Sequence 0 in each direction was a Finished.
            return Connection(sock, server_write, client_write, 1)
        suite = tls.cipher()[0]
        [server_secret] = keys["SERVER_TRAFFIC_SECRET_0"].values()
        [client_secret] = keys["CLIENT_TRAFFIC_SECRET_0"].values()
        return Connection(sock, Tls13Protection(suite, server_secret), Tls13Protection(suite, client_secret), 0)


class Connection:
    def __init__(self, sock, write, read, first_seq):
        self.sock, self.write, self.read = sock, write, read
        self.next_seq = self.read_seq = first_seq

    def seal(self, content_type, payload):
        record = self.write.seal(self.next_seq, content_type, payload)
        self.next_seq += 1
        return record

    def read_alerts(self, seen, served):
        """Appends the client's alerts to seen until its first fatal one,
        its close, or served() (polled while nothing comes). Returns
        whether the connection is over."""
        splitter = RecordSplitter()
        self.sock.settimeout(POLL_SECONDS)
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                seen.append("reset")
                return True
            except socket.timeout:
                if served():
                    return False
                continue
            if not chunk:
                return True
            for record in splitter.feed(chunk):
                content_type, payload = self.read.open(self.read_seq, record)
                self.read_seq += 1
                if content_type == CONTENT_ALERT:
                    level, name = payload[0], ALERTS.get(payload[1], str(payload[1]))
                    seen.append(f"{'fatal' if level == 2 else 'warning'} {name}")
                    if level == 2:
                        return True
        seen.append("timeout")
        return True


def data_inside_a_ticket(c):
    return (c.seal(CONTENT_HANDSHAKE, TICKET[:4]) + c.seal(CONTENT_APPLICATION_DATA, b"mid") +
            c.seal(CONTENT_HANDSHAKE, TICKET[4:]))


def user_canceled_inside_a_ticket(c):
    return c.seal(CONTENT_HANDSHAKE, TICKET[:4]) + c.seal(CONTENT_ALERT, b"\x01\x5a") + c.seal(CONTENT_HANDSHAKE, TICKET[4:])


TLS13_CASES = {
    # RFC 8446 5.1: no other record type inside a handshake message.
    "data_inside_a_session_ticket": (data_inside_a_ticket, fatal("unexpected_message")),
    "user_canceled_inside_a_session_ticket": (user_canceled_inside_a_ticket, GOES_ON),
}
TLS12_CASES = {
    # OpenSSL refuses a HelloRequest with a body on its header.
    "hello_request_with_a_body": (lambda c: c.seal(CONTENT_HANDSHAKE, b"\x00\x00\x00\x01\x00"),
                                  fatal("illegal_parameter")),
}


class ClientConformanceTest(unittest.TestCase):
    VERSION = ssl.TLSVersion.TLSv1_3
    FLAG = "-tls1_3"
    TLS_MAX = "1.3"

    @classmethod
    def setUpClass(cls):
        cls.server = HostileServer(cls.VERSION)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def clients(self):
        target = f"{HOST}:{self.server.port}"
        return {
            "openssl s_client": [OPENSSL, "s_client", "-connect", target, "-CAfile", PKI.ca.cert, "-quiet",
                                 self.FLAG],
            "ktls-echo --rx": [ECHO, "--connect", target, "--ca", PKI.ca.cert, "--rx", "--tls-max", self.TLS_MAX],
            "ktls-echo --no-rx": [ECHO, "--connect", target, "--ca", PKI.ca.cert, "--no-rx", "--tls-max",
                                  self.TLS_MAX],
        }

    def run_case(self, build, expect):
        outcomes = {}
        for name, cmd in self.clients().items():
            # stdin stays open until the data was served: s_client and
            # ktls-echo end only on what the server sends until then.
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = Pump(proc.stdout), Pump(proc.stderr)
            out.start()
            err.start()
            alerts = []
            try:
                conn = self.server.accept()
                conn.sock.sendall(build(conn) + conn.seal(CONTENT_APPLICATION_DATA, AFTER))
                if not conn.read_alerts(alerts, lambda: AFTER in out.bytes()):
                    # Served: now close_notify both ways.
                    conn.sock.sendall(conn.seal(CONTENT_ALERT, b"\x01\x00"))
                    proc.stdin.close()
                    conn.read_alerts(alerts, lambda: False)
                conn.sock.close()
                proc.stdin.close()
                self.assertIsNotNone(wait_for_exit(proc, (out, err)), f"{name} did not exit")
            finally:
                stop_process(proc, (out, err))
            fatal_alerts = [a for a in alerts if a.startswith("fatal")]
            if fatal_alerts:
                outcomes[name] = fatal_alerts[0]
            elif AFTER in out.bytes() and alerts == ["warning close_notify"]:
                outcomes[name] = GOES_ON
            else:
                outcomes[name] = f"alerts {alerts}, {out.bytes()!r} printed"
            if name.startswith("ktls-echo"):
                lines = raw_connection_lines(err.text())
                self.assertEqual(len(lines), 1, f"{name}: {err.text()}")
                line = parse_line(lines[0])
                rx = "kernel" if "--rx" in cmd else "user"
                self.assertEqual((line.get("tx"), line.get("rx")), ("kernel", rx), f"{name}: {line}")
        self.assertEqual(outcomes, {name: expect for name in outcomes})


class Tls13ClientTest(ClientConformanceTest):
    pass


class Tls12ClientTest(ClientConformanceTest):
    VERSION = ssl.TLSVersion.TLSv1_2
    FLAG = "-tls1_2"
    TLS_MAX = "1.2"


for cls, cases in ((Tls13ClientTest, TLS13_CASES), (Tls12ClientTest, TLS12_CASES)):
    for case_name, (build, expect) in cases.items():
        setattr(cls, f"test_{case_name}", lambda self, build=build, expect=expect: self.run_case(build, expect))


def set_up(directory):
    global PKI, TMP
    PKI = Pki(directory)
    TMP = directory


def main():
    return ktls_interop.echo_suite_main(sys.modules[__name__], "ktls-conformance-client-", set_up,
                                        classes=(Tls13ClientTest, Tls12ClientTest))


if __name__ == "__main__":
    sys.exit(main())
