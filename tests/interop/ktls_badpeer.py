"""Misbehaving TLS clients and a tampering TCP relay, for tests of how a ktls
server (ktls-echo today, any server that prints the same lines tomorrow)
copes with bad input on a real kTLS kernel.

The server under test runs as a ktls_interop.ServerProcess: it prints
"listening port=N" once it listens and one "peer=HOST:PORT key=value ..."
line per connection, which line_for(port) finds by the client's port.

- TlsClient: a TLS 1.3 (or, with version=ssl.TLSVersion.TLSv1_2, TLS 1.2)
  client on Python's ssl module over memory BIOs. The test owns the TCP
  socket, so it can put anything on the wire between real records
  (send_raw), stop in the middle of the handshake, cut a record short, and,
  knowing the client's secrets from the key log, seal records of its own
  under the live key at the next sequence number (seal). read_to_end() says how the
  server ended the connection: close_notify, a named alert, a FIN without
  close_notify, or a reset.
- Relay: a TCP relay between a real client and the server that passes the
  client's bytes through a tamperer, such as FlipBit (one bit of one
  application-data record), and the server's too if the tamperer wants them.
- Refragmenter: a Relay tamperer that re-sends every handshake message one
  side writes in 1-byte records, TLS 1.2 or 1.3, and re-seals that side's
  protected records at their shifted sequence numbers, knowing the secrets
  from one endpoint's key log. A handshake so fragmented is legal (RFC 5246
  6.2.1, RFC 8446 5.1), and the peer must count its records exactly.
- non_tls_bytes(): random bytes that cannot be taken for a TLS or SSLv2
  record.

Records are sealed with the AEADs of python3-cryptography (Tls13Protection,
Tls12Protection); TLS 1.3 keys come from tests/data/hkdf_reference.py
(HKDF-Expand-Label on hmac/hashlib), TLS 1.2 key blocks from
tests/data/tls12_prf_reference.py (the PRF on hmac), so nothing here shares
code with the library under test.
"""
import os
import re
import socket
import ssl
import sys
import tempfile
import threading

from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "data"))
import hkdf_reference  # noqa: E402
import tls12_prf_reference  # noqa: E402
from ktls_interop import HOST, STEP_TIMEOUT, wait_until  # noqa: E402

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

# Handshake message types (RFC 8446 4, RFC 5246 7.4).
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_SERVER_HELLO = 2
HANDSHAKE_NEW_SESSION_TICKET = 4
HANDSHAKE_FINISHED = 20
HANDSHAKE_KEY_UPDATE = 24
HANDSHAKE_HEADER_LEN = 4

TLS1_2 = 0x0303
TLS1_3 = 0x0304
EXTENSION_SUPPORTED_VERSIONS = 43


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


class Framer:
    """Cuts a byte stream into whole frames (header included) by the length
    that ends each frame's header; a partial frame stays buffered."""

    def __init__(self, header_len, length_len):
        self.header_len, self.length_len = header_len, length_len
        self.buffer = bytearray()

    def feed(self, data):
        self.buffer += data
        frames = []
        while len(self.buffer) >= self.header_len:
            end = self.header_len + int.from_bytes(self.buffer[self.header_len - self.length_len:self.header_len],
                                                   "big")
            if len(self.buffer) < end:
                break
            frames.append(bytes(self.buffer[:end]))
            del self.buffer[:end]
        return frames


class RecordSplitter(Framer):
    """Cuts a byte stream into whole records (header included)."""

    def __init__(self):
        super().__init__(RECORD_HEADER_LEN, 2)


class HandshakeAssembler(Framer):
    """Reassembles handshake messages (header included) from the payloads
    of handshake records, however they were fragmented (RFC 5246 6.2.1)."""

    def __init__(self):
        super().__init__(HANDSHAKE_HEADER_LEN, 3)


class Hello:
    """What a ClientHello or ServerHello says that record protection needs:
    random, and for a ServerHello the cipher suite (its IANA number) and the
    version (supported_versions, RFC 8446 4.2.1, else legacy_version)."""

    def __init__(self, message):
        body = message[HANDSHAKE_HEADER_LEN:]
        self.version = int.from_bytes(body[0:2], "big")
        self.random = bytes(body[2:34])
        pos = 35 + body[34]  # After the session ID.
        self.suite = None
        if message[0] != HANDSHAKE_SERVER_HELLO:
            return
        self.suite = int.from_bytes(body[pos:pos + 2], "big")
        pos += 3  # Suite, compression method.
        end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big") if pos < len(body) else pos
        pos += 2
        while pos + 4 <= end:
            ext_type, ext_len = int.from_bytes(body[pos:pos + 2], "big"), int.from_bytes(body[pos + 2:pos + 4], "big")
            if ext_type == EXTENSION_SUPPORTED_VERSIONS:
                self.version = int.from_bytes(body[pos + 4:pos + 6], "big")
            pos += 4 + ext_len


class HelloWatcher:
    """Finds the first ClientHello or ServerHello in one direction's bytes
    (hello is None until then)."""

    def __init__(self):
        self.splitter = RecordSplitter()
        self.assembler = HandshakeAssembler()
        self.hello = None

    def feed(self, data):
        if self.hello is not None:
            return data
        for rec in self.splitter.feed(data):
            if self.hello is None and rec[0] == CONTENT_HANDSHAKE:
                for message in self.assembler.feed(rec[RECORD_HEADER_LEN:]):
                    if message[0] in (HANDSHAKE_CLIENT_HELLO, HANDSHAKE_SERVER_HELLO) and self.hello is None:
                        self.hello = Hello(message)
        return data


# --- Record protection -------------------------------------------------------------

AEADS = {"AES_128_GCM": AESGCM, "AES_256_GCM": AESGCM, "CHACHA20_POLY1305": ChaCha20Poly1305,
         "AES_128_CCM": AESCCM}

# TLS 1.2 suites the kernel carries, by IANA number: the ktls Cipher name.
TLS12_SUITES = {0xC02B: "AES_128_GCM", 0xC02F: "AES_128_GCM", 0xC02C: "AES_256_GCM", 0xC030: "AES_256_GCM",
                0xCCA9: "CHACHA20_POLY1305", 0xCCA8: "CHACHA20_POLY1305", 0xC0AC: "AES_128_CCM"}
# TLS 1.3 suites by IANA number: their name in hkdf_reference.SUITES.
TLS13_SUITES = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
                0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0x1304: "TLS_AES_128_CCM_SHA256"}


def xor_seq(iv, seq):
    """The per-record nonce of RFC 8446 5.3 and RFC 7905 2: the IV XOR the
    sequence number, left-padded."""
    return bytes(a ^ b for a, b in zip(iv, seq.to_bytes(len(iv), "big")))


class Tls13Protection:
    """One direction of TLS 1.3 record protection (RFC 8446 5.2), from a
    traffic secret and the suite's name (as in hkdf_reference.SUITES)."""

    def __init__(self, suite, secret):
        [(cipher, self.hash_name, key_len)] = [(c, h, n) for s, c, h, n in hkdf_reference.SUITES if s == suite]
        self.cipher, self.secret = cipher, secret
        key = hkdf_reference.hkdf_expand_label(self.hash_name, secret, b"key", b"", key_len)
        self.iv = hkdf_reference.hkdf_expand_label(self.hash_name, secret, b"iv", b"", 12)
        self.aead = AEADS[cipher](key)

    def updated(self):
        """The protection under the next secret (KeyUpdate, RFC 8446 7.2)."""
        [suite] = [s for s, c, h, _ in hkdf_reference.SUITES if c == self.cipher and h == self.hash_name]
        digest_len = len(self.secret)
        return Tls13Protection(suite, hkdf_reference.hkdf_expand_label(self.hash_name, self.secret,
                                                                       b"traffic upd", b"", digest_len))

    def seal(self, seq, content_type, payload):
        inner = payload + bytes([content_type])
        header = record_header(CONTENT_APPLICATION_DATA, len(inner) + AEAD_TAG_LEN)
        return header + self.aead.encrypt(xor_seq(self.iv, seq), inner, header)

    def open(self, seq, record):
        """(content type, payload) of a protected record; raises
        cryptography's InvalidTag when it does not authenticate."""
        inner = self.aead.decrypt(xor_seq(self.iv, seq), record[RECORD_HEADER_LEN:], record[:RECORD_HEADER_LEN])
        inner = inner.rstrip(b"\0")
        return inner[-1], inner[:-1]


class Tls12Protection:
    """One direction of TLS 1.2 AEAD record protection: AES-GCM (RFC 5288)
    and AES-CCM (RFC 6655) with a 4-byte salt and an 8-byte explicit nonce
    in the record (the sequence number, as OpenSSL writes it),
    ChaCha20-Poly1305 with nonce = IV XOR sequence number and no explicit
    nonce (RFC 7905). AAD = seq || type || version || plaintext length
    (RFC 5246 6.2.3.3)."""

    EXPLICIT_NONCE_LEN = 8

    def __init__(self, cipher, key, iv):
        self.cipher, self.iv = cipher, iv
        self.aead = AEADS[cipher](key)

    @staticmethod
    def aad(seq, content_type, length):
        return seq.to_bytes(8, "big") + record_header(content_type, length)

    def seal(self, seq, content_type, payload):
        aad = self.aad(seq, content_type, len(payload))
        if self.cipher == "CHACHA20_POLY1305":
            body = self.aead.encrypt(xor_seq(self.iv, seq), payload, aad)
        else:
            explicit = seq.to_bytes(self.EXPLICIT_NONCE_LEN, "big")
            body = explicit + self.aead.encrypt(self.iv + explicit, payload, aad)
        return record_header(content_type, len(body)) + body

    def open(self, seq, record):
        content_type, body = record[0], record[RECORD_HEADER_LEN:]
        if self.cipher == "CHACHA20_POLY1305":
            nonce = xor_seq(self.iv, seq)
        else:
            nonce, body = self.iv + body[:self.EXPLICIT_NONCE_LEN], body[self.EXPLICIT_NONCE_LEN:]
        aad = self.aad(seq, content_type, len(body) - AEAD_TAG_LEN)
        return content_type, self.aead.decrypt(nonce, body, aad)


def tls12_protections(suite, master_secret, client_random, server_random):
    """(client write, server write) Tls12Protection from the key block,
    PRF(master_secret, "key expansion", server_random + client_random) split
    as RFC 5246 6.3 says (AEAD suites have no MAC keys)."""
    cipher = TLS12_SUITES[suite]
    [(hash_name, key_len, iv_len)] = [(h, k, i) for c, h, k, i in tls12_prf_reference.SUITES if c == cipher]
    block = tls12_prf_reference.prf(hash_name, master_secret, b"key expansion", server_random + client_random,
                                    2 * (key_len + iv_len))
    keys, ivs = block[:2 * key_len], block[2 * key_len:]
    return (Tls12Protection(cipher, keys[:key_len], ivs[:iv_len]),
            Tls12Protection(cipher, keys[key_len:], ivs[iv_len:]))


def read_keylog(path):
    """A key log file as {label: {client_random: secret}}, hex decoded."""
    secrets = {}
    with open(path) as f:
        for line in f:
            words = line.split()
            if len(words) == 3:
                secrets.setdefault(words[0], {})[bytes.fromhex(words[1])] = bytes.fromhex(words[2])
    return secrets


# --- Alerts ----------------------------------------------------------------------

def alert_name(error):
    """The alert a TLS alert error from Python's ssl module names, as in the
    RFC ("bad_record_mac"), or None when the error was not a received alert."""
    match = re.match(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)$", getattr(error, "reason", None) or "")
    return match.group(1).lower() if match else None


# --- A TLS client the test can make misbehave ---------------------------------------

class TlsClient:
    """A TLS 1.3 client on Python's ssl module over memory BIOs, connected to
    127.0.0.1:port; TLS 1.2 with version=ssl.TLSVersion.TLSv1_2 (and
    `ciphers`, an OpenSSL cipher list, to pick its suite). The key log (a
    file of its own in keylog_dir) gives its secrets, for seal()."""

    def __init__(self, port, cafile, keylog_dir, server_hostname="localhost", version=ssl.TLSVersion.TLSv1_3,
                 ciphers=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ctx.maximum_version = version
        self.tls12 = version == ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.set_ciphers(ciphers)
        ctx.load_verify_locations(cafile)
        # Python turns this on, which makes a FIN without close_notify look
        # like close_notify: the tests must tell them apart.
        ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        self.sock = socket.create_connection((HOST, port), timeout=STEP_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        # A file no earlier client had: local ports come round again, and
        # so do the addresses id() returns, so neither names it alone.
        fd, self.keylog = tempfile.mkstemp(prefix=f"keylog-{self.port}-", suffix=".txt", dir=keylog_dir)
        os.close(fd)
        ctx.keylog_filename = self.keylog
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        # The records the client sent, counted from the wire: next_seq is
        # the sequence number of its next record under its current key
        # (TLS 1.2: from the record after ChangeCipherSpec, the Finished
        # being seq 0; TLS 1.3: from the first record after the handshake).
        self.sent = RecordSplitter()
        self.counting = False
        self.next_seq = 0
        self.server_hello = HelloWatcher()
        self.protection = None

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
                self.server_hello.feed(data)
                self.incoming.write(data)
        self.flush()  # The client's Finished.
        if not self.tls12:
            self.counting, self.next_seq = True, 0
        return self

    def cipher(self):
        return self.tls.cipher()[0]

    # -- application data --

    def flush(self):
        data = self.take_outgoing()
        if data:
            self.sock.sendall(data)

    def take_outgoing(self):
        """What OpenSSL wrote since the last call; its records are counted."""
        data = self.outgoing.read()
        for rec in self.sent.feed(data):
            if self.counting:
                self.next_seq += 1
            elif self.tls12 and rec[0] == CONTENT_CHANGE_CIPHER_SPEC:
                self.counting, self.next_seq = True, 0
        return data

    def records_of(self, data):
        """What SSL_write makes of data, without sending it: its records, as
        bytes. They take up sequence numbers all the same."""
        self.tls.write(data)
        return self.take_outgoing()

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

    def traffic_protection(self, side="client"):
        """The client's write protection after the handshake (side="server":
        the server's, to open what it sends), from the key log: TLS 1.3, the
        application traffic secret and the negotiated suite; TLS 1.2, the
        key block from the master secret and both randoms (the server's
        from its ServerHello on the wire)."""
        label = "CLIENT_RANDOM" if self.tls12 else f"{side.upper()}_TRAFFIC_SECRET_0"
        secrets = list(read_keylog(self.keylog).get(label, {}).items())
        if len(secrets) != 1:
            raise AssertionError(f"expected one {label} in {self.keylog}, got {len(secrets)}")
        [(client_random, secret)] = secrets
        if not self.tls12:
            return Tls13Protection(self.cipher(), secret)
        server_hello = self.server_hello.hello
        protections = tls12_protections(server_hello.suite, secret, client_random, server_hello.random)
        return protections[0 if side == "client" else 1]

    def seal(self, content_type, payload):
        """One record of content_type carrying payload, protected under the
        client's live application key at its next sequence number (TLS 1.3:
        RFC 8446 5.2, 5.3; TLS 1.2: RFC 5246 6.2.3.3 with the suite's nonce),
        as the server's kernel will expect it."""
        if self.protection is None:
            self.protection = self.traffic_protection()
        record = self.protection.seal(self.next_seq, content_type, payload)
        self.next_seq += 1
        return record

    def seal_key_update(self, request_update=False, fragment_len=5):
        """A TLS 1.3 KeyUpdate (RFC 8446 4.6.3) sealed in records of
        fragment_len bytes (5: one record); every record sealed after it is
        under the client's next traffic secret. The server's key is
        unchanged unless request_update (and Python's ssl, which reads what
        the server sends, knows nothing of this)."""
        assert not self.tls12, "TLS 1.2 has no KeyUpdate"
        message = handshake_message(HANDSHAKE_KEY_UPDATE, bytes([1 if request_update else 0]))
        records = b"".join(self.seal(CONTENT_HANDSHAKE, message[i:i + fragment_len])
                           for i in range(0, len(message), fragment_len))
        self.protection, self.next_seq = self.protection.updated(), 0
        return records


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


class Refragmenter:
    """A Relay tamperer that re-sends every handshake message `side`
    ("client" or "server") writes in records of fragment_len bytes, and
    passes the other side's bytes through unchanged.

    Plaintext handshake records (hellos, certificates, ...) are cut up as
    they are. Protected ones are opened with the keys of that side and
    re-sealed fragment by fragment; every later record of that side under
    the same key is re-sealed at its shifted sequence number (TLS 1.2: after
    ChangeCipherSpec, the Finished and everything after it; TLS 1.3: each
    key's records, the handshake key's, then secret_0's, with
    NewSessionTicket and KeyUpdate cut up too, and the key updated after a
    KeyUpdate). Alerts and application data keep their record. The secrets
    come from `keylog`, the key log file of the endpoint on `side` (found by
    the ClientHello's random): it logs its secrets before it writes under
    them, while its peer may log them only after reading what the relay
    still holds.

    What it did, for tests to check: `messages`, one (handshake message
    type, length, records it went out in) per message of that side; `seq_shift`,
    how far the sequence numbers of that side's current key moved;
    `key_update_lookalikes`, the TLS 1.3 handshake records it sent under an
    application key whose first byte is 24, KeyUpdate's type (Linux 6.14+
    pauses kTLS RX after each); `errors`, anything that went wrong (the
    relay then ends the connection).
    """

    def __init__(self, side, keylog, fragment_len=1):
        self.side, self.keylog, self.fragment_len = side, keylog, fragment_len
        self.lock = threading.Lock()
        self.hellos = {"client": HelloWatcher(), "server": HelloWatcher()}
        self.splitter = RecordSplitter()
        self.assembler = HandshakeAssembler()
        self.pieces_in_message = 0
        self.protection = None  # That side's current record protection, once there is one.
        self.seq_in = self.seq_out = 0
        self.tls13_epoch = None  # "handshake", "application"
        self.messages = []
        self.key_update_lookalikes = 0
        self.errors = []

    @property
    def seq_shift(self):
        return self.seq_out - self.seq_in

    def feed(self, data):
        return self.relay("client", data)

    def feed_reply(self, data):
        return self.relay("server", data)

    def relay(self, sender, data):
        with self.lock:
            self.hellos[sender].feed(data)
            if sender != self.side:
                return data
            try:
                return b"".join(self.refragment(rec) for rec in self.splitter.feed(data))
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                raise

    def version(self):
        hello = self.hellos["server"].hello
        return hello.version if hello else None

    def secret(self, label):
        """label's secret for this connection from the key log; waits for
        the endpoint to write it."""
        client_random = self.hellos["client"].hello.random
        found = {}

        def logged():
            found.update(read_keylog(self.keylog).get(label, {}))
            return client_random in found

        if not wait_until(logged, STEP_TIMEOUT):
            raise AssertionError(f"no {label} for this connection in {self.keylog}")
        return found[client_random]

    def tls13_protection(self, label):
        suite = TLS13_SUITES[self.hellos["server"].hello.suite]
        return Tls13Protection(suite, self.secret(f"{self.side.upper()}_{label}"))

    def set_protection(self, protection):
        self.protection, self.seq_in, self.seq_out = protection, 0, 0

    def refragment(self, rec):
        content_type, payload = rec[0], rec[RECORD_HEADER_LEN:]
        if content_type == CONTENT_CHANGE_CIPHER_SPEC:
            if self.version() == TLS1_2:
                server_hello = self.hellos["server"].hello
                keys = tls12_protections(server_hello.suite, self.secret("CLIENT_RANDOM"),
                                         self.hellos["client"].hello.random, server_hello.random)
                self.set_protection(keys[0 if self.side == "client" else 1])
            return rec
        if self.version() == TLS1_3 and content_type == CONTENT_APPLICATION_DATA and self.protection is None:
            self.tls13_epoch = "handshake"
            self.set_protection(self.tls13_protection("HANDSHAKE_TRAFFIC_SECRET"))
        if self.protection is None:
            if content_type != CONTENT_HANDSHAKE:
                return rec
            pieces, _ = self.pieces(payload)
            return b"".join(rec[:3] + len(piece).to_bytes(2, "big") + piece for piece in pieces)
        content_type, payload = self.protection.open(self.seq_in, rec)
        self.seq_in += 1
        if content_type != CONTENT_HANDSHAKE:
            return self.seal(content_type, payload)
        pieces, completed = self.pieces(payload)
        if self.tls13_epoch == "application":
            self.key_update_lookalikes += sum(piece[0] == HANDSHAKE_KEY_UPDATE for piece in pieces)
        out = b"".join(self.seal(content_type, piece) for piece in pieces)
        # TLS 1.3 keys change after the record that ends a Finished or a
        # KeyUpdate (RFC 8446 5.1: such a message ends its record).
        if self.version() == TLS1_3:
            if HANDSHAKE_FINISHED in completed and self.tls13_epoch == "handshake":
                self.tls13_epoch = "application"
                self.set_protection(self.tls13_protection("TRAFFIC_SECRET_0"))
            elif HANDSHAKE_KEY_UPDATE in completed:
                self.set_protection(self.protection.updated())
        return out

    def pieces(self, payload):
        """(payload in fragment_len pieces, the types of the handshake
        messages they complete); notes each message in `messages`."""
        pieces = [payload[start:start + self.fragment_len] for start in range(0, len(payload), self.fragment_len)]
        completed = set()
        for piece in pieces:
            self.pieces_in_message += 1
            for message in self.assembler.feed(piece):
                self.messages.append((message[0], len(message), self.pieces_in_message))
                completed.add(message[0])
                self.pieces_in_message = 0
        return pieces, completed

    def seal(self, content_type, payload):
        record = self.protection.seal(self.seq_out, content_type, payload)
        self.seq_out += 1
        return record


class Relay:
    """A TCP relay on 127.0.0.1 to target_port, for a `with` block. Every
    client gets its own connection to the target; the client's bytes go
    through a tamperer from make_tamperer() (feed(bytes) -> bytes to pass
    on), the server's come back unchanged, or through the tamperer's
    feed_reply(bytes) if it has one. A FIN is passed on as a FIN, a reset
    or a tamperer's exception as the end of both sides. upstream_ports
    lists, per client in order of arrival, the port the target sees it come
    from."""

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
            for src, dst, tamper in ((client, upstream, tamperer and tamperer.feed),
                                     (upstream, client, getattr(tamperer, "feed_reply", None))):
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
                    data = tamperer(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except Exception:  # OSError, or the tamperer failed (it says why).
            # A reset on one side: end the other too.
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
