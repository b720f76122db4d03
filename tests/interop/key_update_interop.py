#!/usr/bin/env python3
"""Interop tests for TLS 1.3 key updates: ktls-echo against real peers.

usage: key_update_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]

What runs depends on whether the guest kernel can install new kTLS keys
(Linux 6.14 and later, decided from platform.release(); ktls-echo's own
"rekey=yes|no" must agree):

Kernels with rekey (tested: 7.2)
  - openssl s_client sends KeyUpdates (`k`: update_not_requested, `K`:
    update_requested; its interactive commands) to the ktls-echo server
    mid-stream, with RX in the kernel (the default there) and with --no-rx.
    Every line is echoed, in order; the server's line counts the updates;
    /proc/net/tls_stat shows the kernel re-keyed RX once per k/K and TX once
    per K.
  - openssl s_server sends k/K to the ktls-echo client mid-stream, data flows
    both ways in between.
  - ktls-echo --key-update-after 4 (automatic TX KeyUpdates every few
    records) echoing 1 MiB to s_client (its -msg trace) and to Python's ssl
    module (the raw records): no key carried more than 4 records, session
    tickets sent before offload included; and two ktls-echo ends with
    --key-update-after 2 through hundreds of key updates in a row each way.
Kernels without rekey (tested: 6.1), each case ended by its named error:
  - default mode (RX in OpenSSL): `k` is fine, `K` (update_requested) ends
    the connection with an internal_error alert (never close_notify, which
    would make the cut stream look complete), nothing sent after it echoed;
  - --rx: `k` ends the connection with an internal_error alert, nothing sent
    after it echoed;
  - --key-update-after 4: the server ends with an internal_error alert
    before the limit (the alert is at most record 4 under the key); the
    client got at most 3 records of echo, fewer by the session tickets sent
    under the same key.

ktls-echo's start-up probe installs (and on rekey kernels re-keys) kTLS on
throwaway sockets: what one ktls-echo process adds to tls_stat is measured
once at the start and added per process.

Exit status: 0 when every test passed, 1 when one failed, 77 (with a line
"SKIP: <reason>") when this kernel has no kTLS, which is a failure instead
when KTLS_REQUIRE_KERNEL=1. When tests ran, the last line is always
"N passed, N failed".
"""
import math
import os
import platform
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ktls_interop  # noqa: E402
from ktls_interop import (HOST, STEP_TIMEOUT, PkiBase, Pump, free_port, is_listening, parse_line,  # noqa: E402
                          raw_connection_lines, read_tls_stat, sha)

RECORD = 16 * 1024  # TLS maximum record plaintext
BULK_LEN = 1024 * 1024
THRESHOLD = 4  # --key-update-after for the automatic-update tests

ECHO = ""       # the ktls-echo binary (argv[1])
OPENSSL = ""    # the openssl command-line tool
STDBUF = ""     # coreutils' stdbuf
PKI = None      # Pki: certificates, made once
PROBE = {}      # tls_stat counter -> what one ktls-echo process's probe adds
REKEY = False   # whether this kernel can rekey kTLS sockets (>= 6.14)

# Counters compared exactly in every test (those this kernel has).
COUNTERS = ("TlsTxSw", "TlsRxSw", "TlsTxRekeyOk", "TlsRxRekeyOk", "TlsRxRekeyReceived", "TlsTxRekeyError",
            "TlsRxRekeyError", "TlsDecryptError")


def kernel_can_rekey(release):
    """Linux 6.14 added TLS 1.3 key updates to kTLS (both directions)."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= (6, 14)


# --- Certificates ------------------------------------------------------------

class Pki(PkiBase):
    """A CA and a server certificate for localhost and 127.0.0.1 (P-256)."""

    def __init__(self, directory):
        super().__init__(directory)
        self.ca = self.make_ca("ca", "ktls key update CA")
        self.server = self.make_leaf("server", self.ca, "localhost", "serverAuth",
                                     "subjectAltName=DNS:localhost,IP:127.0.0.1")


# --- Processes ---------------------------------------------------------------

def wait_until(predicate, timeout, interval=0.005):
    return ktls_interop.wait_until(predicate, timeout, interval)


class Proc:
    """A process with its stdin, stdout and stderr on pipes (pumped), for a
    `with` block, which kills it at the end if it is still running."""

    def __init__(self, cmd, name, stdin=True):
        self.name = name
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = Pump(self.proc.stdout), Pump(self.proc.stderr)
        self.out.start()
        self.err.start()
        self.feeder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def describe(self):
        return (f"{self.name} ({' '.join(self.cmd)}), exit status {self.proc.poll()}\n"
                f"--- stdout (last 3000 bytes):\n{self.out.text()[-3000:]}\n"
                f"--- stderr (last 3000 bytes):\n{self.err.text()[-3000:]}")

    def write(self, data):
        """Writes to its stdin; False if it is gone."""
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def feed(self, data):
        """Writes data to its stdin from a thread (for data larger than a pipe)."""
        self.feeder = threading.Thread(target=self.write, args=(data,), daemon=True)
        self.feeder.start()

    def close_stdin(self):
        if self.feeder is not None:
            self.feeder.join(timeout=STEP_TIMEOUT)
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def wait_for(self, what, predicate, timeout=STEP_TIMEOUT):
        """Waits until predicate() holds; fails the test (saying `what`) if
        it does not within timeout."""
        if not wait_until(predicate, timeout):
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}; {self.describe()}")

    def wait_exit(self, timeout=STEP_TIMEOUT):
        """Exit status (None: still running after timeout)."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.out.join(timeout=5)
        self.err.join(timeout=5)
        return status

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pump in (self.out, self.err):
            pump.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


def connection_lines(text):
    return [parse_line(line) for line in raw_connection_lines(text)]


class EchoServer(Proc):
    """ktls-echo as a server on 127.0.0.1 (a free port). RX offload is
    ktls-echo's default unless args say --rx or --no-rx."""

    def __init__(self, *args):
        super().__init__([ECHO, "--listen", f"{HOST}:0", "--cert", PKI.server.cert, "--key", PKI.server.key,
                          *args], "ktls-echo server", stdin=False)
        try:
            self.wait_for("ktls-echo to listen",
                          lambda: "listening port=" in self.err.text() or self.proc.poll() is not None)
            match = re.search(r"^listening port=(\d+)$", self.err.text(), re.M)
            if not match:
                raise AssertionError(f"ktls-echo did not start listening: {self.describe()}")
            self.port = int(match.group(1))
            match = re.search(r"^ktls: available kernel=\S+ rekey=(yes|no)$", self.err.text(), re.M)
            if not match:
                raise AssertionError(f"ktls-echo does not report kTLS available with rekey=yes|no: "
                                     f"{self.describe()}")
            self.rekey = match.group(1) == "yes"
        except BaseException:
            self.stop()
            raise

    def connection_line(self):
        """The one per-connection line (waits for it)."""
        self.wait_for("ktls-echo's connection line", lambda: connection_lines(self.err.text()))
        lines = connection_lines(self.err.text())
        if len(lines) != 1:
            raise AssertionError(f"expected one connection line: {self.describe()}")
        return lines[0]


def s_client_cmd(port, msgfile, *args, interactive=True):
    """openssl s_client verifying our server, its -msg trace in msgfile.
    interactive: not -quiet, so a line `k`/`K` on stdin (alone in one read)
    sends a KeyUpdate; stdout then also carries session information around
    the data. Otherwise -quiet -nocommands: stdout is exactly the data."""
    cmd = [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
           "-CAfile", PKI.ca.cert, "-verify_hostname", "localhost", "-verify_return_error",
           "-msg", "-msgfile", msgfile]
    if not interactive:
        cmd += ["-quiet", "-nocommands"]
    # -no_ign_eof after -quiet (which implies -ign_eof): at end of stdin,
    # s_client sends close_notify and exits.
    return cmd + ["-no_ign_eof", *args]


def echo_client_cmd(port, *args):
    return [ECHO, "--connect", f"{HOST}:{port}", "--ca", PKI.ca.cert, *args]


class SServer(Proc):
    """`openssl s_server -naccept 1`, interactive (not -quiet): a line `k` or
    `K` on its stdin sends a KeyUpdate (it then prints "SSL_do_handshake ->
    1", through stdio: stdbuf makes that line-buffered), other lines go to
    the client; what the client sends is printed on stdout among s_server's
    own messages."""

    def __init__(self, msgfile):
        for _ in range(5):
            self.port = free_port()
            super().__init__([STDBUF, "-oL", OPENSSL, "s_server", "-accept", f"{HOST}:{self.port}",
                              "-cert", PKI.server.cert, "-key", PKI.server.key, "-naccept", "1",
                              "-msg", "-msgfile", msgfile], "s_server")
            if wait_until(lambda: is_listening(self.port) or self.proc.poll() is not None, STEP_TIMEOUT) \
                    and self.proc.poll() is None:
                return
            self.stop()
            if "in use" not in self.err.text():
                break
        raise AssertionError(f"openssl s_server did not start: {self.describe()}")


class MsgTrace:
    """What one side received, from an OpenSSL -msg trace: after the peer's
    Finished, the records under each of the peer's application traffic keys
    (epochs; a KeyUpdate record is the last of its epoch), the KeyUpdates
    and alerts received, and the KeyUpdates sent."""

    def __init__(self, path):
        with open(path, errors="replace") as f:
            lines = [line.rstrip("\n") for line in f if not line.startswith(" ")]
        self.epochs = []          # records per received key, in order
        self.received_key_updates = 0
        self.sent_key_updates = 0
        self.received_alerts = []
        epoch = None
        for line in lines:
            incoming = line.startswith("<<<")
            if not incoming:
                if re.search(r"Handshake \[length [0-9a-f]+\], KeyUpdate$", line):
                    self.sent_key_updates += 1
                continue
            if "RecordHeader" in line:
                if epoch is not None:
                    epoch += 1
            elif re.search(r"Handshake \[length [0-9a-f]+\], Finished$", line):
                epoch = 0
            elif re.search(r"Handshake \[length [0-9a-f]+\], KeyUpdate$", line):
                self.received_key_updates += 1
                self.epochs.append(epoch)
                epoch = 0
            elif ", Alert " in line:
                self.received_alerts.append(line.rsplit("], ", 1)[-1])
        if epoch:
            self.epochs.append(epoch)


# --- A Python ssl client on memory BIOs ------------------------------------------

class RecordTracker:
    """Counts the server's records under each of its application traffic
    keys, from the raw bytes after its Finished. An encrypted TLS 1.3
    record 22 bytes long is a KeyUpdate (4-byte header, 1-byte body, content
    type, 16-byte tag), the last record under its key; the tests never make
    a 5-byte data record, so nothing else has that length."""

    KEY_UPDATE_LEN = 22

    def __init__(self):
        self.raw = bytearray()
        self.epochs = []   # records per key, the KeyUpdate included
        self.current = 0   # records under the current key so far

    def feed(self, data):
        self.raw += data
        while len(self.raw) >= 5:
            length = int.from_bytes(self.raw[3:5], "big")
            if len(self.raw) < 5 + length:
                break
            del self.raw[:5 + length]
            self.current += 1
            if length == self.KEY_UPDATE_LEN:
                self.epochs.append(self.current)
                self.current = 0

    def records_per_key(self):
        return self.epochs + ([self.current] if self.current else [])


class BioClient:
    """Python's ssl module as a TLS 1.3 client on memory BIOs over a
    non-blocking socket: streams a payload while reading the echo (so the
    server always has data to read and to write), and reports exactly how
    the server ended the connection, even after a reset. self.records
    counts the server's records under each key."""

    def __init__(self, port):
        ctx = ssl.create_default_context(cafile=PKI.ca.cert)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.sock = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.records = RecordTracker()
        raw = bytearray()
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise AssertionError("the server closed the connection during the handshake")
                raw += data
                self.incoming.write(data)
        # OpenSSL reads record by record (no read-ahead): what it left in the
        # BIO came after the server's Finished.
        self.records.feed(raw[len(raw) - self.incoming.pending:])
        self.sock.sendall(self.outgoing.read())
        self.sock.setblocking(False)

    def close(self):
        self.sock.close()

    def stream(self, payload, close=True, first=0):
        """Sends payload while receiving; with `first`, sends that many bytes
        in one write and waits for their echo before the rest. With close,
        once everything came back, sends close_notify and waits for the
        server's. Returns (received bytes, ending): ending is
        "close_notify", "eof" (TCP FIN without close_notify), "reset",
        "alert:<reason>" or "timeout"."""
        received = bytearray()
        pending = bytearray()  # TLS bytes not yet sent
        offset = 0
        send_failed = False
        closing = False
        raw_eof = False
        deadline = time.monotonic() + STEP_TIMEOUT
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if offset < len(payload) and len(pending) < 256 * 1024 and (offset >= first or offset == 0) \
                        and len(received) >= min(offset, first):
                    chunk = payload[offset:offset + (first if offset == 0 and first else 4 * RECORD)]
                    self.tls.write(chunk)
                    offset += len(chunk)
                if close and not closing and len(received) >= len(payload):
                    closing = True
                    try:
                        self.tls.unwrap()  # Our close_notify.
                    except ssl.SSLWantReadError:
                        pass
                pending += self.outgoing.read()
                if pending and not send_failed:
                    try:
                        del pending[:self.sock.send(pending)]
                    except BlockingIOError:
                        pass
                    except OSError:
                        send_failed = True  # The server is gone; read what it sent.
                try:
                    data = self.sock.recv(256 * 1024)
                except BlockingIOError:
                    data = None
                except ConnectionResetError:
                    return bytes(received), "reset"
                if data == b"":
                    raw_eof = True
                elif data:
                    self.records.feed(data)
                    self.incoming.write(data)
                while True:
                    try:
                        got = self.tls.read(256 * 1024)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        return bytes(received), "close_notify"
                    except ssl.SSLError as e:
                        return bytes(received), f"alert:{e.reason}"
                    if not got:
                        return bytes(received), "close_notify"
                    received += got
                if raw_eof:
                    return bytes(received), "eof"
                if data is None:
                    events = selectors.EVENT_READ
                    if pending and not send_failed:
                        events |= selectors.EVENT_WRITE
                    sel.modify(self.sock, events)
                    sel.select(timeout=0.1)
            return bytes(received), "timeout"
        finally:
            sel.close()


# --- Tests ---------------------------------------------------------------------

def token(index):
    """A line of data that s_client sends as data (never a command letter)."""
    return f"line-{index:03d}-{os.urandom(8).hex()}\n".encode()


class KeyUpdateTest(unittest.TestCase):
    """Checks tls_stat deltas exactly at the end of each test."""

    def setUp(self):
        self.stat_before = read_tls_stat()
        self.tmp = tempfile.mkdtemp(prefix="ku-", dir=PKI.dir)

    def check_counters(self, processes, **expected):
        """After every process of the test has exited: each counter in
        COUNTERS grew by expected[name] (0 if not given) plus `processes`
        ktls-echo start-up probes; no kTLS socket is left open."""
        after = read_tls_stat()
        got, want = {}, {}
        for name in COUNTERS:
            if name in after:
                got[name] = after[name] - self.stat_before.get(name, 0)
                want[name] = expected.get(name, 0) + processes * PROBE.get(name, 0)
        self.assertEqual(got, want, f"tls_stat deltas ({processes} ktls-echo process(es), "
                                    f"probe adds {PROBE} each)")
        for name in ("TlsCurrTxSw", "TlsCurrRxSw"):
            self.assertEqual(after[name], self.stat_before[name], f"{name}: kTLS sockets left open")

    def check_line(self, line, who, **expected):
        expected = {"version": "TLSv1.3", "tx": "kernel", **{k: str(v) for k, v in expected.items()}}
        got = {key: line.get(key) for key in expected}
        self.assertEqual(got, expected, f"{who} line: {line}")

    def kernel_directions(self, *lines):
        return {"TlsTxSw": sum(line["tx"] == "kernel" for line in lines),
                "TlsRxSw": sum(line["rx"] == "kernel" for line in lines)}

    # s_client interactive scripts -------------------------------------------

    def s_client_script(self, client, steps, stop_after_update=False):
        """Runs steps ("data", "k", "K") through an interactive s_client.
        Each data line must come back before the next step. With
        stop_after_update, the first k/K is followed by data lines written
        right away (not waited for) and the script ends: the caller checks
        they never come back. Returns (data lines echoed, data lines sent
        after the update)."""
        echoed, after = [], []
        for step in steps:
            if step == "data":
                line = token(len(echoed))
                self.assertTrue(client.write(line), f"s_client went away: {client.describe()}")
                client.wait_for(f"the echo of {line!r}", lambda: line in client.out.bytes())
                echoed.append(line)
                continue
            updates = client.err.text().count("KEYUPDATE")
            self.assertTrue(client.write(step.encode() + b"\n"), f"s_client went away: {client.describe()}")
            # s_client reads its stdin in one read per line here: the KeyUpdate
            # goes out with the next data it writes.
            client.wait_for(f"s_client to take {step!r}", lambda: client.err.text().count("KEYUPDATE") > updates)
            if stop_after_update:
                for i in range(3):
                    line = token(100 + i)
                    after.append(line)
                    if not client.write(line):
                        break
                    time.sleep(0.05)
                break
        return echoed, after

    def assert_in_order(self, output, lines, who):
        position = 0
        for line in lines:
            found = output.find(line, position)
            self.assertGreaterEqual(found, 0, f"{who}: {line!r} missing or out of order in:\n{output[-3000:]!r}")
            self.assertEqual(output.count(line), 1, f"{who}: {line!r} more than once")
            position = found + len(line)


class RekeyKernelTest(KeyUpdateTest):
    """Kernels that can rekey: every KeyUpdate is honoured, with the kernel
    re-keyed in place."""

    STEPS = ("data", "k", "data", "K", "data", "data", "K", "data", "k", "data", "k", "K", "data")

    def s_client_updates(self, *server_args, rx):
        msgfile = os.path.join(self.tmp, "s_client.msg")
        with EchoServer(*server_args) as server:
            self.assertTrue(server.rekey, "ktls-echo says this kernel cannot rekey")
            with Proc(s_client_cmd(server.port, msgfile), "s_client") as client:
                echoed, _ = self.s_client_script(client, self.STEPS)
                client.close_stdin()  # s_client sends close_notify.
                status = client.wait_exit()
                self.assertEqual(status, 0, client.describe())
            line = server.connection_line()
        self.assert_in_order(client.out.bytes(), echoed, "s_client's stdout")
        self.assertNotRegex(client.err.text(), r"(?i)alert|error", "s_client reported an error")
        requested, not_requested = self.STEPS.count("K"), self.STEPS.count("k")
        total = sum(map(len, echoed))
        self.check_line(line, "server", rx=rx, bytes_in=total, bytes_out=total, end="close_notify",
                        key_updates_rx=requested + not_requested, key_updates_tx=requested)
        trace = MsgTrace(msgfile)
        self.assertEqual(trace.sent_key_updates, requested + not_requested, "KeyUpdates s_client sent")
        self.assertEqual(trace.received_key_updates, requested, "KeyUpdates s_client received (answers to K)")
        rx_rekeys = requested + not_requested if rx == "kernel" else 0
        self.check_counters(1, **self.kernel_directions(line), TlsTxRekeyOk=requested,
                            TlsRxRekeyOk=rx_rekeys, TlsRxRekeyReceived=rx_rekeys)

    def test_s_client_updates_rx_in_kernel(self):
        # RX offload is ktls-echo's default on a kernel that can rekey.
        self.s_client_updates(rx="kernel")

    def test_s_client_updates_rx_in_openssl(self):
        # Mixed mode: OpenSSL reads (and re-keys its RX), the kernel's TX
        # answers update_requested.
        self.s_client_updates("--no-rx", rx="user")

    # Steps: "S" s_server sends a line, "C" the client sends one, k/K s_server
    # sends a KeyUpdate.
    S_SERVER_STEPS = ("S", "C", "k", "S", "C", "K", "C", "S", "K", "S", "C", "k", "K", "C", "S", "C")

    def s_server_updates(self, *client_args, rx):
        msgfile = os.path.join(self.tmp, "s_server.msg")
        to_client, to_server = [], []
        with SServer(msgfile) as server:
            with Proc(echo_client_cmd(server.port, *client_args), "ktls-echo client") as client:
                server.wait_for("s_server's handshake", lambda: "CIPHER is" in server.out.text())
                for step in self.S_SERVER_STEPS:
                    if step in "kK":
                        done = server.out.text().count("SSL_do_handshake -> 1")
                        self.assertTrue(server.write(step.encode() + b"\n"), server.describe())
                        server.wait_for(f"s_server to send KeyUpdate {step!r}",
                                        lambda: server.out.text().count("SSL_do_handshake -> 1") > done)
                    elif step == "S":
                        line = token(len(to_client))
                        to_client.append(line)
                        self.assertTrue(server.write(line), server.describe())
                        client.wait_for(f"the client to receive {line!r}", lambda: line in client.out.bytes())
                    else:
                        line = token(500 + len(to_server))
                        to_server.append(line)
                        self.assertTrue(client.write(line), client.describe())
                        server.wait_for(f"s_server to receive {line!r}", lambda: line in server.out.bytes())
                client.close_stdin()  # The client sends close_notify, s_server answers.
                status = client.wait_exit()
                self.assertEqual(status, 0, client.describe())
            self.assertEqual(server.wait_exit(), 0, server.describe())
        self.assertEqual(client.out.bytes(), b"".join(to_client), "what the client received")
        self.assert_in_order(server.out.bytes(), to_server, "s_server's stdout")
        self.assertNotRegex(server.err.text(), r"(?i)alert|error", "s_server reported an error")
        [line] = connection_lines(client.err.text())
        requested, not_requested = self.S_SERVER_STEPS.count("K"), self.S_SERVER_STEPS.count("k")
        self.check_line(line, "client", rx=rx, bytes_in=sum(map(len, to_client)),
                        bytes_out=sum(map(len, to_server)), end="close_notify",
                        key_updates_rx=requested + not_requested, key_updates_tx=requested)
        trace = MsgTrace(msgfile)
        self.assertEqual(trace.sent_key_updates, requested + not_requested, "KeyUpdates s_server sent")
        self.assertEqual(trace.received_key_updates, requested, "KeyUpdates s_server received (answers to K)")
        rx_rekeys = requested + not_requested if rx == "kernel" else 0
        self.check_counters(1, **self.kernel_directions(line), TlsTxRekeyOk=requested,
                            TlsRxRekeyOk=rx_rekeys, TlsRxRekeyReceived=rx_rekeys)

    def test_s_server_updates_rx_in_kernel(self):
        self.s_server_updates(rx="kernel")

    def test_s_server_updates_rx_in_openssl(self):
        self.s_server_updates("--no-rx", rx="user")

    # Automatic TX key updates --------------------------------------------------

    def min_updates(self, payload_len, tickets, threshold=THRESHOLD):
        """The fewest KeyUpdates that keep payload_len bytes of data inside
        the limit: each key carries at most `threshold` records, one of them
        its KeyUpdate (the last key: the close_notify), the first key also
        the session tickets."""
        records = math.ceil(payload_len / RECORD)
        first_key = max(0, threshold - 1 - tickets)
        return math.ceil(max(0, records - first_key) / (threshold - 1))

    def test_automatic_updates_s_client(self):
        payload = os.urandom(BULK_LEN)
        msgfile = os.path.join(self.tmp, "s_client.msg")
        with EchoServer("--key-update-after", str(THRESHOLD)) as server:
            with Proc(s_client_cmd(server.port, msgfile, interactive=False), "s_client") as client:
                client.feed(payload)
                client.wait_for("the whole echo", lambda: len(client.out.data) >= len(payload) or
                                client.proc.poll() is not None)
                client.close_stdin()
                status = client.wait_exit()
                self.assertEqual(status, 0, client.describe())
            line = server.connection_line()
        got = client.out.bytes()
        self.assertEqual((len(got), sha(got)), (len(payload), sha(payload)), "the echo is not intact")
        updates = int(line.get("key_updates_tx", -1))
        self.check_line(line, "server", rx="kernel", bytes_in=len(payload), bytes_out=len(payload),
                        end="close_notify", key_updates_rx=0, key_updates_tx=updates)
        self.assertGreaterEqual(updates, self.min_updates(len(payload), 2), "too few automatic KeyUpdates")
        trace = MsgTrace(msgfile)
        self.assertEqual(trace.received_key_updates, updates, "KeyUpdates s_client received")
        self.assertEqual(trace.sent_key_updates, 0)
        self.assertEqual(len(trace.epochs), updates + 1, f"keys seen by s_client: {trace.epochs}")
        self.assertLessEqual(max(trace.epochs), THRESHOLD,
                             f"records per server key as s_client received them: {trace.epochs}")
        # s_client exits once its own close_notify is out: the server's
        # answer may or may not be in the trace.
        self.assertIn(trace.received_alerts, ([], ["warning close_notify"]))
        self.check_counters(1, **self.kernel_directions(line), TlsTxRekeyOk=updates)

    def python_automatic_updates(self, tickets, first):
        payload = os.urandom(BULK_LEN)
        with EchoServer("--key-update-after", str(THRESHOLD), "--tickets", str(tickets)) as server:
            client = BioClient(server.port)
            try:
                got, ending = client.stream(payload, first=first)
            finally:
                client.close()
            line = server.connection_line()
        self.assertEqual(ending, "close_notify", f"how the server ended; its line: {line}")
        self.assertEqual((len(got), sha(got)), (len(payload), sha(payload)), "the echo is not intact")
        updates = int(line.get("key_updates_tx", -1))
        self.check_line(line, "server", rx="kernel", bytes_in=len(payload), bytes_out=len(payload),
                        end="close_notify", key_updates_rx=0, key_updates_tx=updates)
        self.assertGreaterEqual(updates, self.min_updates(len(payload), tickets), "too few automatic KeyUpdates")
        records = client.records.records_per_key()
        self.assertEqual(len(records), updates + 1, f"keys seen by the client: {records}")
        self.assertLessEqual(max(records), THRESHOLD, f"records per server key, as the client received them "
                                                      f"(tickets included): {records}")
        self.check_counters(1, **self.kernel_directions(line), TlsTxRekeyOk=updates)

    def test_automatic_updates_python(self):
        self.python_automatic_updates(tickets=0, first=0)

    def test_automatic_updates_count_the_tickets(self):
        # The two session tickets went out under the first key before
        # offload; then one echo of two records (20000 bytes in one write):
        # the KeyUpdate must still come before sequence number THRESHOLD.
        self.python_automatic_updates(tickets=2, first=20000)

    def test_automatic_updates_both_ends_ktls(self):
        # Two ktls-echo ends, each with --key-update-after 2 (one record per
        # key: a KeyUpdate after every record): hundreds of key updates in a
        # row each way in one connection, data checked by hash.
        threshold = 2
        payload = os.urandom(4 * BULK_LEN)
        with EchoServer("--key-update-after", str(threshold)) as server:
            with Proc(echo_client_cmd(server.port, "--key-update-after", str(threshold)),
                      "ktls-echo client") as client:
                client.feed(payload)
                client.wait_for("the whole echo", lambda: len(client.out.data) >= len(payload) or
                                client.proc.poll() is not None)
                client.close_stdin()
                status = client.wait_exit()
                self.assertEqual(status, 0, client.describe())
            server_line = server.connection_line()
        got = client.out.bytes()
        self.assertEqual((len(got), sha(got)), (len(payload), sha(payload)), "the echo is not intact")
        [client_line] = connection_lines(client.err.text())
        client_updates = int(client_line.get("key_updates_tx", -1))
        server_updates = int(server_line.get("key_updates_tx", -1))
        self.check_line(client_line, "client", rx="kernel", bytes_in=len(payload), bytes_out=len(payload),
                        end="close_notify", key_updates_tx=client_updates, key_updates_rx=server_updates)
        self.check_line(server_line, "server", rx="kernel", bytes_in=len(payload), bytes_out=len(payload),
                        end="close_notify", key_updates_tx=server_updates, key_updates_rx=client_updates)
        self.assertGreaterEqual(client_updates, max(200, self.min_updates(len(payload), 0, threshold)))
        self.assertGreaterEqual(server_updates, max(200, self.min_updates(len(payload), 2, threshold)))
        self.check_counters(2, **self.kernel_directions(client_line, server_line),
                            TlsTxRekeyOk=client_updates + server_updates,
                            TlsRxRekeyOk=client_updates + server_updates,
                            TlsRxRekeyReceived=client_updates + server_updates)


class NoRekeyKernelTest(KeyUpdateTest):
    """Kernels that cannot rekey: each case ends with its named error, and
    nothing is sent under a key the peer has retired."""

    def s_client_session(self, server_args, steps, stop_after_update):
        msgfile = os.path.join(self.tmp, "s_client.msg")
        with EchoServer(*server_args) as server:
            self.assertFalse(server.rekey, "ktls-echo says this kernel can rekey")
            with Proc(s_client_cmd(server.port, msgfile), "s_client") as client:
                echoed, after = self.s_client_script(client, steps, stop_after_update)
                if stop_after_update:
                    # The server ends the connection: s_client exits by itself.
                    status = client.wait_exit()
                else:
                    client.close_stdin()
                    status = client.wait_exit()
                    self.assertEqual(status, 0, client.describe())
            line = server.connection_line()
        out = client.out.bytes()
        self.assert_in_order(out, echoed, "s_client's stdout")
        trace = MsgTrace(msgfile)
        updates = sum(step in "kK" for step in steps)
        self.assertEqual(trace.sent_key_updates, updates, f"KeyUpdates s_client sent: {client.describe()}")
        if stop_after_update:
            self.assertTrue(after, "no data written after the KeyUpdate")
        for data in after:
            self.assertNotIn(data, out, f"data sent after the KeyUpdate was echoed; server line {line}")
        return status, client, line, trace, echoed

    def test_default_mode_update_not_requested_is_fine(self):
        # RX stays in OpenSSL by default here: it follows the peer's key.
        steps = ("data", "k", "data", "k", "data")
        _, client, line, trace, echoed = self.s_client_session([], steps, stop_after_update=False)
        total = sum(map(len, echoed))
        self.check_line(line, "server", rx="user", bytes_in=total, bytes_out=total, end="close_notify",
                        key_updates_rx=2, key_updates_tx=0)
        self.assertEqual(trace.received_key_updates, 0)
        self.check_counters(1, **self.kernel_directions(line))

    def test_default_mode_update_requested_ends_with_internal_error(self):
        # update_requested cannot be answered (TX would need a new key): the
        # server ends with internal_error before sending anything more. Not
        # close_notify, which would pass the cut stream off as complete.
        status, client, line, trace, echoed = self.s_client_session([], ("data", "data", "K"), True)
        total = sum(map(len, echoed))
        self.check_line(line, "server", rx="user", bytes_out=total, key_updates_tx=0)
        self.assertRegex(line.get("end", ""), r"^error:unsupported:the_peer_asked_for_a_key_update_"
                                              r"\(update_requested\).*;_sent_\(internal_error\)$")
        self.assertEqual(trace.received_alerts, ["fatal internal_error"], client.describe())
        self.assertEqual(trace.received_key_updates, 0)
        self.assertNotEqual(status, 0, client.describe())
        self.check_counters(1, **self.kernel_directions(line))

    def test_rx_in_kernel_update_is_refused(self):
        # --rx: the kernel would decrypt what follows the KeyUpdate with the
        # retired key. The server names the error and sends internal_error.
        status, client, line, trace, echoed = self.s_client_session(["--rx"], ("data", "data", "k"), True)
        total = sum(map(len, echoed))
        self.check_line(line, "server", rx="kernel", bytes_in=total, bytes_out=total, key_updates_tx=0,
                        key_updates_rx=0)
        self.assertRegex(line.get("end", ""), r"^error:unsupported:the_peer_sent_a_TLS_1\.3_KeyUpdate,"
                                              r"_and_this_kernel_cannot_install_new_RX_keys")
        self.assertRegex(client.err.text(), r"alert internal error")
        self.assertEqual(trace.received_alerts, ["fatal internal_error"], client.describe())
        self.assertNotEqual(status, 0, client.describe())
        self.check_counters(1, **self.kernel_directions(line))

    def aead_limit_test(self, *server_args, tickets, first=0):
        payload = os.urandom(BULK_LEN)
        with EchoServer("--key-update-after", str(THRESHOLD), "--tickets", str(tickets), *server_args) as server:
            client = BioClient(server.port)
            try:
                got, ending = client.stream(payload, first=first)
            finally:
                client.close()
            line = server.connection_line()
        self.assertEqual(ending, "alert:TLSV1_ALERT_INTERNAL_ERROR", f"how the server ended; its line: {line}")
        records = client.records.records_per_key()
        self.assertEqual(len(records), 1, f"records per server key: {records}")
        self.assertLessEqual(records[0], THRESHOLD, "records under the one key (tickets, data, the alert)")
        # Under the one key: the tickets, data, and the alert, with sequence
        # numbers below THRESHOLD.
        most = (THRESHOLD - 1 - tickets) * RECORD
        self.assertTrue(0 < len(got) <= most, f"echo received {len(got)} bytes, expected 1..{most}")
        self.assertEqual(got, payload[:len(got)], "the echo received is not what was sent")
        self.check_line(line, "server", key_updates_tx=0, key_updates_rx=0)
        # bytes_out counts only WriteAll calls that succeeded: the one that
        # hit the limit may have written part of its data first.
        self.assertLessEqual(int(line.get("bytes_out", -1)), len(got), f"server line: {line}")
        self.assertRegex(line.get("end", ""), r"^error:unsupported:TX_reached_\d+_records_under_one_key,"
                                              r"_the_AEAD_limit_ktls_keeps,.*;_sent_\(internal_error\)$")
        reached = int(re.search(r"TX_reached_(\d+)_records", line["end"]).group(1))
        self.assertLess(reached, THRESHOLD, f"server line: {line}")
        self.check_counters(1, **self.kernel_directions(line))

    def test_aead_limit_closes_rx_in_openssl(self):
        self.aead_limit_test(tickets=0)

    def test_aead_limit_closes_rx_in_kernel(self):
        self.aead_limit_test("--rx", tickets=2)

    def test_aead_limit_counts_the_tickets(self):
        # Two tickets under the key before offload, then one echo of two
        # records (20000 bytes read at once from the kernel): the
        # close_notify must still come before sequence number THRESHOLD.
        self.aead_limit_test("--rx", tickets=2, first=20000)


# --- Main ----------------------------------------------------------------------

def measure_probe():
    """What one ktls-echo process (its start-up probe) adds to tls_stat."""
    added = ktls_interop.tls_stat_added(EchoServer)
    return {name: added[name] for name in COUNTERS if name in added}


def main():
    global ECHO, OPENSSL, STDBUF, REKEY
    if len(sys.argv) < 2:
        print("usage: key_update_interop.py PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]", file=sys.stderr)
        return 2
    ECHO = os.path.abspath(sys.argv[1])
    status = ktls_interop.check_kernel_tls()
    if status is not None:
        return status
    OPENSSL = ktls_interop.find_openssl()
    STDBUF = shutil.which("stdbuf") or ""
    if not OPENSSL or not STDBUF or not os.access(ECHO, os.X_OK):
        return ktls_interop.fail(f"need the openssl CLI (found: {OPENSSL or 'none'}) and stdbuf "
                                 f"(found: {STDBUF or 'none'}) in PATH, and ktls-echo at {ECHO}")
    REKEY = kernel_can_rekey(platform.release())
    print(f"kernel {platform.release()} (rekey: {'yes' if REKEY else 'no'}); {ktls_interop.openssl_version()}; "
          f"Python ssl: {ssl.OPENSSL_VERSION}", flush=True)
    # Each kernel runs the class that states its behaviour; the other one is
    # not loaded at all (a skipped test would pass silently).
    test_class = RekeyKernelTest if kernel_can_rekey(platform.release()) else NoRekeyKernelTest
    return ktls_interop.run_tests(sys.modules[__name__], sys.argv[2:], "ktls-key-update-", set_up,
                                  classes=[test_class])


def set_up(directory):
    global PKI, PROBE
    PKI = Pki(directory)
    PROBE = measure_probe()
    print(f"ktls-echo's start-up probe adds: {PROBE}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
