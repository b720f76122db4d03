#!/usr/bin/env python3
"""ktls-echo built without kernel TLS (KTLS_KERNEL_TLS=OFF), on the host,
against real peers: Python's ssl (TLS 1.3 and TLS 1.2) and ktls-echo's own
client. Every byte must come back, each connection must end with
close_notify, and both ends must say that both directions ran in OpenSSL
because the library was "built without kernel TLS".

usage: userspace_echo_interop.py PATH/TO/ktls-echo
"""
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time

REASON = "built without kernel TLS"
PIECE = 100_003  # Not a record multiple.


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


class Server:
    """ktls-echo --listen 127.0.0.1:0, its stderr collected line by line."""

    def __init__(self, echo):
        self.proc = subprocess.Popen([echo, "--listen", "127.0.0.1:0", "--idle-timeout", "10000"],
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()
        port = self.wait_for(r"listening port=(\d+)")
        self.port = int(port.group(1))

    def _collect(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern, after=0, timeout=20):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[after:]:
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    fail(f"ktls-echo never printed /{pattern}/; it printed: {self.lines}")
                self.cond.wait(left)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def python_peer(port, version, payload):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # ktls-echo's certificate is self-signed.
    context.minimum_version = version
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        tls = context.wrap_socket(raw)
        # One piece at a time, its echo read back before the next: an
        # SSLSocket must not be read and written from two threads at once.
        got = bytearray()
        for offset in range(0, len(payload), PIECE):
            piece = payload[offset:offset + PIECE]
            tls.sendall(piece)
            want = len(got) + len(piece)
            while len(got) < want:
                chunk = tls.recv(want - len(got))
                if not chunk:
                    fail(f"Python ssl {version.name}: the server closed after {len(got)} bytes")
                got.extend(chunk)
        if bytes(got) != payload:
            fail(f"Python ssl {version.name}: {len(got)} bytes back of {len(payload)}, or different")
        tls.unwrap()  # close_notify, then the server's.
        return tls


def check_server_saw(server, after, version_name, nbytes):
    offload = server.wait_for(r"offload: tx=(\w+) rx=(\w+) reason=\"([^\"]*)\"", after)
    if offload.group(1) != "user" or offload.group(2) != "user" or REASON not in offload.group(3):
        fail(f"{version_name}: the server's offload line says {offload.group(0)!r}")
    line = server.wait_for(r"^peer=.* version=(\S+) .* tx=(\w+) rx=(\w+) bytes_in=(\d+) bytes_out=(\d+) .*end=(\S+)",
                           after)
    version, tx, rx, bytes_in, bytes_out, end = line.groups()
    if (version, tx, rx, end) != (version_name, "user", "user", "close_notify") or \
            int(bytes_in) != nbytes or int(bytes_out) != nbytes:
        fail(f"{version_name}: the server's connection line is {line.group(0)!r}")


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    echo = sys.argv[1]
    server = Server(echo)
    try:
        payload = os.urandom(3 * 1024 * 1024 + 7)
        for version, name in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
            after = len(server.lines)
            python_peer(server.port, version, payload)
            check_server_saw(server, after, name, len(payload))
            print(f"ok: Python ssl {name}: {len(payload)} bytes echoed, both directions in OpenSSL")

        # ktls-echo's client: the same library on both ends.
        after = len(server.lines)
        data = os.urandom(200 * 1024)
        client = subprocess.run([echo, "--connect", f"127.0.0.1:{server.port}", "--insecure"], input=data,
                                capture_output=True, timeout=60)
        if client.returncode != 0 or client.stdout != data:
            fail(f"ktls-echo --connect: exit {client.returncode}, {len(client.stdout)} bytes of {len(data)} back; "
                 f"stderr {client.stderr.decode(errors='replace')!r}")
        client_err = client.stderr.decode(errors="replace")
        if not re.search(r"offload: tx=user rx=user reason=\"[^\"]*" + REASON, client_err) or \
                not re.search(r"tx=user rx=user .*end=close_notify", client_err):
            fail(f"ktls-echo --connect does not say it ran in OpenSSL, built without kernel TLS: {client_err!r}")
        check_server_saw(server, after, "TLSv1.3", len(data))
        print(f"ok: ktls-echo client: {len(data)} bytes echoed, both ends in OpenSSL")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
