#!/usr/bin/env python3
"""Secrets: nothing ktls-echo prints carries key material.

usage: secrets_log_check.py PATH/TO/ktls-echo

Runs the ktls-echo server on a kernel with kTLS and puts it through
connections that exercise every kind of line it prints: TLS 1.3 and TLS 1.2
offloaded both ways and ended with close_notify, a TLS 1.2 CBC suite that
stays in userspace (the fallback reason), a peer that leaves without
close_notify (an error detail), and a record that fails authentication
(bad_record_mac). The client (Python's ssl) writes its key log, so every
secret of every connection is known: the handshake and traffic secrets, the
exporter secret, TLS 1.2's master secret, and the TLS 1.3 record keys and
IVs derived from the traffic secrets (tests/data/hkdf_reference.py, an
independent implementation). None of them may appear in ktls-echo's stdout
or stderr, raw or in hex of either case. The lines each connection must
produce are checked too, so that a run where nothing was logged fails.

Exit status: 0 when the check passed, 1 when it failed, 77 (with "SKIP:
<reason>") without kTLS, a failure instead when KTLS_REQUIRE_KERNEL=1.
"""
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "data"))
import hkdf_reference  # noqa: E402
import ktls_interop  # noqa: E402
from ktls_interop import HOST, STEP_TIMEOUT, Pump, stop_process, wait_until  # noqa: E402

# TLS 1.3 suite -> (hash, key length), as the key schedule derives keys.
TLS13_KEYS = {name: (hash_name, key_len) for name, _, hash_name, key_len in hkdf_reference.SUITES}


def client_context(keylog, version, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.keylog_filename = keylog
    return ctx


def connect(port, ctx):
    raw = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def echo_and_close(port, ctx, payload=b"secrets check " * 100):
    """Echoes payload, then ends with close_notify. Returns the TLS 1.3
    suite name (or None) for key derivation."""
    with connect(port, ctx) as tls:
        tls.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
        assert got == payload, "the echo should come back whole"
        suite = tls.cipher()[0] if tls.version() == "TLSv1.3" else None
        raw = tls.unwrap()  # close_notify
        raw.close()
    return suite


def leave_without_close_notify(port, ctx):
    tls = connect(port, ctx)
    tls.sendall(b"bye")
    assert tls.recv(3) == b"bye"
    tls.shutdown(socket.SHUT_RDWR)  # A TCP FIN, no close_notify.
    tls.close()


def corrupt_record(port, ctx):
    tls = connect(port, ctx)
    tls.sendall(b"ok")
    assert tls.recv(2) == b"ok"
    # An application-data record whose tag cannot verify.
    os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + os.urandom(32))
    try:
        tls.recv(1)  # The server's alert, or the connection's end.
    except (ssl.SSLError, OSError):
        pass
    tls.close()


def secrets_from(keylog, tls13_suites):
    """Every secret in the key log, and the TLS 1.3 keys and IVs derived from
    the traffic secrets."""
    secrets = []
    traffic = []
    with open(keylog) as f:
        for line in f:
            fields = line.split()
            if len(fields) != 3:
                continue
            label, _client_random, secret_hex = fields
            secret = bytes.fromhex(secret_hex)
            secrets.append((label, secret))
            if "TRAFFIC_SECRET" in label:
                traffic.append(secret)
    for secret in traffic:
        for suite in tls13_suites:
            hash_name, key_len = TLS13_KEYS[suite]
            if len(secret) != hkdf_reference.hashlib.new(hash_name).digest_size:
                continue
            secrets.append((f"{suite} key", hkdf_reference.hkdf_expand_label(hash_name, secret, b"key", b"", key_len)))
            secrets.append((f"{suite} iv", hkdf_reference.hkdf_expand_label(hash_name, secret, b"iv", b"", 12)))
    return secrets


def main():
    if len(sys.argv) != 2:
        print(__doc__.splitlines()[2].strip())
        return 2
    echo = sys.argv[1]
    status = ktls_interop.check_kernel_tls()
    if status is not None:
        return status
    work = tempfile.mkdtemp(prefix="ktls-secrets-")
    keylog = os.path.join(work, "keylog.txt")
    proc = subprocess.Popen([echo, "--listen", f"{HOST}:0", "--cipher-list", "ALL"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Pump(proc.stdout), Pump(proc.stderr)
    out.start()
    err.start()
    try:
        wait_until(lambda: "listening port=" in err.text() or proc.poll() is not None, STEP_TIMEOUT)
        match = re.search(r"^listening port=(\d+)$", err.text(), re.M)
        if not match:
            print(f"FAIL: ktls-echo did not start:\n{err.text()}")
            return 1
        port = int(match.group(1))
        suites = set()
        tls13 = client_context(keylog, ssl.TLSVersion.TLSv1_3)
        tls12 = client_context(keylog, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
        cbc = client_context(keylog, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA")
        suites.add(echo_and_close(port, tls13))
        echo_and_close(port, tls12)
        echo_and_close(port, cbc)
        leave_without_close_notify(port, tls13)
        corrupt_record(port, tls13)
        wait_until(lambda: len(re.findall(r"^peer=", err.text(), re.M)) >= 5, STEP_TIMEOUT)
    finally:
        stop_process(proc, (out, err))
    log = out.bytes() + err.bytes()
    text = log.decode(errors="replace")

    failures = []
    expected = [r"tx=kernel rx=kernel .*end=close_notify", r"cipher not offloadable", r"end=truncated",
                r"bad_record_mac"]
    for pattern in expected:
        if not re.search(pattern, text):
            failures.append(f"no line matches {pattern!r}: the connections did not run as planned")
    secrets = secrets_from(keylog, {s for s in suites if s})
    labels = {label for label, _ in secrets}
    for needed in ("CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "CLIENT_RANDOM"):
        if needed not in labels:
            failures.append(f"the key log has no {needed}: the check would prove nothing")
    for label, secret in secrets:
        for form, needle in (("raw", secret), ("hex", secret.hex().encode()), ("HEX", secret.hex().upper().encode())):
            if needle in log:
                failures.append(f"ktls-echo's output holds the {label} ({form})")
    print(text, end="")
    print(f"checked {len(secrets)} secrets and keys against {len(log)} bytes of ktls-echo output")
    for failure in failures:
        print(f"FAIL: {failure}")
    print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
