"""Misbehaving TLS clients and a tampering TCP relay, for tests of how a ktls
server (ktls-echo today, any server that prints the same lines tomorrow)
copes with bad input on a real kTLS kernel.

The server under test runs as a ktls_interop.ServerProcess: it prints
"listening port=N" once it listens and one "peer=HOST:PORT key=value ..."
line per connection, which line_for(port) finds by the client's port.

- TlsClient: a TLS 1.3 client on Python's ssl module over memory BIOs. The
  test owns the TCP socket, so it can put anything on the wire between real
  records (send_raw), stop in the middle of the handshake, cut a record
  short, and, knowing the client's traffic secret from the key log, seal
  records of its own under the live key (seal). read_to_end() says how the
  server ended the connection: close_notify, a named alert, a FIN without
  close_notify, or a reset.
- Relay: a TCP relay between a real client and the server that passes the
  client's bytes through a tamperer, such as FlipBit (one bit of one
  application-data record).
- non_tls_bytes(): random bytes that cannot be taken for a TLS or SSLv2
  record.

Records are sealed with the AEADs of python3-cryptography; the key and IV
come from tests/data/hkdf_reference.py (HKDF-Expand-Label on hmac/hashlib),
so nothing here shares code with the library under test.
"""
import os
import re
import socket
import ssl
import sys
import threading

from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "data"))
import hkdf_reference  # noqa: E402
from ktls_interop import HOST, STEP_TIMEOUT  # noqa: E402

# --- The record layer (RFC 8446 5) ---------------------------------------------

RECORD_HEADER_LEN = 5
MAX_PLAINTEXT_LEN = 1 << 14
# The longest TLS 1.3 record body an endpoint may accept (RFC 8446 5.2).
MAX_CIPHERTEXT_LEN = MAX_PLAINTEXT_LEN + 256
AEAD_TAG_LEN = 16

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23

# Handshake message types (RFC 8446 4).
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_NEW_SESSION_TICKET = 4
HANDSHAKE_FINISHED = 20


def record_header(content_type, length, version=0x0303):
    return bytes([content_type]) + version.to_bytes(2, "big") + length.to_bytes(2, "big")


def handshake_message(msg_type, body):
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def non_tls_bytes(length):
    """Random bytes whose start is neither a TLS record header (second byte
    3, the major version) nor an SSLv2 ClientHello (high bit set, third byte
    1): what a server reads from a client that speaks something else."""
    while True:
        data = os.urandom(length)
        if data[1] != 3 and not (data[0] & 0x80 and data[2] == 1):
            return data


class RecordSplitter:
    """Cuts a byte stream into whole records (header included) by the length
    in each header; a partial record stays buffered."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data):
        self.buffer += data
        records = []
        while len(self.buffer) >= RECORD_HEADER_LEN:
            end = RECORD_HEADER_LEN + int.from_bytes(self.buffer[3:5], "big")
            if len(self.buffer) < end:
                break
            records.append(bytes(self.buffer[:end]))
            del self.buffer[:end]
        return records


# --- Alerts ----------------------------------------------------------------------

def alert_name(error):
    """The alert a TLS alert error from Python's ssl module names, as in the
    RFC ("bad_record_mac"), or None when the error was not a received alert."""
    match = re.match(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)$", getattr(error, "reason", None) or "")
    return match.group(1).lower() if match else None


# --- A TLS 1.3 client the test can make misbehave ---------------------------------

AEADS = {"AES_128_GCM": AESGCM, "AES_256_GCM": AESGCM, "CHACHA20_POLY1305": ChaCha20Poly1305,
         "AES_128_CCM": AESCCM}


class TlsClient:
    """A TLS 1.3 client on Python's ssl module over memory BIOs, connected to
    127.0.0.1:port. The key log (a file of its own in keylog_dir) gives its
    traffic secret, for seal()."""

    def __init__(self, port, cafile, keylog_dir, server_hostname="localhost"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile)
        # Python turns this on, which makes a FIN without close_notify look
        # like close_notify: the tests must tell them apart.
        ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        self.sock = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.keylog = os.path.join(keylog_dir, f"keylog-{self.port}-{id(self)}.txt")
        ctx.keylog_filename = self.keylog
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.next_seq = 0  # Of the next record under the client's application traffic key.
        self.aead = None

    # -- the handshake --

    def start_handshake(self):
        """Sends the ClientHello, and no more."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.flush()

    def handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection during the handshake")
                self.incoming.write(data)
        self.flush()  # The client's Finished.
        return self

    def cipher(self):
        return self.tls.cipher()[0]

    # -- application data --

    def flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def records_of(self, data):
        """What SSL_write makes of data, without sending it: its records, as
        bytes. They take up sequence numbers all the same."""
        self.tls.write(data)
        self.next_seq += -(-len(data) // MAX_PLAINTEXT_LEN)
        return self.outgoing.read()

    def send(self, data):
        self.sock.sendall(self.records_of(data))

    def send_raw(self, data):
        self.sock.sendall(data)

    def recv_exactly(self, length):
        """length bytes of application data; fewer only if the connection
        ended first (see read_to_end for how)."""
        got, _ = self.read(length)
        return got

    def echo(self, data):
        """Sends data and reads it back (a lockstep echo)."""
        self.send(data)
        return self.recv_exactly(len(data))

    def read(self, limit=None):
        """Reads application data until limit bytes (None: no limit) or the
        end of the connection. Returns (data, ending), ending None while the
        connection lasts, else "close_notify", "alert:<name>" (a fatal alert
        from the server), "eof" (a FIN without close_notify), "reset",
        "timeout", or "error:<reason>" (the client's own TLS error)."""
        data = bytearray()
        while limit is None or len(data) < limit:
            try:
                chunk = self.tls.read(65536 if limit is None else limit - len(data))
                if not chunk:
                    # The server's close_notify before ours (once both were
                    # sent, Python raises SSLZeroReturnError instead).
                    return bytes(data), "close_notify"
                data += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(data), "close_notify"
            except ssl.SSLEOFError:
                return bytes(data), "eof"
            except ssl.SSLError as e:
                if e.reason == "UNEXPECTED_EOF_WHILE_READING":
                    return bytes(data), "eof"
                name = alert_name(e)
                return bytes(data), f"alert:{name}" if name else f"error:{e.reason}"
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(data), "reset"
            except socket.timeout:
                return bytes(data), "timeout"
            if chunk:
                self.incoming.write(chunk)
            else:
                self.incoming.write_eof()
        return bytes(data), None

    def read_to_end(self):
        return self.read(None)

    def close_notify(self):
        """Sends close_notify (the server then answers with its own)."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.flush()

    def close(self):
        self.sock.close()

    # -- records of our own --

    def traffic_keys(self):
        """(AEAD, iv) of the client's application traffic secret, from the
        key log and the negotiated suite."""
        with open(self.keylog) as f:
            secrets = [line.split()[2] for line in f if line.startswith("CLIENT_TRAFFIC_SECRET_0 ")]
        if len(secrets) != 1:
            raise AssertionError(f"expected one CLIENT_TRAFFIC_SECRET_0 in {self.keylog}, got {len(secrets)}")
        suite = self.cipher()
        [(cipher, hash_name, key_len)] = [(c, h, n) for s, c, h, n in hkdf_reference.SUITES if s == suite]
        secret = bytes.fromhex(secrets[0])
        key = hkdf_reference.hkdf_expand_label(hash_name, secret, b"key", b"", key_len)
        iv = hkdf_reference.hkdf_expand_label(hash_name, secret, b"iv", b"", 12)
        return AEADS[cipher](key), iv

    def seal(self, content_type, payload):
        """One TLS 1.3 record of content_type carrying payload, protected
        under the client's live application key at its next sequence number
        (RFC 8446 5.2, 5.3), as the server's kernel will expect it."""
        if self.aead is None:
            self.aead, self.iv = self.traffic_keys()
        nonce = bytes(a ^ b for a, b in zip(self.iv, self.next_seq.to_bytes(12, "big")))
        inner = payload + bytes([content_type])
        header = record_header(CONTENT_APPLICATION_DATA, len(inner) + AEAD_TAG_LEN)
        self.next_seq += 1
        return header + self.aead.encrypt(nonce, inner, header)


def read_until_closed(sock):
    """Everything the peer sends on a raw socket until it closes; (data,
    "eof" | "reset" | "timeout")."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), "reset"
        except socket.timeout:
            return bytes(data), "timeout"
        if not chunk:
            return bytes(data), "eof"
        data += chunk


# --- A relay that tampers with what the client sends -------------------------------

class FlipBit:
    """A Relay tamperer: flips one bit in the ciphertext of the client's
    application-data record number `index`, counting from 0, and passes
    everything else unchanged. In TLS 1.3 the client's Finished is its first
    application-data record (index 0), so index 1 is its first record of
    data. `flipped` is set once done; original and corrupted keep the
    record before and after."""

    def __init__(self, index):
        self.index = index
        self.splitter = RecordSplitter()
        self.seen = 0
        self.flipped = threading.Event()
        self.original = self.corrupted = None

    def feed(self, data):
        out = bytearray()
        for rec in self.splitter.feed(data):
            if rec[0] == CONTENT_APPLICATION_DATA:
                if self.seen == self.index:
                    corrupted = bytearray(rec)
                    # The middle of the ciphertext, before the tag.
                    corrupted[RECORD_HEADER_LEN + (len(rec) - RECORD_HEADER_LEN - AEAD_TAG_LEN) // 2] ^= 0x01
                    self.original, self.corrupted = rec, bytes(corrupted)
                    rec = self.corrupted
                    self.flipped.set()
                self.seen += 1
            out += rec
        return bytes(out)


class Relay:
    """A TCP relay on 127.0.0.1 to target_port, for a `with` block. Every
    client gets its own connection to the target; the client's bytes go
    through a tamperer from make_tamperer() (feed(bytes) -> bytes to pass
    on), the server's come back unchanged. A FIN is passed on as a FIN, a
    reset as the end of both sides. upstream_ports lists, per client in order of arrival, the port the
    target sees it come from."""

    def __init__(self, target_port, make_tamperer=None):
        self.target_port = target_port
        self.make_tamperer = make_tamperer
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_ports = []
        self.tamperers = []
        self.threads = []
        self.sockets = []
        self.lock = threading.Lock()
        self.accepted = threading.Condition(self.lock)

    def __enter__(self):
        acceptor = threading.Thread(target=self.accept_loop, daemon=True)
        acceptor.start()
        self.threads.append(acceptor)
        return self

    def __exit__(self, *exc):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # Wakes accept(); close() alone does not.
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self.threads:
            t.join(timeout=STEP_TIMEOUT)
        for sock in self.sockets:
            sock.close()

    def wait_for_clients(self, count):
        with self.accepted:
            return self.accepted.wait_for(lambda: len(self.upstream_ports) >= count, STEP_TIMEOUT)

    def accept_loop(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # The listener was closed.
            upstream = socket.create_connection((HOST, self.target_port), timeout=STEP_TIMEOUT)
            tamperer = self.make_tamperer() if self.make_tamperer else None
            with self.accepted:
                self.sockets += [client, upstream]
                self.upstream_ports.append(upstream.getsockname()[1])
                self.tamperers.append(tamperer)
                self.accepted.notify_all()
            for src, dst, tamper in ((client, upstream, tamperer), (upstream, client, None)):
                t = threading.Thread(target=self.pump, args=(src, dst, tamper), daemon=True)
                t.start()
                with self.lock:
                    self.threads.append(t)

    @staticmethod
    def pump(src, dst, tamperer):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if tamperer is not None:
                    data = tamperer.feed(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset on one side: end the other too.
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
