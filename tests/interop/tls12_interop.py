#!/usr/bin/env python3
"""Interop tests for TLS 1.2 offload: ktls-echo against real TLS 1.2 peers,
on a kernel with kTLS.

usage: tls12_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]

ktls-echo runs with --tls-max 1.2 (and --rx, so RX goes to the kernel on
6.1 as well). Peers: `openssl s_client -tls1_2` for every suite the kernel
can carry (ECDHE-ECDSA and ECDHE-RSA with AES-128-GCM, AES-256-GCM and
ChaCha20-Poly1305, ECDHE-ECDSA with AES-128-CCM), session ID and ticket
resumption (abbreviated handshakes), a CBC suite that must stay in
userspace, and a renegotiation attempt after offload that gets a warning
no_renegotiation (s_client then gives up); Python's ssl client capped at
TLS 1.2; gnutls-cli forced to TLS 1.2; and the ktls-echo client against
`openssl s_server -tls1_2`. Every test sends random data, checks it came
back byte for byte (SHA-256), and checks ktls-echo's key=value line.

/proc/net/tls_stat proves that the kernel did the work: TlsTxSw and TlsRxSw
grow by the kernel directions the lines report plus what ktls-echo's
start-up probe installs (measured once, at the start), TlsDecryptError does
not move, and TlsCurrTxSw/TlsCurrRxSw are back where they were.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import collections
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
from ktls_interop import (HOST, STEP_TIMEOUT, PkiBase, Pump, exchange,  # noqa: E402
                          parse_line, raw_connection_lines as connection_lines, read_tls_stat,
                          received, sha, stop_process, wait_until)

PAYLOAD_LEN = 256 * 1024

# (OpenSSL name, server certificate): every TLS 1.2 suite the kernel carries.
OFFLOADABLE = (
    ("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa"),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", "ecdsa"),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", "ecdsa"),
    ("ECDHE-ECDSA-AES128-CCM", "ecdsa"),
    ("ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
    ("ECDHE-RSA-AES256-GCM-SHA384", "rsa"),
    ("ECDHE-RSA-CHACHA20-POLY1305", "rsa"),
)
CBC_SUITE = "ECDHE-ECDSA-AES128-SHA256"
# ktls-echo reports the standard (IANA) names.
STANDARD_NAMES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-CCM": "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
}
OFFLOADABLE_STANDARD = {STANDARD_NAMES[name] for name, _ in OFFLOADABLE}
# What s_client and ktls-echo agree on with OpenSSL's default lists.
DEFAULT_SUITE = "ECDHE-ECDSA-AES256-GCM-SHA384"

ECHO = ""       # the ktls-echo binary (argv[1])
OPENSSL = ""    # the openssl command-line tool
PKI = None      # Pki: certificates for every test, made once
PROBE_COST = None  # Counters: what one ktls-echo start-up probe adds to tls_stat

Counters = collections.namedtuple("Counters", "tx rx")


# --- Certificates ------------------------------------------------------------

class Pki(PkiBase):
    """A CA and two server certificates for localhost / 127.0.0.1, one with
    a P-256 key (ECDSA suites) and one with an RSA key (RSA suites), made
    with the openssl CLI in `directory`."""

    def __init__(self, directory):
        super().__init__(directory)
        self.ca = self.make_ca("ca", "ktls TLS 1.2 interop CA")
        san = "subjectAltName=DNS:localhost,IP:127.0.0.1"
        self.server = self.make_leaf("server-ecdsa", self.ca, "localhost", "serverAuth", san)
        self.rsa_server = self.make_leaf("server-rsa", self.ca, "localhost", "serverAuth", san,
                                         key_args=("-newkey", "rsa:2048"))

    def identity(self, kind):
        return self.server if kind == "ecdsa" else self.rsa_server


# --- Processes ---------------------------------------------------------------

class EchoServer(ktls_interop.ServerProcess):
    """ktls-echo --tls-max 1.2 as a server on 127.0.0.1 (a free port), for a
    `with` block. Its stderr is collected; connection_lines() waits for the
    per-connection lines."""

    def __init__(self, *args, identity=None, rx_option="--rx"):
        identity = identity or PKI.server
        # RX in the kernel on both kernels, stated rather than left to the
        # default (which is on for TLS 1.2: it has no key updates;
        # test_rx_offload_by_default checks that with rx_option=None).
        rx = [rx_option] if rx_option else []
        super().__init__([ECHO, "--listen", f"{HOST}:0", "--tls-max", "1.2", "--cert", identity.cert,
                          "--key", identity.key, *rx, *args])

    def offload_lines(self):
        return [line for line in self.err.text().splitlines() if line.startswith("offload:")]


class SServer(ktls_interop.SServer):
    """ktls_interop.SServer with this suite's openssl and server identity."""

    def __init__(self, *args, identity=None, send=b""):
        super().__init__(OPENSSL, identity or PKI.server, *args, send=send)


def s_client_cmd(port, *args, quiet=True, commands=False):
    """openssl s_client -tls1_2 verifying our server; with quiet, stdout
    carries only the data from the server (-no_ign_eof: at end of stdin,
    s_client sends close_notify and exits). With commands, a line "R" read
    from stdin makes it renegotiate."""
    cmd = [OPENSSL, "s_client", "-tls1_2", "-connect", f"{HOST}:{port}", "-servername", "localhost",
           "-CAfile", PKI.ca.cert, "-verify_hostname", "localhost", "-verify_return_error"]
    if not commands:
        cmd.append("-nocommands")
    if quiet:
        cmd += ["-quiet", "-no_ign_eof"]
    return cmd + list(args)


def text_payload(length):
    """Random lowercase hex in 1 KiB lines: no s_client command letters
    (Q, R, k, K), and gnutls-cli, which sends a record per line it reads,
    sends a few hundred records rather than one per 64 bytes."""
    digits = os.urandom(length // 2).hex()
    return "".join(digits[i:i + 1023] + "\n" for i in range(0, len(digits), 1023)).encode()


# --- Tests ---------------------------------------------------------------------

class InteropTest(unittest.TestCase):
    """Counts what the kernel must have done, and checks it at the end of
    each test (check_kernel_counters)."""

    def setUp(self):
        self.stat_before = read_tls_stat()
        self.num_probes = 0
        self.kernel_tx = 0
        self.kernel_rx = 0

    def echo_server(self, *args, **kwargs):
        self.num_probes += 1  # A server probes before it prints "listening".
        return EchoServer(*args, **kwargs)

    def check_line(self, fields, side, *, cipher=DEFAULT_SUITE, tx="kernel", rx="kernel", resumed="no",
                   bytes_in=None, bytes_out=None, end="close_notify"):
        """Asserts one ktls-echo connection line; cipher is an OpenSSL name
        (None: any offloadable suite)."""
        if side == "client":
            self.num_probes += 1  # A client probes in its own process.
        self.kernel_tx += fields.get("tx") == "kernel"
        self.kernel_rx += fields.get("rx") == "kernel"
        expected = {"version": "TLSv1.2", "tx": tx, "rx": rx, "resumed": resumed,
                    "bytes_in": str(bytes_in), "bytes_out": str(bytes_out), "end": end,
                    "key_updates_tx": "0", "key_updates_rx": "0"}
        if cipher is not None:
            expected["cipher"] = STANDARD_NAMES[cipher]
        self.assertEqual({key: fields.get(key) for key in expected}, expected, f"ktls-echo {side} line: {fields}")
        if cipher is None:
            self.assertIn(fields.get("cipher"), OFFLOADABLE_STANDARD, f"ktls-echo {side} line: {fields}")

    def check_kernel_counters(self):
        """Call after every ktls-echo process of the test has exited."""
        ktls_interop.check_tls_stat(self, self.stat_before, {"TlsTxSw": self.kernel_tx, "TlsRxSw": self.kernel_rx},
                                    self.num_probes, {"TlsTxSw": PROBE_COST.tx, "TlsRxSw": PROBE_COST.rx})

    def assert_echoed(self, got, sent, who):
        self.assertEqual((len(got), sha(got)), (len(sent), sha(sent)), f"{who}: data did not come back intact")


class OpenSslClientTest(InteropTest):
    """openssl s_client -tls1_2 against the ktls-echo server."""

    def suite_test(self, suite, cert):
        # --cipher-list: OpenSSL's default list lacks CCM, and one suite
        # makes the outcome certain.
        with self.echo_server("--cipher-list", suite, identity=PKI.identity(cert)) as server:
            payload = os.urandom(PAYLOAD_LEN)
            run = exchange(s_client_cmd(server.port, "-cipher", suite), payload, received(len(payload)))
            [line] = server.connection_lines(1)
        self.assert_echoed(run.stdout, payload, f"s_client -cipher {suite} (stderr: {run.stderr})")
        self.assertEqual(run.returncode, 0, f"s_client failed: {run.stderr}")
        self.check_line(line, "server", cipher=suite, bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()

    def resumption_test(self, ticket, suite=DEFAULT_SUITE, cert="ecdsa"):
        """Two s_client runs, -sess_out then -sess_in: the second resumes
        (abbreviated handshake: the server's Finished comes first)."""
        sess = os.path.join(PKI.dir, f"s_client-session-{'ticket' if ticket else 'id'}-{suite}.pem")
        extra = ([] if ticket else ["-no_ticket"]) + ["-cipher", suite]
        payload = text_payload(64 * 1024)
        runs = []
        with self.echo_server("--cipher-list", suite, identity=PKI.identity(cert)) as server:
            for args in (["-sess_out", sess], ["-sess_in", sess]):
                # Without -quiet, s_client prints "New, ..." or "Reused, ..."
                # and the session on stdout, around the echoed data.
                run = exchange(s_client_cmd(server.port, *extra, *args, quiet=False), payload,
                               lambda out, err: payload in out)
                self.assertEqual(run.returncode, 0, f"s_client {args} failed: {run.stderr}")
                self.assertIn(payload, run.stdout, "echo did not come back intact")
                runs.append(run.stdout.decode(errors="replace"))
            lines = server.connection_lines(2)
        outcomes = [re.findall(r"^(?:New|Reused), .*$", run, re.M) for run in runs]
        self.assertEqual(outcomes, [["New, TLSv1.2, Cipher is " + suite],
                                    ["Reused, TLSv1.2, Cipher is " + suite]], "s_client's sessions")
        for run in runs:
            # The session s_client holds has a ticket exactly when tickets are on.
            self.assertEqual("TLS session ticket lifetime hint" in run, ticket, "a ticket in s_client's session")
        for line, resumed in zip(lines, ("no", "yes")):
            self.check_line(line, "server", cipher=suite, resumed=resumed, bytes_in=len(payload),
                            bytes_out=len(payload))
        self.check_kernel_counters()

    # Resumption by session ID needs the session to stay in the server's
    # cache when the library frees the SSL after offload (it once did not:
    # SSL_free drops sessions of SSLs not marked shut down).
    def test_resumption_session_id(self):
        self.resumption_test(ticket=False)

    def test_resumption_ticket(self):
        self.resumption_test(ticket=True)

    def test_rx_offload_by_default(self):
        """Without --rx or --no-rx (RX offload "auto"), TLS 1.2 RX goes to
        the kernel on every kernel: TLS 1.2 has no key updates."""
        with self.echo_server(rx_option=None) as server:
            payload = os.urandom(PAYLOAD_LEN)
            run = exchange(s_client_cmd(server.port), payload, received(len(payload)))
            [line] = server.connection_lines(1)
            offload = server.offload_lines()
        self.assert_echoed(run.stdout, payload, f"s_client (stderr: {run.stderr})")
        self.assertEqual(run.returncode, 0, f"s_client failed: {run.stderr}")
        self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload))
        self.assertEqual(offload, [], "no direction stayed in userspace")
        self.check_kernel_counters()

    def test_cbc_suite_stays_in_userspace(self):
        with self.echo_server("--cipher-list", CBC_SUITE) as server:
            payload = os.urandom(PAYLOAD_LEN)
            run = exchange(s_client_cmd(server.port, "-cipher", CBC_SUITE), payload, received(len(payload)))
            [line] = server.connection_lines(1)
            offload = server.offload_lines()
        self.assert_echoed(run.stdout, payload, f"s_client -cipher {CBC_SUITE} (stderr: {run.stderr})")
        self.assertEqual(run.returncode, 0, f"s_client failed: {run.stderr}")
        self.check_line(line, "server", cipher=CBC_SUITE, tx="user", rx="user", bytes_in=len(payload),
                        bytes_out=len(payload))
        self.assertEqual(len(offload), 1, f"offload lines: {offload}")
        self.assertRegex(offload[0], r'^offload: tx=user rx=user reason=".*cipher not offloadable')
        self.check_kernel_counters()

    def test_renegotiation_after_offload_is_refused(self):
        """s_client's "R" command sends a ClientHello on the offloaded
        connection: ktls-echo answers, as OpenSSL does, with a warning
        no_renegotiation and goes on; s_client, whose renegotiation was
        refused, gives up with handshake_failure, which ends the
        connection. (A peer that goes on after the warning is served on:
        conformance_interop.py.)"""
        payload = text_payload(16 * 1024)
        with self.echo_server() as server:
            proc = subprocess.Popen(s_client_cmd(server.port, quiet=False, commands=True),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = Pump(proc.stdout), Pump(proc.stderr)
            out.start()
            err.start()
            try:
                proc.stdin.write(payload)
                proc.stdin.flush()
                self.assertTrue(wait_until(lambda: payload in bytes(out.data), STEP_TIMEOUT),
                                f"no echo before renegotiating: {err.text()}")
                proc.stdin.write(b"R\n")
                proc.stdin.flush()
                try:
                    returncode = proc.wait(timeout=STEP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    returncode = None
            finally:
                stop_process(proc, (out, err))
            [line] = server.connection_lines(1)
        # s_client sent its ClientHello and got the warning no_renegotiation
        # back through the kernel: its own error SSL_R_NO_RENEGOTIATION.
        self.assertRegex(err.text(), r"(?s)RENEGOTIATING\n.*:ssl3_read_bytes:no renegotiation:",
                         f"s_client stderr: {err.text()}")
        self.assertNotEqual(returncode, 0, f"s_client should fail: {err.text()}")
        self.check_line(line, "server", bytes_in=len(payload), bytes_out=len(payload),
                        end="error:alert_handshake_failure")
        self.check_kernel_counters()


def add_suite_tests():
    """Each offloadable suite, with a full handshake and resumed (by ticket;
    by session ID too for the default suite, above)."""
    for suite, cert in OFFLOADABLE:
        setattr(OpenSslClientTest, f"test_suite_{suite}", lambda self, s=suite, c=cert: self.suite_test(s, c))
        setattr(OpenSslClientTest, f"test_suite_{suite}_resumed",
                lambda self, s=suite, c=cert: self.resumption_test(True, s, c))


add_suite_tests()


class PythonClientTest(InteropTest):
    """Python's ssl client, capped at TLS 1.2, against the ktls-echo server."""

    def test_echo(self):
        ctx = ssl.create_default_context(cafile=PKI.ca.cert)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        payload = os.urandom(PAYLOAD_LEN)
        got = bytearray()
        with self.echo_server() as server:
            with socket.create_connection((HOST, server.port), timeout=STEP_TIMEOUT) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                version, cipher = tls.version(), tls.cipher()[0]
                # Lockstep, so neither side's buffers fill up.
                for i in range(0, len(payload), 16384):
                    chunk = payload[i:i + 16384]
                    tls.sendall(chunk)
                    want = len(got) + len(chunk)
                    while len(got) < want:
                        data = tls.recv(want - len(got))
                        self.assertTrue(data, "the server closed early")
                        got += data
                tls.unwrap()  # close_notify, then the server's.
            [line] = server.connection_lines(1)
        self.assertEqual(version, "TLSv1.2")
        self.assert_echoed(bytes(got), payload, "Python ssl client")
        self.assertEqual(line.get("cipher"), STANDARD_NAMES.get(cipher), f"Python negotiated {cipher}")
        self.check_line(line, "server", cipher=cipher, bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()


class GnuTlsClientTest(InteropTest):
    """gnutls-cli forced to TLS 1.2 against the ktls-echo server."""

    def test_echo(self):
        gnutls_cli = shutil.which("gnutls-cli")
        if not gnutls_cli:
            self.fail("gnutls-cli not found (Debian package gnutls-bin; scripts/setup installs it)")
        payload = text_payload(64 * 1024)  # gnutls-cli is slow with stdin
        with self.echo_server() as server:
            # 127.0.0.1 is in the certificate's subjectAltName.
            run = exchange([gnutls_cli, "--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.2", "--x509cafile",
                            PKI.ca.cert, "-p", str(server.port), HOST], payload,
                           lambda out, err: payload in out)
            [line] = server.connection_lines(1)
        # gnutls-cli prints its status around the data on stdout.
        text = run.stdout.decode(errors="replace")
        self.assertEqual(run.returncode, 0, f"gnutls-cli failed: {text[:3000]} {run.stderr}")
        self.assertIn(payload, run.stdout, f"echo did not come back intact: {text[:3000]}")
        self.assertIn("- Description: (TLS1.2-X.509)", text)
        self.assertNotIn("NOT trusted", text)
        self.check_line(line, "server", cipher=None, bytes_in=len(payload), bytes_out=len(payload))
        self.check_kernel_counters()


class OpenSslServerTest(InteropTest):
    """The ktls-echo client (--tls-max 1.2) against openssl s_server -tls1_2,
    data both ways."""

    def both_ways(self, suite, cert):
        to_server, to_client = os.urandom(PAYLOAD_LEN), os.urandom(PAYLOAD_LEN)
        with SServer("-tls1_2", "-cipher", suite, identity=PKI.identity(cert), send=to_client) as server:
            cmd = [ECHO, "--connect", f"{HOST}:{server.port}", "--ca", PKI.ca.cert, "--tls-max", "1.2", "--rx"]
            run = exchange(cmd, to_server,
                           lambda out, err: len(out) >= len(to_client) and server.out.size() >= len(to_server))
            server_status = server.wait()
            self.assertEqual(server_status, 0, f"s_server: {server.err.text()}")
            received_data = bytes(server.out.data)
        self.assert_echoed(received_data, to_server, f"s_server received ({run.stderr})")
        self.assert_echoed(run.stdout, to_client, f"ktls-echo client received ({run.stderr})")
        lines = connection_lines(run.stderr)
        self.assertEqual(len(lines), 1, f"expected one connection line from the ktls-echo client:\n{run.stderr}")
        self.check_line(parse_line(lines[0]), "client", cipher=suite, bytes_in=len(to_client),
                        bytes_out=len(to_server))
        self.assertEqual(run.returncode, 0, run.stderr)
        self.check_kernel_counters()

    def test_ecdsa_aes128_gcm(self):
        self.both_ways("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa")

    def test_rsa_chacha20(self):
        self.both_ways("ECDHE-RSA-CHACHA20-POLY1305", "rsa")


# --- Main ----------------------------------------------------------------------

def measure_probe_cost():
    """What one ktls-echo start-up (its kernel probe) adds to tls_stat."""
    added = ktls_interop.tls_stat_added(EchoServer)
    return Counters(added["TlsTxSw"], added["TlsRxSw"])


def main():
    return ktls_interop.echo_suite_main(sys.modules[__name__], "ktls-tls12-interop-", set_up)


def set_up(directory):
    global PKI, PROBE_COST
    PKI = Pki(directory)
    PROBE_COST = measure_probe_cost()
    print(f"ktls-echo's start-up probe: TlsTxSw +{PROBE_COST.tx}, TlsRxSw +{PROBE_COST.rx}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
