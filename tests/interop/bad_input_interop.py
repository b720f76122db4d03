#!/usr/bin/env python3
"""Bad input on a real kTLS kernel: the ktls-echo server against clients
that misbehave, each case asserting what the server does and that it goes
on serving everyone else.

usage: bad_input_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]

The bad clients (tests/interop/ktls_badpeer.py): random bytes instead of a
ClientHello; plain text after the handshake; a record with one bit flipped
by a relay between the client (Python's ssl module, or openssl s_client)
and the server; a record longer than TLS allows; a record cut short, then
a FIN; a client that stalls in the handshake (silent, or after its
ClientHello) and one that trickles its ClientHello in a byte at a time; a
large upload whose echo is never read, from a client that then vanishes;
an encrypted handshake message after the handshake (ClientHello, Finished,
a NewSessionTicket from the client). KernelRxTest runs ktls-echo with RX in
the kernel on both kernels (--rx); OpenSslRxTest repeats the record cases
with RX in OpenSSL (--no-rx), where OpenSSL finds the bad record and ktls
sends its alert through the kernel's TX.

Every test starts ktls-echo and connects a good client that echoes before
the bad client acts and after; then a new client echoes too. It checks:

- the bad connection's line in ktls-echo's log: where each direction ran,
  the bytes echoed (nothing of a bad record), and exactly how it ended, with
  the alert named;
- what the bad client saw: the alert (decrypted by its own OpenSSL), or how
  the connection closed;
- that both good clients were echoed intact with tx=kernel, rx as asked,
  and a close_notify each way, and that ktls-echo is still running;
- /proc/net/tls_stat, from when ktls-echo listens (after its start-up
  probe): TlsTxSw and TlsRxSw grew by exactly the kernel directions in the
  lines, TlsDecryptError by the records the kernel failed to decrypt (one,
  the flipped bit with RX in the kernel), no other counter moved, and
  TlsCurrTxSw/TlsCurrRxSw are back where they were once ktls-echo exited.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import os
import socket
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
from ktls_interop import (HOST, STEP_TIMEOUT, PkiBase, Pump, ServerProcess, read_tls_stat, sha,  # noqa: E402
                          stop_process, wait_until)
from ktls_badpeer import (CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, HANDSHAKE_CLIENT_HELLO,  # noqa: E402
                          HANDSHAKE_FINISHED, HANDSHAKE_NEW_SESSION_TICKET, MAX_CIPHERTEXT_LEN, FlipBit, Relay,
                          TlsClient, handshake_message, non_tls_bytes, read_until_closed, record_header)

ECHO = ""      # the ktls-echo binary (argv[1])
OPENSSL = ""   # the openssl command-line tool
PKI = None     # the CA and the server's certificate
TMP = ""       # key logs

# The good clients' data: one record each way per echo.
GOOD_LEN = 4096
# Handshake timeouts short enough to wait for. While clients stall for the
# first, two good clients must be served in full: many times over, under UML.
STALL_TIMEOUT_MS = 3000
TRICKLE_TIMEOUT_MS = 1000

# Gauges of the kTLS sockets open now: back where they were at the end. Every
# other counter must grow by exactly what finish() predicts (mostly 0).
CURRENT = ("TlsCurrTxSw", "TlsCurrRxSw")


class Pki(PkiBase):
    def __init__(self, directory):
        super().__init__(directory)
        self.ca = self.make_ca("ca", "ktls bad input CA")
        self.server = self.make_leaf("server", self.ca, "localhost", "serverAuth",
                                     "subjectAltName=DNS:localhost,IP:127.0.0.1")


class BadInputTest(unittest.TestCase):
    """ktls-echo with one good client connected; subclasses are the cases."""

    RX = "--rx"  # Where ktls-echo puts RX: --rx (the kernel) or --no-rx (OpenSSL).

    def start_server(self, *args):
        self.server = ServerProcess([ECHO, "--listen", f"{HOST}:0", "--cert", PKI.server.cert,
                                     "--key", PKI.server.key, self.RX, *args])
        self.server.__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.stat_before = read_tls_stat()
        self.decrypt_errors = 0  # Records the kernel must have failed to decrypt.
        self.good = self.good_client()

    def client(self, port=None):
        return TlsClient(port or self.server.port, PKI.ca.cert, TMP)

    def good_client(self):
        """A client that completed its handshake and echoed GOOD_LEN bytes."""
        good = self.client().handshake()
        self.addCleanup(good.close)
        data = os.urandom(GOOD_LEN)
        self.assert_same(good.echo(data), data, "a good client's echo")
        return good

    def assert_same(self, got, want, what):
        self.assertEqual((len(got), sha(got)), (len(want), sha(want)), f"{what} did not come back intact")

    def finish_good_clients(self):
        """The good client echoes once more and closes; then a new client
        does the same. Both must be served fully, offloaded both ways."""
        for name, client in (("the client connected all along", self.good), ("a new client", None)):
            client = client or self.good_client()
            data = os.urandom(GOOD_LEN)
            self.assert_same(client.echo(data), data, name)
            client.close_notify()
            rest, ending = client.read_to_end()
            self.assertEqual((rest, ending), (b"", "close_notify"), f"{name}: how the server ended it")
            line = self.server.line_for(client.port)
            expected = {"version": "TLSv1.3", "tx": "kernel", "rx": "kernel" if self.RX == "--rx" else "user",
                        "bytes_in": str(2 * GOOD_LEN), "bytes_out": str(2 * GOOD_LEN), "end": "close_notify"}
            self.assertEqual({key: line.get(key) for key in expected}, expected, f"{name}: server line {line}")

    def check_line(self, line, end_pattern, *, offloaded=True, bytes_echoed=0):
        """The bad connection's server line: offloaded (tx=kernel, and rx as
        the server was told) or refused in the handshake, bytes_echoed in and
        out, and an end matching end_pattern."""
        if offloaded:
            expected = {"version": "TLSv1.3", "tx": "kernel", "rx": "kernel" if self.RX == "--rx" else "user"}
        else:
            expected = {"version": "-", "tx": "user", "rx": "user"}
        expected.update(bytes_in=str(bytes_echoed), bytes_out=str(bytes_echoed))
        self.assertEqual({key: line.get(key) for key in expected}, expected, f"bad client's server line: {line}")
        self.assertRegex(line.get("end", ""), end_pattern, f"bad client's server line: {line}")

    def finish(self):
        """After the bad client: the good clients, then the counters."""
        self.finish_good_clients()
        self.assertTrue(self.server.running(), f"ktls-echo exited: {self.server.proc.poll()}")
        lines = self.server.lines()
        self.server.__exit__(None, None, None)
        after = read_tls_stat()
        delta = {name: after[name] - self.stat_before.get(name, 0) for name in after if name not in CURRENT}
        expected = {name: 0 for name in delta}
        expected["TlsTxSw"] = sum(line.get("tx") == "kernel" for line in lines)
        expected["TlsRxSw"] = sum(line.get("rx") == "kernel" for line in lines)
        expected["TlsDecryptError"] = self.decrypt_errors
        self.assertEqual(delta, expected, "tls_stat growth over the test (TlsTxSw/TlsRxSw: the kernel directions "
                                          f"in the server's lines {lines})")
        for name in CURRENT:
            self.assertEqual(after[name], self.stat_before[name], f"{name}: kTLS sockets left open")

    def offloaded_bad_client(self, port=None):
        """A client past its handshake whose first echo proves the server
        has offloaded (the server echoes only after offload): it may now
        misbehave. Returns it and the data echoed."""
        bad = self.client(port).handshake()
        self.addCleanup(bad.close)
        data = os.urandom(1000)
        self.assert_same(bad.echo(data), data, "the bad client's first echo")
        return bad, data


class KernelRxTest(BadInputTest):
    """RX in the kernel on both kernels (--rx)."""

    def test_random_bytes_instead_of_client_hello(self):
        self.start_server()
        with socket.create_connection((HOST, self.server.port), timeout=STEP_TIMEOUT) as sock:
            sock.sendall(non_tls_bytes(1024))
            got, ending = read_until_closed(sock)
            port = sock.getsockname()[1]
        # OpenSSL sends no alert for a first record that is not TLS at all.
        self.assertEqual((got, ending), (b"", "eof"), "the server should just close")
        self.check_line(self.server.line_for(port), r"^error:protocol:TLS_handshake:.*wrong_version_number",
                        offloaded=False)
        self.finish()

    def test_garbage_after_offload(self):
        self.start_server()
        bad, echoed = self.offloaded_bad_client()
        # Plain HTTP where a record should be: 'E' 'T' is no record version.
        bad.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        got, ending = bad.read_to_end()
        # OpenSSL's answer to a record of a wrong version, and ktls's.
        self.assertEqual((got, ending), (b"", "alert:protocol_version"))
        self.check_line(self.server.line_for(bad.port), r"^error:protocol:.*\(protocol_version\)$",
                        bytes_echoed=len(echoed))
        self.finish()

    def flipped_bit_test(self, client):
        """client(relay_port, first, second) sends `first`, reads its echo,
        sends `second` (the relay flips a bit in it), and returns what it
        received after first's echo and how the connection ended."""
        self.start_server()
        first, second = os.urandom(1000), os.urandom(1000)
        # Application-data record 0 is the client's Finished, 1 its first.
        with Relay(self.server.port, lambda: FlipBit(index=2)) as relay:
            got, ending = client(relay.port, first, second)
            self.assertTrue(relay.wait_for_clients(1))
            flipper = relay.tamperers[0]
            self.assertTrue(flipper.flipped.is_set(), "the relay did not see the second record")
            self.assertEqual(ending, "alert:bad_record_mac", "what the bad client got")
            self.assertEqual(got, b"", "nothing may come back after the corrupted record")
            line = self.server.line_for(relay.upstream_ports[0])
        self.check_line(line, r"^error:protocol:.*\(bad_record_mac\)$", bytes_echoed=len(first))
        self.decrypt_errors = 1 if self.RX == "--rx" else 0
        self.finish()

    def test_flipped_bit_from_python_client(self):
        def client(port, first, second):
            bad = self.client(port).handshake()
            self.addCleanup(bad.close)
            self.assert_same(bad.echo(first), first, "the echo before the corrupted record")
            bad.send(second)
            return bad.read_to_end()
        self.flipped_bit_test(client)

    def test_flipped_bit_from_s_client(self):
        def client(port, first, second):
            cmd = [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
                   "-CAfile", PKI.ca.cert, "-verify_return_error", "-quiet", "-no_ign_eof", "-nocommands"]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = Pump(proc.stdout), Pump(proc.stderr)
            try:
                out.start()
                err.start()
                # s_client reads its stdin a write at a time: one record each.
                proc.stdin.write(first)
                proc.stdin.flush()
                self.assertTrue(wait_until(lambda: out.size() >= len(first), STEP_TIMEOUT),
                                f"s_client got no echo: {err.text()}")
                proc.stdin.write(second)
                proc.stdin.flush()
                status = proc.wait(timeout=STEP_TIMEOUT)
            finally:
                stop_process(proc, (out, err))
            self.assertNotEqual(status, 0, "s_client should fail")
            self.assertEqual(out.bytes()[:len(first)], first)
            alert = "alert:bad_record_mac" if "alert bad record mac" in err.text() else err.text()
            return out.bytes()[len(first):], alert
        self.flipped_bit_test(client)

    def test_oversized_record(self):
        self.start_server()
        bad, echoed = self.offloaded_bad_client()
        # A header announcing more than TLS 1.3 allows (2^14 + 256), and
        # some of the body.
        bad.send_raw(record_header(CONTENT_APPLICATION_DATA, MAX_CIPHERTEXT_LEN + 1) + os.urandom(4096))
        got, ending = bad.read_to_end()
        self.assertEqual((got, ending), (b"", "alert:record_overflow"))
        self.check_line(self.server.line_for(bad.port), r"^error:protocol:.*\(record_overflow\)$",
                        bytes_echoed=len(echoed))
        self.finish()

    def test_record_cut_short_then_fin(self):
        self.start_server()
        bad, echoed = self.offloaded_bad_client()
        record = bad.records_of(os.urandom(1000))
        bad.send_raw(record[:len(record) // 2])
        bad.sock.shutdown(socket.SHUT_WR)
        got, ending = bad.read_to_end()
        # As OpenSSL does, the server answers the FIN without close_notify
        # with decode_error, then closes; with RX in the kernel the half
        # record is still unread in its socket, so the close is a reset,
        # which can overtake the alert.
        self.assertEqual(got, b"")
        self.assertIn(ending, ("alert:decode_error", "reset") if self.RX == "--rx" else ("alert:decode_error",))
        self.check_line(self.server.line_for(bad.port), r"^truncated$", bytes_echoed=len(echoed))
        self.finish()

    def test_unexpected_handshake_messages_after_offload(self):
        for name, message in (
                ("ClientHello", handshake_message(HANDSHAKE_CLIENT_HELLO, os.urandom(200))),
                ("Finished", handshake_message(HANDSHAKE_FINISHED, os.urandom(32))),
                ("NewSessionTicket from a client",
                 handshake_message(HANDSHAKE_NEW_SESSION_TICKET, bytes(4) + bytes(4) + b"\x00" + b"\x00\x01x" +
                                   b"\x00\x00"))):
            with self.subTest(name):
                self.start_server()
                bad, echoed = self.offloaded_bad_client()
                bad.send_raw(bad.seal(CONTENT_HANDSHAKE, message))
                got, ending = bad.read_to_end()
                self.assertEqual((got, ending), (b"", "alert:unexpected_message"))
                self.check_line(self.server.line_for(bad.port), r"^error:protocol:.*\(unexpected_message\)$",
                                bytes_echoed=len(echoed))
                self.finish()

    def test_vanishing_client_during_a_large_echo(self):
        self.start_server()
        bad, _ = self.offloaded_bad_client()
        # Upload without reading the echo until the server stops reading
        # (its echo is stuck), then vanish: closing a socket with unread
        # data resets the connection.
        bad.sock.settimeout(0.5)
        uploaded = 0
        try:
            while uploaded < 256 << 20:
                bad.send(os.urandom(1 << 16))
                uploaded += 1 << 16
        except socket.timeout:
            pass
        bad.close()
        # The write in progress fails, or (when kTLS's sendmsg took the
        # reset's error with the bytes) the next read: a reset either way.
        line = self.server.line_for(bad.port)
        self.assertRegex(line.get("end", ""), r"^error:io:.*\((Broken_pipe|Connection_reset_by_peer)\)$", line)
        self.assertEqual((line.get("tx"), line.get("rx")), ("kernel", "kernel"), line)
        self.assertGreater(int(line["bytes_in"]), 1 << 20, f"the upload should have been large: {line}")
        self.assertLessEqual(int(line["bytes_out"]), int(line["bytes_in"]), line)
        self.finish()

    def test_stalled_handshakes_are_dropped_after_the_timeout(self):
        self.start_server("--handshake-timeout-ms", str(STALL_TIMEOUT_MS))
        silent = socket.create_connection((HOST, self.server.port), timeout=STEP_TIMEOUT)
        self.addCleanup(silent.close)
        stalled = self.client()
        self.addCleanup(stalled.close)
        stalled.start_handshake()  # The ClientHello, then nothing.
        stalled_ports = [silent.getsockname()[1], stalled.port]
        # Meanwhile others are served: the accept loop is not blocked.
        self.finish_good_clients()
        self.assertEqual([line for line in self.server.lines() if line["peer"] in
                          [f"{HOST}:{port}" for port in stalled_ports]], [],
                         "the stalled clients were dropped before the good ones were served")
        for sock in (silent, stalled.sock):
            _, ending = read_until_closed(sock)
            self.assertEqual(ending, "eof", "the server should close the stalled connection")
        for port in stalled_ports:
            self.check_line(self.server.line_for(port), r"^error:io:TLS_handshake_timed_out", offloaded=False)
        self.good = self.good_client()  # finish() serves a good client again.
        self.finish()

    def test_trickled_handshake_is_dropped_at_the_deadline(self):
        # One byte of the ClientHello at a time, each well within the
        # timeout: the handshake as a whole must still end at it.
        self.start_server("--handshake-timeout-ms", str(TRICKLE_TIMEOUT_MS))
        trickler = self.client()
        self.addCleanup(trickler.close)
        try:
            trickler.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = trickler.outgoing.read()
        interval = TRICKLE_TIMEOUT_MS / 1000 / 8
        give_up = time.monotonic() + 4 * TRICKLE_TIMEOUT_MS / 1000
        trickler.sock.settimeout(interval)
        ending = None
        for i in range(len(hello)):
            try:
                trickler.sock.sendall(hello[i:i + 1])
                ending = "eof" if trickler.sock.recv(1) == b"" else "data"
                break
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                ending = "reset"
                break
            if time.monotonic() > give_up:
                break
        self.assertIn(ending, ("eof", "reset"),
                      f"the server should drop the client {TRICKLE_TIMEOUT_MS} ms into the handshake; "
                      f"it was still open after {4 * TRICKLE_TIMEOUT_MS} ms and {i + 1} of "
                      f"{len(hello)} bytes")
        self.check_line(self.server.line_for(trickler.port), r"^error:io:TLS_handshake_timed_out", offloaded=False)
        self.finish()


class OpenSslRxTest(BadInputTest):
    """RX in OpenSSL, TX in the kernel (--no-rx): OpenSSL finds the bad
    record, and ktls sends its alert through the kernel."""

    RX = "--no-rx"
    test_garbage_after_offload = KernelRxTest.test_garbage_after_offload
    test_flipped_bit_from_python_client = KernelRxTest.test_flipped_bit_from_python_client
    flipped_bit_test = KernelRxTest.flipped_bit_test
    test_oversized_record = KernelRxTest.test_oversized_record
    test_record_cut_short_then_fin = KernelRxTest.test_record_cut_short_then_fin
    test_unexpected_handshake_messages_after_offload = KernelRxTest.test_unexpected_handshake_messages_after_offload


# --- Main ----------------------------------------------------------------------

def main():
    return ktls_interop.echo_suite_main(sys.modules[__name__], "ktls-bad-input-", set_up,
                                        classes=(KernelRxTest, OpenSslRxTest))


def set_up(directory):
    global PKI, TMP
    PKI = Pki(directory)
    TMP = directory


if __name__ == "__main__":
    sys.exit(main())
