#!/usr/bin/env python3
"""Conformance: for the same bytes on the wire, a ktls server answers as
OpenSSL does in userspace.

usage: conformance_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]

A hostile TLS client (tests/interop/ktls_badpeer.py: Python's ssl for the
handshake, then records it seals itself under its live key) sends each case
below after the handshake, then one record of data. It sends the same bytes
to four servers:

- the reference, `openssl s_server` (OpenSSL in userspace);
- ktls-echo with RX in the kernel (--rx), where ktls decides what to answer
  from what kTLS returns;
- the same echoing with splice(2) (--rx --splice): the records reach ktls
  through SpliceRead, which hands every non-data record to the same code
  as Read, and must answer alike (and move the data without copying it);
- ktls-echo with RX in OpenSSL (--no-rx), where OpenSSL decides and ktls
  sends its alert through the kernel's TX.

The client opens every record the server sends (the server's key from the
key log), so it sees the exact alert: level and description. Each case
asserts one outcome for each server: a fatal or warning alert, the
connection going on (the data record reaches the server's application:
ktls-echo echoes it, s_server prints it; never judged from silence), or a
close with no alert. The reference must give the expected outcome too, so a change in
OpenSSL shows here. Where the kernel decides and makes cases
indistinguishable, the case says so in its name ("kernel_decides") and
states both outcomes; on a kernel that cannot install new RX keys (before
6.14) a KeyUpdate with RX in the kernel ends the connection with
internal_error, ktls's documented policy.

After every case a good client, connected all along, echoes through each
ktls-echo: the process goes on serving everyone else. Every bad connection
was offloaded (ktls-echo's line: tx=kernel, rx as asked), and at the end
tls_stat's TlsTxSw/TlsRxSw grew by exactly the directions the lines report.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import os
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
from ktls_interop import HOST, PkiBase, ServerProcess, SServer, read_tls_stat  # noqa: E402
from ktls_badpeer import (CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, RecordSplitter,  # noqa: E402
                          TlsClient, handshake_message, record_header, xor_seq)

ECHO = ""      # the ktls-echo binary (argv[1])
OPENSSL = ""   # the openssl command-line tool
PKI = None     # the CA and the server's certificate
TMP = ""       # key logs
PROBE_COST = {}  # what one ktls-echo start-up probe adds to tls_stat

# The data record sent after each case; ktls-echo echoes it and s_server
# prints it if the connection goes on.
AFTER = b"after the case"
# How often observe() looks whether the data was served.
POLL_SECONDS = 0.05

ALERTS = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
          40: "handshake_failure", 42: "bad_certificate", 47: "illegal_parameter", 50: "decode_error",
          70: "protocol_version", 80: "internal_error", 90: "user_canceled", 100: "no_renegotiation"}

# Outcomes, as the client sees them.
GOES_ON = "goes on"          # no alert, no close: the data record is served
CLOSED = "closed"            # a close with no alert (the peer's fatal alert ended it)
CLOSE_NOTIFY_BACK = "warning close_notify, then closed"


def fatal(name):
    return f"fatal {name}"


def warning_then_goes_on(name):
    return f"warning {name}, then goes on"


def can_rekey_rx():
    """Whether this kernel installs new RX keys on a live socket (6.14+)."""
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 14)


class Case:
    """One case: `build(client)` returns the records to send; `expect` is
    OpenSSL's outcome. kernel_rx: the outcome with RX in the kernel where
    the kernel decides otherwise; no_rekey: with RX in the kernel on a
    kernel that cannot install new RX keys. fin: once the data record was
    served, a FIN (no close_notify); `expect` is the outcome of that."""

    def __init__(self, build, expect, kernel_rx=None, no_rekey=None, fin=False):
        self.build, self.expect, self.kernel_rx, self.no_rekey = build, expect, kernel_rx, no_rekey
        self.fin = fin

    def expected(self, target):
        if target.startswith("ktls-echo --rx"):
            if self.no_rekey and not can_rekey_rx():
                return self.no_rekey
            return self.kernel_rx or self.expect
        return self.expect


def seal_inner(client, inner, outer_type=CONTENT_APPLICATION_DATA):
    """One TLS 1.3 record whose plaintext (RFC 8446 5.2's TLSInnerPlaintext:
    content, type, zeros) is `inner`, under the client's live key. Its
    header on the wire says outer_type; the one authenticated (the AAD)
    says application_data, as every TLS 1.3 record's must."""
    client.protection = client.protection or client.traffic_protection()
    aad = record_header(CONTENT_APPLICATION_DATA, len(inner) + 16)
    body = client.protection.aead.encrypt(xor_seq(client.protection.iv, client.next_seq), inner, aad)
    client.next_seq += 1
    return record_header(outer_type, len(body)) + body


def seal_padding_only(client):
    """A record whose plaintext is all padding: no content type at all."""
    return seal_inner(client, bytes(8))


def seal_padded(client, content_type, payload, padding):
    """A record of content_type with `padding` zero bytes after it."""
    return seal_inner(client, payload + bytes([content_type]) + bytes(padding))


def alerts(client, *alert, count=1):
    return b"".join(client.seal(CONTENT_ALERT, bytes(alert)) for _ in range(count))


def key_update(request=0):
    return handshake_message(24, bytes([request]))


def split_key_update(client, head_len, between):
    """A KeyUpdate whose first head_len bytes and the rest come in two
    records, with the records between(client) returns sent between them;
    the client then writes under its next key."""
    message = key_update()
    records = client.seal(CONTENT_HANDSHAKE, message[:head_len]) + between(client)
    records += client.seal(CONTENT_HANDSHAKE, message[head_len:])
    client.protection, client.next_seq = client.protection.updated(), 0
    return records


TLS13_CASES = {
    "alert_of_0_bytes": Case(lambda c: c.seal(CONTENT_ALERT, b""), fatal("unexpected_message")),
    "alert_of_0_bytes_with_padding": Case(lambda c: seal_padded(c, CONTENT_ALERT, b"", 20),
                                          fatal("unexpected_message")),
    "alert_of_1_byte": Case(lambda c: c.seal(CONTENT_ALERT, b"\x02"), fatal("unexpected_message")),
    "alert_of_3_bytes": Case(lambda c: c.seal(CONTENT_ALERT, b"\x02\x0a\x00"), fatal("unexpected_message")),
    "close_notify_with_padding": Case(lambda c: seal_padded(c, CONTENT_ALERT, b"\x01\x00", 30),
                                      CLOSE_NOTIFY_BACK),
    "user_canceled_four_times": Case(lambda c: alerts(c, 1, 90, count=4), GOES_ON),
    "user_canceled_five_times": Case(lambda c: alerts(c, 1, 90, count=5), fatal("unexpected_message")),
    # OpenSSL counts a warning close_notify with the warnings before it.
    "user_canceled_four_times_then_close_notify": Case(lambda c: alerts(c, 1, 90, count=4) + alerts(c, 1, 0),
                                                       fatal("unexpected_message")),
    "user_canceled_four_times_data_then_four_more": Case(
        lambda c: alerts(c, 1, 90, count=4) + c.seal(CONTENT_APPLICATION_DATA, b"x") + alerts(c, 1, 90, count=4),
        GOES_ON),
    "warning_bad_certificate_ends_it": Case(lambda c: alerts(c, 1, 42), CLOSED),
    "fatal_alert_of_unknown_description": Case(lambda c: alerts(c, 2, 254), CLOSED),
    "alert_of_unknown_level": Case(lambda c: alerts(c, 3, 10), CLOSED),
    "empty_handshake_record": Case(lambda c: c.seal(CONTENT_HANDSHAKE, b""), fatal("unexpected_message")),
    "finished_after_the_handshake": Case(lambda c: c.seal(CONTENT_HANDSHAKE, handshake_message(20, bytes(32))),
                                         fatal("unexpected_message")),
    "new_session_ticket_to_a_server": Case(lambda c: c.seal(CONTENT_HANDSHAKE, handshake_message(4, bytes(20))),
                                           fatal("unexpected_message")),
    "key_update_in_one_record": Case(lambda c: c.seal_key_update(fragment_len=5), GOES_ON,
                                     no_rekey=fatal("internal_error")),
    "key_update_in_1_byte_records": Case(lambda c: c.seal_key_update(fragment_len=1), GOES_ON,
                                         no_rekey=fatal("internal_error")),
    "key_update_in_3_and_2_byte_records": Case(lambda c: c.seal_key_update(fragment_len=3), GOES_ON,
                                               no_rekey=fatal("internal_error")),
    "two_key_updates_in_one_record": Case(lambda c: c.seal(CONTENT_HANDSHAKE, key_update() + key_update()),
                                          fatal("unexpected_message")),
    "key_update_then_the_start_of_a_message": Case(lambda c: c.seal(CONTENT_HANDSHAKE, key_update() + b"\x04"),
                                                   fatal("unexpected_message")),
    "key_update_with_invalid_request": Case(lambda c: c.seal(CONTENT_HANDSHAKE, key_update(7)),
                                            fatal("illegal_parameter")),
    "key_update_of_2_bytes": Case(lambda c: c.seal(CONTENT_HANDSHAKE, handshake_message(24, b"\x00\x00")),
                                  fatal("illegal_parameter")),
    "key_update_of_0_bytes": Case(lambda c: c.seal(CONTENT_HANDSHAKE, handshake_message(24, b"")),
                                  fatal("decode_error")),
    # OpenSSL checks that a KeyUpdate ends its record before its body.
    "key_update_of_0_bytes_then_more": Case(lambda c: c.seal(CONTENT_HANDSHAKE, handshake_message(24, b"") + b"\x04"),
                                            fatal("unexpected_message")),
    "key_update_with_invalid_request_then_more": Case(lambda c: c.seal(CONTENT_HANDSHAKE, key_update(7) + b"\x00"),
                                                      fatal("unexpected_message")),
    # RFC 8446 5.1: no other record type inside a handshake message; an
    # alert is taken there (OpenSSL handles it, then reads on).
    "data_inside_a_key_update": Case(
        lambda c: split_key_update(c, 4, lambda c: c.seal(CONTENT_APPLICATION_DATA, b"mid")),
        fatal("unexpected_message")),
    "data_inside_a_key_update_header": Case(
        lambda c: split_key_update(c, 2, lambda c: c.seal(CONTENT_APPLICATION_DATA, b"mid")),
        fatal("unexpected_message")),
    "user_canceled_inside_a_key_update": Case(lambda c: split_key_update(c, 4, lambda c: alerts(c, 1, 90)),
                                              GOES_ON, no_rekey=fatal("internal_error")),
    "fin_without_close_notify": Case(lambda c: b"", fatal("decode_error"), fin=True),
    "zero_length_application_data": Case(lambda c: c.seal(CONTENT_APPLICATION_DATA, b""), GOES_ON),
    "zero_length_application_data_before_an_alert": Case(
        lambda c: c.seal(CONTENT_APPLICATION_DATA, b"") + c.seal(CONTENT_ALERT, b""), fatal("unexpected_message")),
    "record_of_unknown_type": Case(lambda c: c.seal(99, b"hello"), fatal("unexpected_message")),
    "heartbeat_record": Case(lambda c: c.seal(24, b"\x01\x00\x00"), fatal("unexpected_message")),
    # The kernel decrypts every record: what it cannot authenticate, or finds
    # no content type in, is EBADMSG either way.
    "padding_only_record_kernel_decides": Case(seal_padding_only, fatal("unexpected_message"),
                                               kernel_rx=fatal("bad_record_mac")),
    "plaintext_change_cipher_spec_kernel_decides": Case(lambda c: record_header(20, 1) + b"\x01",
                                                        fatal("unexpected_message"),
                                                        kernel_rx=fatal("bad_record_mac")),
    # The kernel authenticates every record as application_data (23),
    # whatever type its header says, and returns no outer type: a record
    # that decrypts is taken.
    "outer_type_handshake_kernel_decides": Case(lambda c: seal_inner(c, b"smuggled" + b"\x17", outer_type=22),
                                                fatal("unexpected_message"), kernel_rx=GOES_ON),
    # The kernel refuses a plaintext, padding included, above 2^14 + 1
    # bytes (EMSGSIZE); OpenSSL takes it up to 2^14 + 256 of ciphertext.
    "padded_over_2_14_plus_1_kernel_decides": Case(lambda c: seal_padded(c, CONTENT_APPLICATION_DATA, b"x" * 100, 16300),
                                                   GOES_ON, kernel_rx=fatal("record_overflow")),
}

TLS12_CASES = {
    "alert_of_0_bytes": Case(lambda c: c.seal(CONTENT_ALERT, b""), fatal("unexpected_message")),
    "alert_of_1_byte": Case(lambda c: c.seal(CONTENT_ALERT, b"\x02"), fatal("unexpected_message")),
    "alert_of_3_bytes": Case(lambda c: c.seal(CONTENT_ALERT, b"\x02\x0a\x00"), fatal("unexpected_message")),
    "warning_four_times": Case(lambda c: alerts(c, 1, 42, count=4), GOES_ON),
    "warning_five_times": Case(lambda c: alerts(c, 1, 42, count=5), fatal("unexpected_message")),
    "warning_no_renegotiation": Case(lambda c: alerts(c, 1, 100), fatal("handshake_failure")),
    # OpenSSL counts warnings in a row until a record that is not empty,
    # and checks the count before what the warning says.
    "warning_four_times_empty_handshake_record_one_more": Case(
        lambda c: alerts(c, 1, 42, count=4) + c.seal(CONTENT_HANDSHAKE, b"") + alerts(c, 1, 42),
        fatal("unexpected_message")),
    "warning_four_times_then_no_renegotiation": Case(lambda c: alerts(c, 1, 42, count=4) + alerts(c, 1, 100),
                                                     fatal("unexpected_message")),
    "warning_four_times_then_close_notify": Case(lambda c: alerts(c, 1, 42, count=4) + alerts(c, 1, 0),
                                                 fatal("unexpected_message")),
    "close_notify_at_fatal_level": Case(lambda c: alerts(c, 2, 0), CLOSED),
    "close_notify_of_unknown_level": Case(lambda c: alerts(c, 3, 0), fatal("illegal_parameter")),
    "fin_without_close_notify": Case(lambda c: b"", fatal("decode_error"), fin=True),
    "alert_of_unknown_level": Case(lambda c: alerts(c, 3, 10), fatal("illegal_parameter")),
    "fatal_alert_of_unknown_description": Case(lambda c: alerts(c, 2, 254), CLOSED),
    "renegotiation_client_hello": Case(lambda c: c.seal(CONTENT_HANDSHAKE, bytes([1, 0, 0, 4, 3, 3, 0, 0])),
                                       warning_then_goes_on("no_renegotiation")),
    "hello_request_to_a_server": Case(lambda c: c.seal(CONTENT_HANDSHAKE, bytes([0, 0, 0, 0])),
                                      fatal("unexpected_message")),
    "finished_after_the_handshake": Case(lambda c: c.seal(CONTENT_HANDSHAKE, handshake_message(20, bytes(12))),
                                         fatal("unexpected_message")),
    "key_update_in_tls12": Case(lambda c: c.seal(CONTENT_HANDSHAKE, key_update()), fatal("unexpected_message")),
    "empty_handshake_record": Case(lambda c: c.seal(CONTENT_HANDSHAKE, b""), GOES_ON),
    "change_cipher_spec_after_the_handshake": Case(lambda c: c.seal(20, b"\x01"), fatal("unexpected_message")),
    "zero_length_application_data": Case(lambda c: c.seal(CONTENT_APPLICATION_DATA, b""), GOES_ON),
    "record_of_unknown_type": Case(lambda c: c.seal(99, b"hello"), fatal("unexpected_message")),
    "heartbeat_record": Case(lambda c: c.seal(24, b"\x01\x00\x00"), fatal("unexpected_message")),
}


class Pki(PkiBase):
    def __init__(self, directory):
        super().__init__(directory)
        self.ca = self.make_ca("ca", "ktls conformance CA")
        self.server = self.make_leaf("server", self.ca, "localhost", "serverAuth",
                                     "subjectAltName=DNS:localhost,IP:127.0.0.1")


def observe(client, first_seq, served):
    """What the server did after the case: reads the raw socket, opens each
    record with the server's key from first_seq on, and returns the outcome
    and the application data received. `served()` says whether the data
    record after the case reached the server's application (ktls-echo echoes
    it; s_server prints it): that, not a quiet spell, is how "goes on" is
    told from an alert still on its way, so a loaded machine cannot turn one
    into the other. client.server_seq: the next record's sequence number."""
    protection = client.traffic_protection("server")
    splitter = RecordSplitter()
    seq = client.server_seq = first_seq
    data = bytearray()
    warnings = []
    deadline = time.monotonic() + ktls_interop.STEP_TIMEOUT
    client.sock.settimeout(POLL_SECONDS)
    while True:
        # Once the data was served, whatever the server sent before it is
        # already in this socket's queue (loopback delivers in the send):
        # one more read, without waiting, collects a warning still unread.
        done = served(data)
        if done:
            client.sock.setblocking(False)
        try:
            chunk = client.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            chunk = None
        except ConnectionResetError:
            return "reset", bytes(data)
        if chunk == b"":
            return CLOSED if not warnings else f"warning {warnings[0]}, then closed", bytes(data)
        for record in splitter.feed(chunk or b""):
            content_type, payload = protection.open(seq, record)
            seq = client.server_seq = seq + 1
            if content_type == CONTENT_ALERT:
                level, description = payload[0], payload[1]
                name = ALERTS.get(description, str(description))
                if level == 2:
                    return fatal(name), bytes(data)
                warnings.append(name)
            elif content_type == CONTENT_APPLICATION_DATA:
                data += payload
        if done and chunk is None:
            return (warning_then_goes_on(warnings[0]) if warnings else GOES_ON), bytes(data)
        if time.monotonic() > deadline:
            return "no alert, no close, the data not served", bytes(data)


class ConformanceTest(unittest.TestCase):
    """One TLS version: each case against s_server, ktls-echo --rx,
    ktls-echo --rx --splice and ktls-echo --no-rx, all started once for the
    class."""

    VERSION = ssl.TLSVersion.TLSv1_3
    CIPHERS = None
    S_SERVER_ARGS = ("-tls1_3",)
    ECHO_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.targets = {}
        cls.stat_before = read_tls_stat()
        cls.reference = SServer(OPENSSL, PKI.server, *cls.S_SERVER_ARGS, naccept=None).__enter__()
        cls.targets["openssl s_server"] = cls.reference
        for mode in ("--rx", "--rx --splice", "--no-rx"):
            server = ServerProcess([ECHO, "--listen", f"{HOST}:0", "--cert", PKI.server.cert, "--key",
                                    PKI.server.key, *mode.split(), *cls.ECHO_ARGS])
            server.__enter__()
            cls.targets[f"ktls-echo {mode}"] = server
        cls.good = {name: cls.client(server).handshake() for name, server in cls.targets.items()
                    if name.startswith("ktls-echo")}

    @classmethod
    def tearDownClass(cls):
        for name, client in cls.good.items():
            client.close()
            cls.targets[name].line_for(client.port)  # Its line is out: the connection is over.
        cls.reference.__exit__(None, None, None)
        lines = []
        for name, server in cls.targets.items():
            if name.startswith("ktls-echo"):
                lines += server.lines()
                server.__exit__(None, None, None)
        # Every kernel direction the lines report, and the two start-up
        # probes, and no more. (TlsDecryptError is left out: whether the
        # kernel counts the "kernel_decides" records there differs between
        # 6.1 and 7.2.)
        after = read_tls_stat()
        grown = {name: after[name] - cls.stat_before.get(name, 0) for name in ("TlsTxSw", "TlsRxSw")}
        echoes = sum(name.startswith("ktls-echo") for name in cls.targets)
        expected = {"TlsTxSw": sum(line.get("tx") == "kernel" for line in lines) + echoes * PROBE_COST["TlsTxSw"],
                    "TlsRxSw": sum(line.get("rx") == "kernel" for line in lines) + echoes * PROBE_COST["TlsRxSw"]}
        if grown != expected:
            raise AssertionError(f"tls_stat grew by {grown}, expected {expected} (lines: {len(lines)})")
        for name in ("TlsCurrTxSw", "TlsCurrRxSw"):
            if after[name] != cls.stat_before[name]:
                raise AssertionError(f"{name}: kTLS sockets left open")

    @classmethod
    def client(cls, server):
        return TlsClient(server.port, PKI.ca.cert, TMP, version=cls.VERSION, ciphers=cls.CIPHERS)

    def run_case(self, case):
        outcomes = {}
        for name, server in self.targets.items():
            client = self.client(server)
            try:
                client.handshake()
                records = case.build(client)
                # TLS 1.2: the server's Finished (seq 0) was read in the
                # handshake; TLS 1.3: nothing under its application key yet.
                first_seq = 1 if client.tls12 else 0
                # What the reference printed so far: only what it prints
                # from now on can be this case's data.
                if name.startswith("ktls-echo"):
                    def served(data):
                        return data.endswith(AFTER)
                else:
                    def served(data, printed=server.out.size()):
                        return AFTER in server.out.bytes()[printed:]
                try:
                    client.send_raw(records + client.seal(CONTENT_APPLICATION_DATA, AFTER))
                except OSError:
                    pass  # The server already ended it: its alert is still to be read.
                outcome, data = observe(client, first_seq, served)
                if case.fin:
                    # The FIN once the data was served: the connection is
                    # offloaded by then.
                    self.assertEqual(outcome, GOES_ON, f"{name}: before the FIN")
                    client.sock.shutdown(socket.SHUT_WR)
                    outcome, _ = observe(client, client.server_seq, lambda data: False)
                outcomes[name] = outcome
                if name.startswith("ktls-echo"):
                    if outcome.endswith(GOES_ON):
                        self.assertTrue(data.endswith(AFTER), f"{name}: the data after the case was not echoed")
                    client.close()
                    line = server.line_for(client.port)
                    rx = "kernel" if "--rx" in name.split() else "user"
                    self.assertEqual((line.get("tx"), line.get("rx")), ("kernel", rx), f"{name}: {line}")
                    if case.fin:
                        self.assertEqual(line.get("end"), "truncated", f"{name}: {line}")
                    if "--splice" in name.split():
                        # Kernel to kernel: not one byte through ktls-echo,
                        # except a record right after a zero-length one
                        # (splice returns 0 for both that and the end of
                        # the stream; the recvmsg that tells them apart
                        # reads the next record).
                        copied_in = "0" if "zero_length" not in self.id() else line.get("copied_in")
                        self.assertEqual((line.get("copied_in"), line.get("copied_out")), (copied_in, "0"),
                                         f"{name}: {line}")
                    # Everyone else is still served.
                    payload = os.urandom(100)
                    self.assertEqual(self.good[name].echo(payload), payload, f"{name}: the good client's echo")
            finally:
                client.close()
        expected = {name: case.expected(name) for name in self.targets}
        self.assertEqual(outcomes, expected)


def make_tests(cls, cases):
    for case_name, case in cases.items():
        setattr(cls, f"test_{case_name}", lambda self, case=case: self.run_case(case))


class Tls13Test(ConformanceTest):
    pass


class Tls12Test(ConformanceTest):
    VERSION = ssl.TLSVersion.TLSv1_2
    CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256"
    S_SERVER_ARGS = ("-tls1_2",)
    ECHO_ARGS = ("--tls-max", "1.2")


make_tests(Tls13Test, TLS13_CASES)
make_tests(Tls12Test, TLS12_CASES)


# --- Main ----------------------------------------------------------------------

def main():
    return ktls_interop.echo_suite_main(sys.modules[__name__], "ktls-conformance-", set_up,
                                        classes=(Tls13Test, Tls12Test))


def set_up(directory):
    global PKI, TMP, PROBE_COST
    PKI = Pki(directory)
    TMP = directory
    PROBE_COST = ktls_interop.tls_stat_added(lambda: ServerProcess([ECHO, "--listen", f"{HOST}:0", "--cert",
                                                                    PKI.server.cert, "--key", PKI.server.key]))


if __name__ == "__main__":
    sys.exit(main())
