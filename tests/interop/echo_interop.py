#!/usr/bin/env python3
"""Interop tests: ktls-echo against real TLS peers, on a kernel with kTLS.

usage: echo_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]

Peers: `openssl s_client` and Python's ssl module against the ktls-echo
server; `openssl s_server` and Python's ssl module against the ktls-echo
client. Every test sends random data, checks it came back byte for byte
(SHA-256), and checks ktls-echo's key=value line for the connection:
version=TLSv1.3, the negotiated cipher, tx=kernel and rx=kernel (rx=user only
with --no-rx), the byte counts, and exactly how the connection ended. Also:
session tickets (0, 2, 5), client certificates, resumption, HelloRetryRequest,
each TLS 1.3 cipher suite, certificate verification, a FIN without
close_notify, a fatal alert after offload, data in the same TCP segment
as the client's Finished, and the server's limits: a connection beyond
--max-connections waits until one ends, an idle one is dropped after
--idle-timeout (not before, not long after; RX in the kernel or in
OpenSSL), as is one that does not read its echo, and a busy one is not.

/proc/net/tls_stat proves that the kernel did the work: in each test TlsTxSw
and TlsRxSw grow by the kernel directions the lines report plus what
ktls-echo's start-up probe installs on throwaway sockets (measured once, at
the start), TlsDecryptError does not move, and TlsCurrTxSw/TlsCurrRxSw are
back where they were once every process has exited.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import collections
import itertools
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
from ktls_interop import (HOST, STEP_TIMEOUT, PkiBase, exchange,  # noqa: E402
                          received, until_exit,
                          parse_line, raw_connection_lines as connection_lines, read_tls_stat, sha,
                          wait_until)
from ktls_badpeer import read_until_closed  # noqa: E402

PAYLOAD_LEN = 256 * 1024

# The limits tests: ktls-echo --idle-timeout, and how late after it the
# close may come (the wake-up, close_notify and the client's read, all on
# UML's one slow CPU shared with the other tests).
IDLE_TIMEOUT = 2.0
IDLE_LATE = 2.5
# How long a connection beyond --max-connections is watched not being
# served: its handshake needs the server's answer, which cannot come while
# the server holds it in the listen queue.
QUEUED_WATCH = 2.0

# OpenSSL's default TLS 1.3 list puts this first and both ends use the
# default unless a test says otherwise.
DEFAULT_SUITE = "TLS_AES_256_GCM_SHA384"
SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
          "TLS_AES_128_CCM_SHA256")
# Not in OpenSSL's default TLS 1.3 list: ktls-echo must be told to allow it.
SUITES_NEEDING_OPTION = {"TLS_AES_128_CCM_SHA256"}

ECHO = ""       # the ktls-echo binary (argv[1])
OPENSSL = ""    # the openssl command-line tool
PKI = None      # Pki: certificates for every test, made once
PROBE_COST = None  # Counters: what one ktls-echo start-up probe adds to tls_stat

Counters = collections.namedtuple("Counters", "tx rx")


# --- Certificates ------------------------------------------------------------

class Pki(PkiBase):
    """Two CAs and the leaf certificates the tests need, made with the
    openssl CLI in `directory` (P-256 keys: quick to make under UML)."""

    def __init__(self, directory):
        super().__init__(directory)
        self.ca = self.make_ca("ca", "ktls interop CA")
        self.other_ca = self.make_ca("other-ca", "ktls interop other CA")
        self.server = self.make_leaf("server", self.ca, "localhost", "serverAuth",
                                     "subjectAltName=DNS:localhost,IP:127.0.0.1")
        self.wrong_name = self.make_leaf("wrong-name", self.ca, "elsewhere.example", "serverAuth",
                                         "subjectAltName=DNS:elsewhere.example")
        self.client = self.make_leaf("client", self.ca, "ktls interop client", "clientAuth")
        self.stranger = self.make_leaf("stranger", self.other_ca, "ktls interop stranger", "clientAuth")
        # An OpenSSL configuration (OPENSSL_CONF) for ktls-echo that allows
        # only P-256 for key exchange: OpenSSL clients send their first key
        # share for X25519, so the server must answer HelloRetryRequest.
        self.p256_only_conf = self.path("p256-only.cnf")
        with open(self.p256_only_conf, "w") as f:
            f.write("openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
                    "[ssl_sect]\nsystem_default = system_default_sect\n"
                    "[system_default_sect]\nGroups = P-256\n")


class EchoServer(ktls_interop.ServerProcess):
    """ktls-echo as a server on 127.0.0.1 (a free port), for a `with` block.
    Its stderr is collected; connection_lines() waits for the per-connection
    lines."""

    def __init__(self, *args, identity=None, env=None):
        identity = identity or PKI.server
        # RX in the kernel on both kernels: without --rx, 6.1 (no rekey) keeps
        # RX in OpenSSL by default. --no-rx tests pass their own choice.
        rx = [] if "--no-rx" in args else ["--rx"]
        super().__init__([ECHO, "--listen", f"{HOST}:0", "--cert", identity.cert, "--key", identity.key, *rx, *args],
                         env=env)


class SServer(ktls_interop.SServer):
    """ktls_interop.SServer with this suite's openssl and server identity."""

    def __init__(self, *args, identity=None, send=b"", naccept=1):
        super().__init__(OPENSSL, identity or PKI.server, *args, send=send, naccept=naccept)


class PythonTlsServer(threading.Thread):
    """A TLS 1.3 server on Python's ssl module for one connection on
    127.0.0.1; subclasses serve(conn) it. An exception ends up in
    self.error, for the test to report."""

    def __init__(self):
        super().__init__(daemon=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(PKI.server.cert, PKI.server.key)
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(STEP_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.error = None

    def run(self):
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(STEP_TIMEOUT)
                self.serve(conn)
        except Exception as e:
            self.error = e
        finally:
            self.listener.close()

    def finish(self):
        """Waits for the connection to be over; False if it is not."""
        self.join(timeout=STEP_TIMEOUT)
        self.listener.close()
        return not self.is_alive()


class PythonEchoServer(PythonTlsServer):
    """Echoes everything. ending="close_notify": until the client's
    close_notify, then answers with its own. ending="fin": after echoing
    `expect_len` bytes, shuts TCP down (FIN) without a close_notify."""

    def __init__(self, num_tickets=2, ending="close_notify", expect_len=0):
        super().__init__()
        self.ctx.num_tickets = num_tickets
        self.ending = ending
        self.expect_len = expect_len
        self.received = bytearray()
        self.peer_end = None  # How the client ended: close_notify or truncated.
        self.cipher = None

    def serve(self, conn):
        with self.ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
            self.cipher = tls.cipher()[0]
            while True:
                try:
                    data = tls.recv(65536)
                except ssl.SSLEOFError:
                    self.peer_end = "truncated"
                    return
                if not data:
                    self.peer_end = "close_notify"
                    tls.unwrap()  # Our close_notify; the peer's is already in.
                    return
                self.received += data
                tls.sendall(data)
                if self.ending == "fin" and len(self.received) >= self.expect_len:
                    with socket.socket(fileno=os.dup(tls.fileno())) as raw:
                        raw.settimeout(STEP_TIMEOUT)
                        raw.shutdown(socket.SHUT_WR)  # FIN, no close_notify.
                        while raw.recv(65536):  # Swallow the rest, so no RST.
                            pass
                    return


class LateAlertServer(PythonTlsServer):
    """Requires a client certificate, and holds the client's second flight
    back until hold() returns before processing it (memory BIOs): its
    certificate_required alert then reaches a client that has finished its
    handshake and offloaded."""

    def __init__(self, hold):
        super().__init__()
        self.ctx.load_verify_locations(PKI.ca.cert)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.hold = hold
        self.handshake_error = None  # What our OpenSSL said (expected).
        self.alert_sent = threading.Event()

    def serve(self, conn):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(incoming, outgoing, server_side=True)
        flight_sent = False
        while True:
            try:
                tls.do_handshake()
                raise AssertionError("the handshake succeeded without a client certificate")
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                self.handshake_error = e
                conn.sendall(outgoing.read())  # The alert.
                conn.shutdown(socket.SHUT_WR)
                self.alert_sent.set()
                while conn.recv(65536):  # Until the client closes: no RST.
                    pass
                return
            if outgoing.pending:
                conn.sendall(outgoing.read())
                if not flight_sent:
                    flight_sent = True
                    self.hold()  # The client finishes and offloads meanwhile.
            data = conn.recv(65536)
            if not data:
                raise AssertionError("the client closed during the handshake")
            incoming.write(data)


def s_client_cmd(port, *args, quiet=True):
    """openssl s_client verifying our server; with quiet, stdout carries
    only the data from the server. -quiet implies -ign_eof (s_client would
    keep the connection open forever after its stdin ends), so -no_ign_eof
    after it: at end of stdin, s_client sends close_notify and exits."""
    cmd = [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
           "-CAfile", PKI.ca.cert, "-verify_hostname", "localhost", "-verify_return_error", "-nocommands"]
    if quiet:
        cmd += ["-quiet", "-no_ign_eof"]
    return cmd + list(args)


def echo_client_cmd(port, *args, ca=None):
    rx = [] if "--no-rx" in args else ["--rx"]  # As for the server.
    return [ECHO, "--connect", f"{HOST}:{port}", "--ca", (ca or PKI.ca).cert, *rx, *args]


def echo_help():
    return subprocess.run([ECHO, "--help"], capture_output=True, text=True, timeout=STEP_TIMEOUT).stdout


def require_ciphersuites_option(test, suite):
    if "--ciphersuites" not in echo_help():
        test.fail(f"ktls-echo has no --ciphersuites option, and {suite} is not in OpenSSL's default TLS 1.3 "
                  f"list, so ktls-echo cannot negotiate it with a real peer")


# --- Tests ---------------------------------------------------------------------

class InteropTest(unittest.TestCase):
    """Counts what the kernel must have done, and checks it at the end of
    each test (check_kernel_counters)."""

    def setUp(self):
        self.stat_before = read_tls_stat()
        self.num_probes = 0        # ktls-echo processes that surely probed
        self.num_maybe_probes = 0  # clients whose handshake failed: probe or not
        self.kernel_tx = 0
        self.kernel_rx = 0

    def echo_server(self, *args, **kwargs):
        self.num_probes += 1  # A server probes before it prints "listening".
        return EchoServer(*args, **kwargs)

    def check_line(self, fields, side, *, cipher=DEFAULT_SUITE, tx="kernel", rx="kernel", bytes_in=None,
                   bytes_out=None, end="close_notify"):
        """Asserts one ktls-echo connection line; `side` is "server" or
        "client" (a client also probes in its own process)."""
        if side == "client":
            if fields.get("version") == "-":
                self.num_maybe_probes += 1
            else:
                self.num_probes += 1
        self.kernel_tx += fields.get("tx") == "kernel"
        self.kernel_rx += fields.get("rx") == "kernel"
        expected = {"version": "TLSv1.3", "cipher": cipher, "tx": tx, "rx": rx,
                    "bytes_in": str(bytes_in), "bytes_out": str(bytes_out), "end": end}
        self.assertEqual({key: fields.get(key) for key in expected}, expected, f"ktls-echo {side} line: {fields}")

    def check_refused_line(self, fields, side, end_pattern):
        """A connection that ended in the handshake: nothing offloaded, no
        data, and an end=error:... matching end_pattern."""
        if side == "client":
            self.num_maybe_probes += 1
        got = {key: fields.get(key) for key in ("version", "tx", "rx", "bytes_in", "bytes_out")}
        self.assertEqual(got, {"version": "-", "tx": "user", "rx": "user", "bytes_in": "0", "bytes_out": "0"},
                         f"ktls-echo {side} line: {fields}")
        self.assertRegex(fields.get("end", ""), end_pattern, f"ktls-echo {side} line: {fields}")

    def check_kernel_counters(self):
        """Call after every ktls-echo process of the test has exited."""
        after = read_tls_stat()
        delta = {name: after[name] - self.stat_before.get(name, 0) for name in after}
        for name, directions, probe in (("TlsTxSw", self.kernel_tx, PROBE_COST.tx),
                                        ("TlsRxSw", self.kernel_rx, PROBE_COST.rx)):
            low = directions + self.num_probes * probe
            high = low + self.num_maybe_probes * probe
            self.assertTrue(low <= delta[name] <= high,
                            f"{name} grew by {delta[name]}, expected {low}..{high}: {directions} kernel "
                            f"direction(s) in the lines, {self.num_probes} (+{self.num_maybe_probes}) "
                            f"probe(s) of {probe} each")
        self.assertEqual(delta["TlsDecryptError"], 0, "the kernel failed to decrypt a record")
        for name in ("TlsCurrTxSw", "TlsCurrRxSw"):
            self.assertEqual(after[name], self.stat_before[name], f"{name}: kTLS sockets left open")

    def only_line(self, stderr):
        """The one connection line in a ktls-echo client's stderr, parsed."""
        lines = connection_lines(stderr)
        self.assertEqual(len(lines), 1, f"expected one connection line from the ktls-echo client:\n{stderr}")
        return parse_line(lines[0])

    def assert_echoed(self, got, sent, who):
        self.assertEqual((len(got), sha(got)), (len(sent), sha(sent)), f"{who}: data did not come back intact")


class OpenSslClientTest(InteropTest):
    """openssl s_client against the ktls-echo server."""

    def s_client_echo(self, server, *args, payload_len=PAYLOAD_LEN, finish="close_stdin"):
        payload = os.urandom(payload_len)
        run = exchange(s_client_cmd(server.port, *args), payload, received(len(payload)), finish)
        self.assert_echoed(run.stdout, payload, f"s_client {' '.join(args)} (stderr: {run.stderr})")
        if finish == "kill":
            self.assertEqual(run.returncode, -9, run.stderr)
        else:
            self.assertEqual(run.returncode, 0, f"s_client failed: {run.stderr}")
        return payload, run

    def tickets_test(self, num_tickets):
        msg_file = os.path.join(PKI.dir, f"msg-tickets-{num_tickets}.txt")
        with self.echo_server("--tickets", str(num_tickets)) as server:
            payload, _ = self.s_client_echo(server, "-msg", "-msgfile", msg_file)
            [line] = server.connection_lines(1)
        self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload))
        with open(msg_file) as f:
            received = [m for m in f if m.startswith("<<<") and m.rstrip().endswith("NewSessionTicket")]
        self.assertEqual(len(received), num_tickets, "NewSessionTicket messages s_client received")
        self.check_kernel_counters()

    def test_tickets_0(self):
        self.tickets_test(0)

    def test_tickets_2(self):
        self.tickets_test(2)

    def test_tickets_5(self):
        self.tickets_test(5)

    def test_hello_retry_request(self):
        msg_file = os.path.join(PKI.dir, "msg-s_client-hrr.txt")
        with self.echo_server(env={"OPENSSL_CONF": PKI.p256_only_conf}) as server:
            payload, _ = self.s_client_echo(server, "-msg", "-msgfile", msg_file)
            [line] = server.connection_lines(1)
        self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload))
        with open(msg_file) as f:
            hellos = [m for m in f if m.startswith(">>>") and m.rstrip().endswith("ClientHello")]
        self.assertEqual(len(hellos), 2, "ClientHellos s_client sent (2: there was a HelloRetryRequest)")
        self.check_kernel_counters()

    def test_no_rx(self):
        with self.echo_server("--no-rx") as server:
            payload, _ = self.s_client_echo(server)
            [line] = server.connection_lines(1)
        self.check_line(line, "server", rx="user", bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def test_rx_no_pad(self):
        # --rx-no-pad (TLS_RX_EXPECT_NO_PAD): on where the probe found the
        # kernel does it right (7.2), refused with the reason where not
        # (6.1). s_client's unpadded records and padded ones
        # (-record_padding: the kernel must decrypt those twice) echo right
        # either way.
        want = {"7.2": "yes", "6.1": "no"}.get(os.environ.get("KTLS_UML_KERNEL", ""))
        with self.echo_server("--rx-no-pad") as server:
            plain, _ = self.s_client_echo(server)
            padded, _ = self.s_client_echo(server, "-record_padding", "512")
            lines = server.connection_lines(2)
            verdict = re.search(r"^rx-no-pad: (yes|no)", server.err.text(), re.M)
        self.assertIsNotNone(verdict, "ktls-echo --rx-no-pad should say whether the kernel can do it")
        if want:
            self.assertEqual(verdict.group(1), want, verdict.group(0))
        for line, payload in zip(lines, (plain, padded)):
            self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload))
            self.assertEqual(line.get("rx_no_pad"), verdict.group(1), line)
        self.check_kernel_counters()

    def test_fin_without_close_notify_is_truncation(self):
        # s_client killed after the whole echo arrived: the kernel closes
        # its socket with a FIN and no close_notify.
        with self.echo_server() as server:
            payload, _ = self.s_client_echo(server, finish="kill")
            [line] = server.connection_lines(1)
        self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload), end="truncated")
        self.check_kernel_counters()

    def test_client_hello_cut_short_then_fin_is_answered_as_openssl_does(self):
        # A client that closes in the middle of its ClientHello: OpenSSL in
        # userspace (s_server) answers with a fatal decode_error alert and
        # closes; ktls's handshake must answer the same, and call it eof.
        cut = bytes([22, 3, 1, 0, 100, 1]) + bytes(9)
        decode_error = bytes([21, 3, 3, 0, 2, 2, 50])

        def send_then_fin(port):
            with socket.create_connection((HOST, port), timeout=STEP_TIMEOUT) as sock:
                sock.sendall(cut)
                sock.shutdown(socket.SHUT_WR)
                got, ending = read_until_closed(sock)
                return got.hex(), ending

        with SServer() as reference:
            self.assertEqual(send_then_fin(reference.port), (decode_error.hex(), "eof"), "openssl s_server's answer")
        with self.echo_server() as server:
            self.assertEqual(send_then_fin(server.port), (decode_error.hex(), "eof"), "ktls-echo's answer")
            [line] = server.connection_lines(1)
        self.check_refused_line(line, "server", r"^eof$")
        self.check_kernel_counters()

    def test_client_certificate(self):
        with self.echo_server("--client-ca", PKI.ca.cert) as server:
            payload, _ = self.s_client_echo(server, "-cert", PKI.client.cert, "-key", PKI.client.key)
            [line] = server.connection_lines(1)
        self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def refused_client_test(self, args, client_error, server_end):
        with self.echo_server("--client-ca", PKI.ca.cert) as server:
            # s_client sends nothing (so no data of its own is unread when the
            # server closes, which would make that close an RST that can
            # overtake the alert) and exits once it has the server's alert.
            run = exchange(s_client_cmd(server.port, *args), b"", until_exit)
            [line] = server.connection_lines(1)
        self.assertEqual(run.stdout, b"", "a refused client got data back")
        self.assertNotEqual(run.returncode, 0, "s_client should fail")
        self.assertRegex(run.stderr, client_error)
        self.check_refused_line(line, "server", server_end)
        self.check_kernel_counters()

    def test_client_without_certificate_is_refused(self):
        self.refused_client_test([], r"alert certificate required",
                                 r"^error:.*peer_did_not_return_a_certificate")

    def test_client_certificate_from_other_ca_is_refused(self):
        self.refused_client_test(["-cert", PKI.stranger.cert, "-key", PKI.stranger.key],
                                 r"alert unknown ca", r"^error:.*certificate_verify_failed")

    def test_resumption(self):
        sess = os.path.join(PKI.dir, "s_client-session.pem")
        payload = os.urandom(64 * 1024)
        with self.echo_server() as server:
            runs = []
            for args in (["-sess_out", sess], ["-sess_in", sess]):
                # Without -quiet, s_client prints "New, ..." or "Reused, ..."
                # on stdout, around the echoed data.
                run = exchange(s_client_cmd(server.port, *args, quiet=False), payload,
                               lambda out, err: payload in out)
                self.assertEqual(run.returncode, 0, f"s_client {args} failed: {run.stderr}")
                self.assertIn(payload, run.stdout, "echo did not come back intact")
                runs.append(run)
            lines = server.connection_lines(2)
        self.assertIn(b"New, TLSv1.3, Cipher is " + DEFAULT_SUITE.encode(), runs[0].stdout)
        self.assertIn(b"Reused, TLSv1.3, Cipher is " + DEFAULT_SUITE.encode(), runs[1].stdout)
        for line in lines:
            self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def cipher_test(self, suite):
        args = []
        if suite in SUITES_NEEDING_OPTION:
            require_ciphersuites_option(self, suite)
            args = ["--ciphersuites", suite]
        with self.echo_server(*args) as server:
            payload, _ = self.s_client_echo(server, "-ciphersuites", suite)
            [line] = server.connection_lines(1)
        self.check_line(line, "server", cipher=suite, bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def test_concurrent_clients(self):
        num_clients, payload_len = 8, 64 * 1024
        payloads = [os.urandom(payload_len) for _ in range(num_clients)]
        runs = [None] * num_clients
        with self.echo_server() as server:
            def client(i):
                runs[i] = exchange(s_client_cmd(server.port), payloads[i], received(len(payloads[i])))
            threads = [threading.Thread(target=client, args=(i,)) for i in range(num_clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=2 * STEP_TIMEOUT)
            lines = server.connection_lines(num_clients)
        for i, run in enumerate(runs):
            self.assertIsNotNone(run, f"client {i} did not finish")
            self.assert_echoed(run.stdout, payloads[i], f"client {i} ({run.stderr})")
        for line in lines:
            self.check_line(line, "server", bytes_in=payload_len, bytes_out=payload_len)
        self.check_kernel_counters()


class PythonClientTest(InteropTest):
    """Python's ssl module as the client of the ktls-echo server."""

    # Writes in these sizes, each read back before the next: records that
    # fill a TLS record exactly, or one byte less or more.
    CHUNKS = (1, 100, 16383, 16384, 16385, 65536)

    def context(self):
        ctx = ssl.create_default_context(cafile=PKI.ca.cert)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx

    def lockstep_echo(self, tls, payload):
        back = bytearray()
        offset = 0
        sizes = itertools.cycle(self.CHUNKS)
        while offset < len(payload):
            chunk = payload[offset:offset + next(sizes)]
            offset += len(chunk)
            tls.sendall(chunk)
            want = len(chunk)
            while want:
                data = tls.recv(min(want, 65536))
                self.assertTrue(data, "the server ended the connection before echoing everything")
                back += data
                want -= len(data)
        return bytes(back)

    def connect(self, ctx, port, session=None):
        sock = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
        return ctx.wrap_socket(sock, server_hostname="localhost", session=session)

    def test_echo(self):
        payload = os.urandom(PAYLOAD_LEN)
        with self.echo_server() as server:
            with self.connect(self.context(), server.port) as tls:
                self.assertEqual(tls.version(), "TLSv1.3")
                cipher = tls.cipher()[0]
                self.assert_echoed(self.lockstep_echo(tls, payload), payload, "Python client")
                # unwrap sends close_notify and returns only once the
                # server's close_notify (sent by the kernel) arrived.
                tls.unwrap()
            [line] = server.connection_lines(1)
        self.check_line(line, "server", cipher=cipher, bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def test_data_in_the_same_segment_as_finished(self):
        # Memory BIOs let the client put its Finished and its first
        # application data into one TCP send, so the data is already at the
        # server while its OpenSSL reads the Finished: whatever OpenSSL took
        # of it must be handed over, the rest left for the kernel, in order.
        payload = os.urandom(32 * 1024)
        with self.echo_server() as server:
            with socket.create_connection((HOST, server.port), timeout=STEP_TIMEOUT) as sock:
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = self.context().wrap_bio(incoming, outgoing, server_hostname="localhost")
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        sock.sendall(outgoing.read())
                        incoming.write(self.recv_some(sock))
                tls.write(payload)
                sock.sendall(outgoing.read())  # Finished + data, one send.
                back = bytearray()
                while len(back) < len(payload):
                    try:
                        back += tls.read(65536)
                    except ssl.SSLWantReadError:
                        incoming.write(self.recv_some(sock))
                self.assert_echoed(bytes(back), payload, "memory-BIO client")
                cipher = tls.cipher()[0]
                try:
                    tls.unwrap()
                except ssl.SSLWantReadError:
                    pass
                sock.sendall(outgoing.read())  # close_notify.
            [line] = server.connection_lines(1)
        self.check_line(line, "server", cipher=cipher, bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def recv_some(self, sock):
        data = sock.recv(65536)
        self.assertTrue(data, "the server closed the connection")
        return data

    def strict_connect(self, port):
        """A TLS connection on which recv returns b"" only for close_notify
        (a FIN without one raises SSLEOFError)."""
        sock = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
        return self.context().wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False)

    def echo_exactly(self, tls, data):
        tls.sendall(data)
        back = bytearray()
        while len(back) < len(data):
            got = tls.recv(65536)
            self.assertTrue(got, "the server ended the connection before echoing everything")
            back += got
        self.assert_echoed(bytes(back), data, "Python client")

    def test_connection_beyond_max_connections_waits_for_one_to_end(self):
        payload = os.urandom(16 * 1024)
        with self.echo_server("--max-connections", "1") as server:
            first = self.strict_connect(server.port)
            first_port = first.getsockname()[1]
            self.echo_exactly(first, payload)
            # The second client's TCP connection is accepted by the kernel
            # (listen queue); its TLS handshake cannot finish before
            # ktls-echo accepts it, which must wait for the first to end.
            second = {}
            second_done = threading.Event()

            def connect_second():
                try:
                    second["tls"] = self.strict_connect(server.port)
                except Exception as e:  # Reported below.
                    second["error"] = e
                second_done.set()

            threading.Thread(target=connect_second, daemon=True).start()
            self.assertFalse(second_done.wait(QUEUED_WATCH),
                             f"the second connection was served while the first was open: {second}")
            self.assertEqual(server.lines(), [], "no connection has ended yet")
            first.unwrap()  # close_notify both ways: the first connection ends.
            first.close()
            self.assertTrue(second_done.wait(STEP_TIMEOUT), "the second connection was not served after the first ended")
            self.assertNotIn("error", second)
            with second["tls"] as tls:
                cipher = tls.cipher()[0]
                self.echo_exactly(tls, payload)
                tls.unwrap()
            lines = server.connection_lines(2)
        self.assertEqual(lines[0]["peer"], f"{HOST}:{first_port}", "the first connection ended first")
        for line in lines:
            self.check_line(line, "server", cipher=cipher, bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def test_idle_connection_is_dropped_after_the_idle_timeout(self):
        self.idle_test()

    def test_idle_connection_with_rx_in_openssl_is_dropped_after_the_idle_timeout(self):
        self.idle_test("--no-rx")

    def idle_test(self, *args):
        payload = os.urandom(1000)
        rx = "user" if "--no-rx" in args else "kernel"
        with self.echo_server("--idle-timeout", str(int(IDLE_TIMEOUT * 1000)), *args) as server:
            with self.strict_connect(server.port) as tls:
                cipher = tls.cipher()[0]
                # ktls-echo's idle wait starts after it echoed this, so
                # after this moment.
                last_sent = time.monotonic()
                self.echo_exactly(tls, payload)
                tls.settimeout(IDLE_TIMEOUT + IDLE_LATE + STEP_TIMEOUT)
                self.assertEqual(tls.recv(65536), b"", "expected the server's close_notify, nothing else")
                idle = time.monotonic() - last_sent
            [line] = server.connection_lines(1)
        self.assertGreaterEqual(idle, IDLE_TIMEOUT, "dropped before the idle timeout")
        self.assertLess(idle, IDLE_TIMEOUT + IDLE_LATE, "dropped long after the idle timeout")
        self.check_line(line, "server", cipher=cipher, rx=rx, bytes_in=len(payload), bytes_out=len(payload),
                        end="idle_timeout")
        self.check_kernel_counters()

    def test_client_not_reading_its_echo_is_dropped_after_the_idle_timeout(self):
        # The client only sends: the server's writes fill the socket buffers
        # and stop making progress, and the idle timeout ends that too.
        with self.echo_server("--idle-timeout", str(int(IDLE_TIMEOUT * 1000))) as server:
            with self.strict_connect(server.port) as tls:
                cipher = tls.cipher()[0]
                chunk = os.urandom(64 * 1024)
                try:
                    for _ in range(16 * 1024):  # 1 GiB: far more than any socket buffers.
                        tls.sendall(chunk)
                    self.fail("the server took 1 GiB without the client reading")
                except OSError as e:  # Reset or closed once the server gives up.
                    self.assertNotIsInstance(e, TimeoutError, "the server never dropped the connection")
            [line] = server.connection_lines(1)
        self.assertLess(int(line["bytes_out"]), int(line["bytes_in"]), f"the server echoed everything: {line}")
        self.check_line(line, "server", cipher=cipher, bytes_in=int(line["bytes_in"]),
                        bytes_out=int(line["bytes_out"]), end="idle_timeout")
        self.check_kernel_counters()

    def test_connection_with_progress_outlives_the_idle_timeout(self):
        # A piece every quarter of the idle timeout, for twice the timeout:
        # the timeout counts time without progress, not the connection's age.
        pieces = [os.urandom(100) for _ in range(8)]
        with self.echo_server("--idle-timeout", str(int(IDLE_TIMEOUT * 1000))) as server:
            with self.strict_connect(server.port) as tls:
                cipher = tls.cipher()[0]
                for piece in pieces:
                    time.sleep(IDLE_TIMEOUT / 4)
                    self.echo_exactly(tls, piece)
                tls.unwrap()
            [line] = server.connection_lines(1)
        total = sum(map(len, pieces))
        self.check_line(line, "server", cipher=cipher, bytes_in=total, bytes_out=total)
        self.check_kernel_counters()

    def test_resumption(self):
        payload = os.urandom(64 * 1024)
        ctx = self.context()
        with self.echo_server() as server:
            session = None
            for attempt in range(2):
                with self.connect(ctx, server.port, session) as tls:
                    self.assertEqual(tls.session_reused, attempt == 1)
                    self.assert_echoed(self.lockstep_echo(tls, payload), payload, f"connection {attempt + 1}")
                    session = tls.session
                    tls.unwrap()
            lines = server.connection_lines(2)
        for line in lines:
            self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()


class OpenSslServerTest(InteropTest):
    """The ktls-echo client against openssl s_server, data both ways."""

    def both_ways(self, *s_server_args, client_args=(), cipher=DEFAULT_SUITE, rx="kernel"):
        to_server, to_client = os.urandom(PAYLOAD_LEN), os.urandom(PAYLOAD_LEN)
        with SServer(*s_server_args, send=to_client) as server:
            run = exchange(echo_client_cmd(server.port, *client_args), to_server,
                           lambda out, err: len(out) >= len(to_client) and server.out.size() >= len(to_server))
            server_status = server.wait()
            self.assertEqual(server_status, 0, f"s_server: {server.err.text()}")
            received = bytes(server.out.data)
        self.assert_echoed(received, to_server, f"s_server received ({run.stderr})")
        self.assert_echoed(run.stdout, to_client, f"ktls-echo client received ({run.stderr})")
        line = self.only_line(run.stderr)
        self.check_line(line, "client", cipher=cipher, rx=rx, bytes_in=len(to_client), bytes_out=len(to_server))
        self.assertEqual(run.returncode, 0, run.stderr)
        self.check_kernel_counters()

    def test_tickets_2(self):
        self.both_ways("-num_tickets", "2")

    def test_tickets_0(self):
        self.both_ways("-num_tickets", "0")

    def test_tickets_5(self):
        self.both_ways("-num_tickets", "5")

    def test_no_rx(self):
        self.both_ways(client_args=["--no-rx"], rx="user")

    def test_hello_retry_request(self):
        # The client's first key share is X25519: s_server asks again.
        msg_file = os.path.join(PKI.dir, "msg-s_server-hrr.txt")
        self.both_ways("-groups", "P-256", "-msg", "-msgfile", msg_file)
        with open(msg_file) as f:
            hellos = [m for m in f if m.startswith("<<<") and m.rstrip().endswith("ClientHello")]
        self.assertEqual(len(hellos), 2, "ClientHellos s_server received (2: there was a HelloRetryRequest)")

    def test_client_certificate(self):
        self.both_ways("-Verify", "1", "-CAfile", PKI.ca.cert, "-verify_return_error",
                       client_args=["--cert", PKI.client.cert, "--key", PKI.client.key])

    def cipher_test(self, suite):
        client_args = []
        if suite in SUITES_NEEDING_OPTION:
            require_ciphersuites_option(self, suite)
            client_args = ["--ciphersuites", suite]
        self.both_ways("-ciphersuites", suite, client_args=client_args, cipher=suite)

    def test_wrong_ca_fails_verification(self):
        with SServer() as server:
            run = exchange(echo_client_cmd(server.port, ca=PKI.other_ca), b"", until_exit)
            server.wait()
        self.assertEqual(run.returncode, 1, run.stderr)
        line = self.only_line(run.stderr)
        self.check_refused_line(line, "client", r"^error:.*verif.*unable_to_get_local_issuer_certificate")
        self.check_kernel_counters()

    def test_wrong_name_fails_verification(self):
        with SServer(identity=PKI.wrong_name) as server:
            run = exchange(echo_client_cmd(server.port), b"", until_exit)
            server.wait()
        self.assertEqual(run.returncode, 1, run.stderr)
        line = self.only_line(run.stderr)
        self.check_refused_line(line, "client", r"^error:.*verif.*IP_address_mismatch")
        self.check_kernel_counters()

    def test_missing_client_certificate_alert(self):
        # s_server demands a certificate the client does not have. In TLS 1.3
        # the client's handshake is over before the server sees that, so its
        # certificate_required alert comes after Connect returned: after
        # offload, or, when the alert and s_server's FIN beat the offload,
        # before it (the kernel then refuses the "tls" ULP on the closing
        # socket, ENOTCONN, and the connection stays in OpenSSL). Either way
        # the alert must be named. PythonServerTest pins the first case.
        with SServer("-Verify", "1", "-CAfile", PKI.ca.cert, "-verify_return_error") as server:
            # The client reads on until its stdin ends: keep that open until
            # s_server has sent its alert and exited.
            run = exchange(echo_client_cmd(server.port), b"", lambda out, err: server.proc.poll() is not None)
            server.wait()
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.stdout, b"")
        line = self.only_line(run.stderr)
        offload = "kernel" if line.get("tx") == "kernel" else "user"
        self.check_line(line, "client", tx=offload, rx=offload, bytes_in=0, bytes_out=0,
                        end="error:alert_certificate_required")
        self.check_kernel_counters()


class PythonServerTest(InteropTest):
    """The ktls-echo client against a Python ssl echo server."""

    def echo_test(self, num_tickets, ending):
        payload = os.urandom(PAYLOAD_LEN)
        server = PythonEchoServer(num_tickets=num_tickets, ending=ending, expect_len=len(payload))
        server.start()
        run = exchange(echo_client_cmd(server.port), payload, received(len(payload)))
        self.assertTrue(server.finish(), "the Python server did not finish")
        self.assertIsNone(server.error, f"Python server: {server.error!r}; client stderr: {run.stderr}")
        self.assert_echoed(bytes(server.received), payload, "Python server received")
        self.assert_echoed(run.stdout, payload, f"ktls-echo client received ({run.stderr})")
        line = self.only_line(run.stderr)
        self.check_line(line, "client", cipher=server.cipher, bytes_in=len(payload), bytes_out=len(payload),
                        end=ending if ending == "close_notify" else "truncated")
        if ending == "close_notify":
            self.assertEqual(server.peer_end, "close_notify")
            self.assertEqual(run.returncode, 0, run.stderr)
        else:
            self.assertEqual(run.returncode, 1, run.stderr)
        self.check_kernel_counters()

    def test_echo_close_notify(self):
        self.echo_test(2, "close_notify")

    def test_echo_no_tickets(self):
        self.echo_test(0, "close_notify")

    def test_server_fin_without_close_notify_is_truncation(self):
        self.echo_test(3, "fin")

    def test_alert_after_offload_is_named(self):
        # Hold the alert back until the client's RX is in the kernel: its
        # probe's RX installs, then its own.
        rx_offloaded = self.stat_before["TlsRxSw"] + PROBE_COST.rx + 1
        server = LateAlertServer(hold=lambda: wait_until(lambda: read_tls_stat()["TlsRxSw"] >= rx_offloaded, 5))
        server.start()
        run = exchange(echo_client_cmd(server.port), b"", lambda out, err: server.alert_sent.is_set())
        self.assertTrue(server.finish(), "the Python server did not finish")
        self.assertIsNone(server.error, f"Python server: {server.error!r}; client stderr: {run.stderr}")
        self.assertRegex(str(server.handshake_error), "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        self.assertEqual(run.returncode, 1, run.stderr)
        line = self.only_line(run.stderr)
        self.check_line(line, "client", bytes_in=0, bytes_out=0, end="error:alert_certificate_required")
        self.check_kernel_counters()


class ResumptionTest(InteropTest):
    """The ktls-echo client's --session-file, with RX in the kernel (--rx on
    6.1 too), so every TLS 1.3 ticket arrives after offload: the second
    connection resumes, against openssl s_server (1 and 2 tickets, a client
    certificate, TLS 1.2 by session ID and by ticket) and the ktls-echo
    server; and a session file passes between ktls-echo and openssl s_client
    both ways."""

    def session_path(self, name):
        path = os.path.join(PKI.dir, f"session-{name}-{os.getpid()}.pem")
        if os.path.exists(path):
            os.unlink(path)
        return path

    def connect(self, port, session_file, *args, server_out=None, expect_resumed, version="TLSv1.3"):
        """One ktls-echo client connection that sends a little and ends with
        close_notify; asserts its line (resumed as expected, both directions
        in the kernel, the session saved) and returns it."""
        payload = os.urandom(1000)
        if server_out is not None:  # s_server: it does not echo; wait until it has the bytes.
            want = server_out.size() + len(payload)
            done = lambda out, err: server_out.size() >= want  # noqa: E731
            expect_in = 0
        else:
            done = received(len(payload))
            expect_in = len(payload)
        run = exchange(echo_client_cmd(port, "--session-file", session_file, *args), payload, done)
        self.assertEqual(run.returncode, 0, run.stderr)
        line = self.only_line(run.stderr)
        self.num_probes += 1
        self.kernel_tx += line.get("tx") == "kernel"
        self.kernel_rx += line.get("rx") == "kernel"
        got = {key: line.get(key) for key in ("version", "resumed", "tx", "rx", "bytes_in", "bytes_out", "end",
                                              "session_saved")}
        self.assertEqual(got, {"version": version, "resumed": "yes" if expect_resumed else "no", "tx": "kernel",
                               "rx": "kernel", "bytes_in": str(expect_in), "bytes_out": str(len(payload)),
                               "end": "close_notify", "session_saved": "yes"}, f"ktls-echo client line: {line}")
        with open(session_file) as f:
            self.assertIn("-----BEGIN SSL SESSION PARAMETERS-----", f.read())
        return line

    def against_s_server(self, *s_server_args, client_args=(), version="TLSv1.3"):
        session_file = self.session_path("s_server")
        with SServer(*s_server_args, naccept=None) as server:
            for attempt in range(3):
                self.connect(server.port, session_file, *client_args, server_out=server.out,
                             expect_resumed=attempt > 0, version=version)
        self.check_kernel_counters()

    def test_s_server_one_ticket(self):
        self.against_s_server("-num_tickets", "1")

    def test_s_server_two_tickets(self):
        self.against_s_server("-num_tickets", "2")

    def test_s_server_client_certificate(self):
        self.against_s_server("-Verify", "1", "-CAfile", PKI.ca.cert, "-verify_return_error",
                              client_args=["--cert", PKI.client.cert, "--key", PKI.client.key])

    def test_s_server_tls12_session_id(self):
        self.against_s_server("-no_ticket", "-tls1_2", client_args=["--tls-max", "1.2"], version="TLSv1.2")

    def test_s_server_tls12_ticket(self):
        self.against_s_server("-tls1_2", client_args=["--tls-max", "1.2"], version="TLSv1.2")

    def test_ktls_echo_server(self):
        session_file = self.session_path("echo")
        with self.echo_server() as server:
            for attempt in range(2):
                self.connect(server.port, session_file, expect_resumed=attempt > 0)
            lines = server.connection_lines(2)
        self.assertEqual([line.get("resumed") for line in lines], ["no", "yes"], "the server's lines")
        for line in lines:
            self.kernel_tx += line.get("tx") == "kernel"
            self.kernel_rx += line.get("rx") == "kernel"
        self.check_kernel_counters()

    def s_client(self, port, *args):
        """openssl s_client (no SNI, verifying the IP address) sending one
        line and waiting for its echo, so the server's tickets have come
        before it exits; returns its stdout."""
        cmd = [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-noservername", "-CAfile", PKI.ca.cert,
               "-verify_ip", HOST, "-verify_return_error", "-nocommands", *args]
        run = exchange(cmd, b"resume-me\n", lambda out, err: b"resume-me" in out)
        self.assertEqual(run.returncode, 0, run.stderr)
        return run.stdout.decode(errors="replace")

    def test_session_file_shared_with_s_client_both_ways(self):
        from_ktls, from_s_client = self.session_path("to-s_client"), self.session_path("from-s_client")
        with self.echo_server() as server:
            # ktls-echo's saved ticket resumes in s_client...
            self.connect(server.port, from_ktls, expect_resumed=False)
            out = self.s_client(server.port, "-sess_in", from_ktls)
            self.assertIn("Reused, TLSv1.3", out, "s_client should resume with ktls-echo's session file")
            # ...and s_client's resumes in ktls-echo.
            out = self.s_client(server.port, "-sess_out", from_s_client)
            self.assertIn("New, TLSv1.3", out)
            self.connect(server.port, from_s_client, expect_resumed=True)
            lines = server.connection_lines(4)
        self.assertEqual([line.get("resumed") for line in lines], ["no", "yes", "no", "yes"], "the server's lines")
        for line in lines:
            self.kernel_tx += line.get("tx") == "kernel"
            self.kernel_rx += line.get("rx") == "kernel"
        self.check_kernel_counters()

    def test_bad_session_file_is_a_clear_error(self):
        session_file = self.session_path("bad")
        with open(session_file, "w") as f:
            f.write("not a session\n")
        run = exchange(echo_client_cmd(9, "--session-file", session_file), b"", until_exit)
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertIn("no PEM SSL session", run.stderr)
        self.check_kernel_counters()


def add_cipher_tests():
    for suite in SUITES:
        for cls in (OpenSslClientTest, OpenSslServerTest):
            setattr(cls, f"test_cipher_{suite}", lambda self, s=suite: self.cipher_test(s))


add_cipher_tests()


# --- Main ----------------------------------------------------------------------

def measure_probe_cost():
    """What one ktls-echo start-up (its kernel probe) adds to tls_stat."""
    added = ktls_interop.tls_stat_added(EchoServer)
    return Counters(added["TlsTxSw"], added["TlsRxSw"])


def main():
    return ktls_interop.echo_suite_main(sys.modules[__name__], "ktls-interop-", set_up)


def set_up(directory):
    global PKI, PROBE_COST
    PKI = Pki(directory)
    PROBE_COST = measure_probe_cost()
    print(f"ktls-echo's start-up probe: TlsTxSw +{PROBE_COST.tx}, TlsRxSw +{PROBE_COST.rx}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
