#!/usr/bin/env python3
"""Interop tests: handshakes whose every message comes in 1-byte records, on
a kernel with kTLS.

usage: fragmentation_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]

A peer may split any handshake message over as many records as it likes,
its Finished included (RFC 5246 6.2.1, RFC 8446 5.1). Then the sequence
number of the first record after the handshake is not what a one-record
Finished would give, and a kernel given the wrong one fails every record
with bad_record_mac. Here a relay (ktls_badpeer.Refragmenter) re-sends every
handshake message of one side in 1-byte records, re-sealing that side's
protected records at their shifted sequence numbers with the secrets from
that side's key log:

- the ktls-echo server, with `openssl s_client`'s messages fragmented;
- the ktls-echo client (--connect), with `openssl s_server`'s fragmented
  (TLS 1.3: its NewSessionTickets too, after the handshake);

each for TLS 1.2 with AES-128-GCM and ChaCha20-Poly1305 and TLS 1.3, RX in
the kernel (--rx: on 6.1 TLS 1.3 RX would stay in OpenSSL by default) and
in userspace (--no-rx); then 1 MiB each way (256 KiB with RX in
userspace), checked by SHA-256. The same
relay between s_client and s_server is the reference: OpenSSL must accept
what it sends too, or the relay is wrong.

After offload, Linux 6.14+ pauses kTLS RX after every handshake record whose
first byte is 24, KeyUpdate's type, which in a message spread over 1-byte
records may be any byte of it (a NewSessionTicket's), or the first byte of a
KeyUpdate that is not whole yet: ktls must resume RX under the same key and
re-key only once the KeyUpdate is whole. A TLS 1.3 client (ktls_badpeer's
TlsClient) sends a KeyUpdate in 1-byte records to check that; on kernels
that cannot re-key (6.1) that connection must end with its named error.

Offload is proven by ktls-echo's line (tx=kernel, rx=kernel or user) and by
/proc/net/tls_stat: TlsTxSw and TlsRxSw grow by the kernel directions the
lines report plus what each ktls-echo start-up probe installs (measured once),
TlsDecryptError does not move, TlsCurrTxSw/TlsCurrRxSw are back where they
were.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import collections
import os
import platform
import re
import ssl
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
from key_update_interop import Pki, kernel_can_rekey  # noqa: E402
from ktls_badpeer import (CONTENT_ALERT, CONTENT_APPLICATION_DATA, HANDSHAKE_FINISHED, MAX_PLAINTEXT_LEN,  # noqa: E402
                          TLS1_2, TLS1_3, Refragmenter, Relay, TlsClient)
from ktls_interop import (HOST, check_tls_stat, exchange, parse_line,  # noqa: E402
                          raw_connection_lines, read_tls_stat, received, sha)

PAYLOAD_LEN = 1 << 20
# With RX in userspace only TX's sequence numbers are ktls's to get right:
# less data will do, and UML is slow.
USERSPACE_RX_PAYLOAD_LEN = 256 * 1024
# The reference runs only prove the relay right: a little data will do.
REFERENCE_PAYLOAD_LEN = 64 * 1024

# args: for s_client and s_server; cipher: as ktls-echo names it;
# finished_len: the Finished message, header included (TLS 1.2: 12 bytes of
# verify_data; TLS 1.3: the suite's hash).
Protocol = collections.namedtuple("Protocol", "number version args cipher finished_len")
TLS12_AES_GCM = Protocol(TLS1_2, "TLSv1.2", ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"),
                         "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 4 + 12)
TLS12_CHACHA20 = Protocol(TLS1_2, "TLSv1.2", ("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"),
                          "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 4 + 12)
TLS13 = Protocol(TLS1_3, "TLSv1.3", ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"),
                 "TLS_AES_128_GCM_SHA256", 4 + 32)

ECHO = ""       # the ktls-echo binary (argv[1])
OPENSSL = ""    # the openssl command-line tool
PKI = None      # Pki (key_update_interop's: a CA and a server certificate), made once
TMP = ""        # the suite's temporary directory (key logs live here only)
PROBE_COST = {}  # what one ktls-echo start-up probe adds to each tls_stat counter
REKEY = False   # whether this kernel can re-key kTLS sockets (>= 6.14)


class EchoServer(ktls_interop.ServerProcess):
    def __init__(self, rx):
        super().__init__([ECHO, "--listen", f"{HOST}:0", "--cert", PKI.server.cert, "--key", PKI.server.key,
                          rx_option(rx)])


class SServer(ktls_interop.SServer):
    """s_server speaking `protocol`, writing its key log to keylog."""

    def __init__(self, protocol, keylog, send):
        super().__init__(OPENSSL, PKI.server, "-keylogfile", keylog, *protocol.args, send=send)


def payload_len(rx):
    return PAYLOAD_LEN if rx == "kernel" else USERSPACE_RX_PAYLOAD_LEN


def rx_option(rx):
    return "--rx" if rx == "kernel" else "--no-rx"


def s_client_cmd(port, protocol, keylog):
    """s_client speaking `protocol`, verifying the server, writing its key
    log to keylog; stdout carries only the server's data, and at the end of
    stdin it sends close_notify and exits (-nocommands: random data must not
    be taken for its R, Q or k commands)."""
    return [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost", "-CAfile", PKI.ca.cert,
            "-verify_hostname", "localhost", "-verify_return_error", "-quiet", "-no_ign_eof", "-nocommands",
            "-keylogfile", keylog, *protocol.args]


def keylog_path(name):
    """A fresh key log file name in the suite's temporary directory."""
    path = os.path.join(TMP, f"keylog-{name}.txt")
    if os.path.exists(path):
        os.unlink(path)
    return path


class FragmentationTest(unittest.TestCase):
    def setUp(self):
        self.stat_before = read_tls_stat()
        self.num_probes = 0
        self.kernel_tx = 0
        self.kernel_rx = 0
        self.rx_pauses = 0  # Records the kernel must have taken for a KeyUpdate (6.14+).
        self.rx_rekeys = 0  # TLS_RX installed again, to resume or to re-key (6.14+).

    # -- checks --

    def assert_intact(self, got, sent, who):
        self.assertEqual((len(got), sha(got)), (len(sent), sha(sent)), f"{who}: data did not arrive intact")

    def check_fragmented(self, relay, protocol):
        """The relay sent every handshake message of its side in 1-byte
        records, the Finished among them, and shifted the sequence numbers
        of that side's current key by exactly the records it added."""
        [fragmenter] = relay.tamperers
        self.assertEqual(fragmenter.errors, [], "the relay failed")
        messages = fragmenter.messages
        self.assertEqual([m for m in messages if m[1] != m[2]], [],
                         f"messages not sent in 1-byte records (type, length, records): {messages}")
        finished = [i for i, m in enumerate(messages) if m[0] == HANDSHAKE_FINISHED]
        self.assertEqual([messages[i] for i in finished],
                         [(HANDSHAKE_FINISHED, protocol.finished_len, protocol.finished_len)],
                         f"the Finished message: {messages}")
        # TLS 1.2: the Finished is the first record under the new key;
        # TLS 1.3: the key changes after it.
        under_last_key = messages[finished[0] + (protocol.number != TLS1_2):]
        self.assertEqual(fragmenter.seq_shift, sum(length - 1 for _, length, _ in under_last_key),
                         f"sequence number shift, messages under the last key: {under_last_key}")

    def check_line(self, fields, side, protocol, rx, num_bytes, bytes_out=None, key_updates_rx=0,
                   end="close_notify"):
        """Asserts one ktls-echo connection line (end: a string, or a
        compiled pattern); counts its probe and its kernel directions for
        check_kernel_counters."""
        self.num_probes += 1  # A server probes before it listens, a client before it connects.
        self.kernel_tx += fields.get("tx") == "kernel"
        self.kernel_rx += fields.get("rx") == "kernel"
        expected = {"version": protocol.version, "cipher": protocol.cipher, "tx": "kernel", "rx": rx,
                    "bytes_in": str(num_bytes), "bytes_out": str(num_bytes if bytes_out is None else bytes_out),
                    "key_updates_tx": "0", "key_updates_rx": str(key_updates_rx)}
        self.assertEqual({key: fields.get(key) for key in expected}, expected, f"ktls-echo {side} line: {fields}")
        if isinstance(end, str):
            self.assertEqual(fields.get("end"), end, f"ktls-echo {side} line: {fields}")
        else:
            self.assertRegex(fields.get("end", ""), end, f"ktls-echo {side} line: {fields}")

    def check_kernel_counters(self):
        """Call after every ktls-echo process of the test has exited. The
        re-key counters exist on 6.14+ only."""
        from_connections = {"TlsTxSw": self.kernel_tx, "TlsRxSw": self.kernel_rx}
        if REKEY:
            from_connections.update(TlsRxRekeyReceived=self.rx_pauses, TlsRxRekeyOk=self.rx_rekeys)
        check_tls_stat(self, self.stat_before, from_connections, self.num_probes, PROBE_COST)

    # -- the tests' bodies --

    def server_test(self, protocol, rx):
        """s_client -> relay (the client's messages in 1-byte records) ->
        the ktls-echo server, which echoes what it gets."""
        keylog = keylog_path("s_client")
        payload = os.urandom(payload_len(rx))
        with EchoServer(rx) as server, \
                Relay(server.port, lambda: Refragmenter("client", keylog)) as relay:
            run = exchange(s_client_cmd(relay.port, protocol, keylog), payload, received(len(payload)))
            line = server.line_for(relay.upstream_ports[0])
        self.assert_intact(run.stdout, payload, f"s_client received the echo (stderr: {run.stderr})")
        self.assertEqual(run.returncode, 0, f"s_client failed: {run.stderr}")
        self.check_fragmented(relay, protocol)
        self.check_line(line, "server", protocol, rx, len(payload))
        self.check_kernel_counters()

    def client_test(self, protocol, rx):
        """s_server -> relay (the server's messages in 1-byte records) ->
        the ktls-echo client; data each way."""
        keylog = keylog_path("s_server")
        to_server, to_client = os.urandom(payload_len(rx)), os.urandom(payload_len(rx))
        with SServer(protocol, keylog, send=to_client) as server, \
                Relay(server.port, lambda: Refragmenter("server", keylog)) as relay:
            run = exchange([ECHO, "--connect", f"{HOST}:{relay.port}", "--ca", PKI.ca.cert, rx_option(rx)], to_server,
                           lambda out, err: len(out) >= len(to_client) and server.out.size() >= len(to_server))
            server_status = server.wait()
            server_got = server.out.bytes()
        self.assert_intact(server_got, to_server, f"s_server received ({run.stderr})")
        self.assert_intact(run.stdout, to_client, f"ktls-echo client received ({run.stderr})")
        self.assertEqual(server_status, 0, f"s_server: {server.err.text()}")
        self.assertEqual(run.returncode, 0, run.stderr)
        self.check_fragmented(relay, protocol)
        if REKEY and rx == "kernel" and protocol.number != TLS1_2:
            # Each such record of a NewSessionTicket paused RX, and ktls
            # resumed it.
            pauses = relay.tamperers[0].key_update_lookalikes
            self.rx_pauses += pauses
            self.rx_rekeys += pauses
        lines = raw_connection_lines(run.stderr)
        self.assertEqual(len(lines), 1, f"expected one connection line from the ktls-echo client:\n{run.stderr}")
        self.check_line(parse_line(lines[0]), "client", protocol, rx, len(to_server))
        self.check_kernel_counters()

    def test_server_tls13_key_update_in_one_byte_records(self):
        """After offload, a TLS 1.3 client sends a KeyUpdate in five 1-byte
        records, then data under its next key; the ktls-echo server (RX in
        the kernel) must echo it, or, where the kernel cannot re-key, end
        the connection naming why."""
        before, after = os.urandom(64 * 1024), os.urandom(64 * 1024)
        with EchoServer("kernel") as server:
            client = TlsClient(server.port, PKI.ca.cert, TMP, version=ssl.TLSVersion.TLSv1_3).handshake()
            try:
                echoed = client.echo(before)
                client.send_raw(client.seal_key_update(fragment_len=1))
                client.send_raw(b"".join(client.seal(CONTENT_APPLICATION_DATA, after[i:i + MAX_PLAINTEXT_LEN])
                                         for i in range(0, len(after), MAX_PLAINTEXT_LEN)))
                if REKEY:
                    got = client.recv_exactly(len(after))
                    client.send_raw(client.seal(CONTENT_ALERT, bytes([1, 0])))  # close_notify
                    rest, ending = client.read_to_end()
                else:
                    got, ending = client.read_to_end()
                    rest = b""
            finally:
                client.close()
            line = server.line_for(client.port)
        self.assert_intact(echoed, before, "echo before the KeyUpdate")
        protocol = Protocol(TLS1_3, "TLSv1.3", (), client.cipher(), 0)
        if REKEY:
            self.assert_intact(got, after, "echo after the KeyUpdate")
            self.assertEqual((rest, ending), (b"", "close_notify"), "how the server ended")
            self.check_line(line, "server", protocol, "kernel", len(before) + len(after), key_updates_rx=1)
            # The first record paused RX (ktls resumed it under the same
            # key); the whole KeyUpdate re-keyed it.
            self.rx_pauses, self.rx_rekeys = 1, 2
        else:
            self.assertEqual((got, ending), (b"", "alert:internal_error"), "how the server ended")
            self.check_line(line, "server", protocol, "kernel", len(before),
                            end=re.compile(r"^error:unsupported:the_peer_sent_a_TLS_1\.3_KeyUpdate,_and_this_kernel_"
                                           r"cannot_install_new_RX_keys"))
        self.check_kernel_counters()

    def reference_test(self, side, protocol):
        """s_client -> relay (`side`'s messages in 1-byte records) ->
        s_server: OpenSSL takes the relay's records on either side."""
        client_keylog, server_keylog = keylog_path("s_client"), keylog_path("s_server")
        to_server, to_client = os.urandom(REFERENCE_PAYLOAD_LEN), os.urandom(REFERENCE_PAYLOAD_LEN)
        with SServer(protocol, server_keylog, send=to_client) as server, \
                Relay(server.port, lambda: Refragmenter(side, client_keylog if side == "client" else
                                                        server_keylog)) as relay:
            run = exchange(s_client_cmd(relay.port, protocol, client_keylog), to_server,
                           lambda out, err: len(out) >= len(to_client) and server.out.size() >= len(to_server))
            server_status = server.wait()
            server_got = server.out.bytes()
        self.assert_intact(server_got, to_server, f"s_server received (s_client stderr: {run.stderr})")
        self.assert_intact(run.stdout, to_client, f"s_client received (s_server stderr: {server.err.text()})")
        self.assertEqual((run.returncode, server_status), (0, 0),
                         f"s_client: {run.stderr}\ns_server: {server.err.text()}")
        self.check_fragmented(relay, protocol)


def add_tests():
    protocols = {"tls12_aes_gcm": TLS12_AES_GCM, "tls12_chacha20": TLS12_CHACHA20, "tls13": TLS13}
    cases = [(name, "kernel") for name in protocols] + [("tls12_aes_gcm", "user"), ("tls13", "user")]
    for name, rx in cases:
        p = protocols[name]
        setattr(FragmentationTest, f"test_server_{name}_rx_{rx}", lambda self, p=p, rx=rx: self.server_test(p, rx))
        setattr(FragmentationTest, f"test_client_{name}_rx_{rx}", lambda self, p=p, rx=rx: self.client_test(p, rx))
    for name, p in protocols.items():
        for side in ("client", "server"):
            setattr(FragmentationTest, f"test_reference_{side}_fragmented_{name}",
                    lambda self, s=side, p=p: self.reference_test(s, p))


add_tests()


def main():
    return ktls_interop.echo_suite_main(sys.modules[__name__], "ktls-fragmentation-interop-", set_up)


def set_up(directory):
    global PKI, TMP, PROBE_COST, REKEY
    PKI, TMP = Pki(directory), directory
    REKEY = kernel_can_rekey(platform.release())
    PROBE_COST = ktls_interop.tls_stat_added(lambda: EchoServer("kernel"))
    print(f"kernel can re-key: {REKEY}; ktls-echo's start-up probe adds: "
          + ", ".join(f"{name} +{n}" for name, n in PROBE_COST.items() if n), flush=True)


if __name__ == "__main__":
    sys.exit(main())
