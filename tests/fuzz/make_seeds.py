#!/usr/bin/env python3
"""make_seeds.py: writes the seed corpora of tests/fuzz/corpus/ (run it from
anywhere; it rewrites the seeds it knows and leaves other files alone).

Seeds are small on purpose: each shows the fuzzer one shape of input. The
formats are described at the top of each fuzzer's source. Inputs that
once found a bug are committed next to these (named regress-*) and never
regenerated.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

KEYLOG = {
    "client-secret-sha256": b"CLIENT_TRAFFIC_SECRET_0 " + b"01" * 32 + b" " + b"ab" * 32,
    "server-secret-sha384-upper": b"SERVER_TRAFFIC_SECRET_0 " + b"A0" * 32 + b" " + b"CD" * 48,
    "secret-at-capacity": b"CLIENT_TRAFFIC_SECRET_0 " + b"02" * 32 + b" " + b"ef" * 64,
    "secret-over-capacity": b"CLIENT_TRAFFIC_SECRET_0 " + b"02" * 32 + b" " + b"ef" * 65,
    "handshake-label": b"CLIENT_HANDSHAKE_TRAFFIC_SECRET " + b"03" * 32 + b" " + b"12" * 32,
    "odd-length-secret": b"SERVER_TRAFFIC_SECRET_0 " + b"04" * 32 + b" " + b"123",
    "bad-hex": b"SERVER_TRAFFIC_SECRET_0 " + b"0g" * 32 + b" " + b"12" * 32,
    "short-random": b"SERVER_TRAFFIC_SECRET_0 " + b"05" * 31 + b" " + b"12" * 32,
    "extra-field": b"CLIENT_TRAFFIC_SECRET_0 " + b"06" * 32 + b" " + b"12" * 32 + b" x",
    "double-space": b"CLIENT_TRAFFIC_SECRET_0  " + b"07" * 32 + b" " + b"12" * 32,
    "trailing-newline": b"CLIENT_TRAFFIC_SECRET_0 " + b"08" * 32 + b" " + b"12" * 32 + b"\n",
    "empty": b"",
}

# kernel_rx: config byte, then steps.
SERVER, TLS12, REKEY, REKEY_FAILS, SENDMSG_FAILS, THRESHOLD = 1, 2, 4, 0x20, 0x40, 0x80


def cipher(n):
    return n << 3


def rec(record_type, payload):
    return bytes([0, record_type, len(payload) >> 8, len(payload) & 0xFF]) + payload


def err(index):  # kErrors: 0 FIN, EAGAIN, EBADMSG, EKEYEXPIRED, EMSGSIZE, ECONNRESET, EIO
    return bytes([1 | index << 2])


def read(index):  # kReadSizes: 1 2 3 4 5 7 16 64 100 1000 4096 16383 16384 16385 65536 100000
    return bytes([2 | index << 2])


def write(param):  # 0-60: (param+1)*700 bytes; 61 Shutdown; 62/63 UpdateKeys
    return bytes([3 | param << 2])


DATA, ALERT, HANDSHAKE, CCS = 23, 21, 22, 20
TICKET = bytes([4, 0, 0, 8]) + b"ticket!!"
KEY_UPDATE_REQUESTED = bytes([24, 0, 0, 1, 1])
KEY_UPDATE = bytes([24, 0, 0, 1, 0])

KERNEL_RX = {
    "data-then-close-notify": bytes([0]) + rec(DATA, b"hello") + rec(DATA, bytes(range(256)) * 2) + read(5)
    + rec(ALERT, b"\x01\x00") + read(9),
    "ticket-to-client": bytes([0]) + rec(HANDSHAKE, TICKET) + rec(DATA, b"after the ticket") + read(12),
    "ticket-to-server": bytes([SERVER]) + rec(HANDSHAKE, TICKET) + rec(DATA, b"never"),
    "key-update-requested-rekey": bytes([REKEY | cipher(2)]) + rec(DATA, b"before") + rec(HANDSHAKE, KEY_UPDATE_REQUESTED)
    + rec(DATA, b"after") + read(3) + write(0) + read(12),
    "key-update-no-rekey": bytes([SERVER]) + rec(HANDSHAKE, KEY_UPDATE) + rec(DATA, b"never"),
    "key-update-rekey-fails": bytes([REKEY | REKEY_FAILS | cipher(1)]) + rec(HANDSHAKE, KEY_UPDATE) + rec(DATA, b"never"),
    "key-update-then-data-same-record": bytes([REKEY]) + rec(HANDSHAKE, KEY_UPDATE + TICKET),
    "key-update-bad-request": bytes([REKEY]) + rec(HANDSHAKE, bytes([24, 0, 0, 1, 7])),
    "key-update-long-body": bytes([REKEY]) + rec(HANDSHAKE, bytes([24, 0, 0, 2, 0, 0])),
    "handshake-split-over-records": bytes([0]) + rec(HANDSHAKE, TICKET[:3]) + read(0) + rec(HANDSHAKE, TICKET[3:])
    + rec(DATA, b"ok") + read(8),
    "handshake-oversized": bytes([0]) + rec(HANDSHAKE, bytes([4, 1, 0, 1])) + rec(DATA, b"never"),
    "fatal-alert": bytes([0]) + rec(DATA, b"first") + rec(ALERT, bytes([2, 40])) + rec(DATA, b"never") + read(4),
    "alert-split": bytes([0]) + rec(ALERT, b"\x01") + read(2) + rec(ALERT, b"\x00"),
    "alert-too-long": bytes([0]) + rec(ALERT, bytes([1, 0, 0])),
    "alert-empty": bytes([0]) + rec(ALERT, b""),
    "ccs-after-handshake": bytes([0]) + rec(CCS, b"\x01") + rec(DATA, b"never"),
    "tls12-hello-request": bytes([TLS12]) + rec(HANDSHAKE, bytes([0, 0, 0, 0])),
    "tls12-client-hello": bytes([TLS12 | SERVER | cipher(3)]) + rec(HANDSHAKE, bytes([1, 0, 0, 2, 3, 3])),
    "bad-record-mac": bytes([0]) + rec(DATA, b"good") + err(2) + rec(DATA, b"never"),
    "key-expired": bytes([0]) + err(3),
    "oversized-record": bytes([SERVER]) + err(4),
    "fin-without-close-notify": bytes([0]) + rec(DATA, b"tail") + err(0) + read(10) + read(10),
    "would-block-then-data": bytes([0]) + err(1) + read(12) + rec(DATA, b"later") + read(12),
    "reset": bytes([0]) + err(5) + write(1),
    "threshold-rekey": bytes([REKEY | THRESHOLD]) + write(30) + write(30) + write(60) + write(62) + write(63),
    "threshold-no-rekey": bytes([THRESHOLD | TLS12]) + write(30) + write(60) + write(10),
    "sendmsg-fails": bytes([SENDMSG_FAILS | REKEY]) + write(3) + rec(HANDSHAKE, KEY_UPDATE_REQUESTED) + rec(ALERT, bytes([2, 20])),
    "shutdown-then-read": bytes([0]) + write(61) + rec(DATA, b"still readable") + rec(ALERT, b"\x01\x00"),
    "big-record-small-reads": bytes([0]) + rec(DATA, bytes(range(256)) * 70) + read(13) + read(0) + read(11),
}

# openssl_rx: config byte, then steps (op & 7, param = op >> 3).
O_TLS12, O_TICKETS, O_SET_KEY_FAILS, O_SENDMSG_FAILS = 4, 8, 0x10, 0x20


def o(kind, param=0):
    return bytes([kind | param << 3])


def o_data(chunks):  # (chunks) * 8 bytes of application data
    return o(0, chunks - 1) + bytes((i * 7) & 0xFF for i in range(chunks * 8))


O_KEY_UPDATE, O_KEY_UPDATE_REQUESTED = o(1, 0), o(1, 1)
O_CLOSE_NOTIFY, O_FIN = o(2), o(3)
O_READ_SMALL, O_READ_BIG, O_READ_ALL = o(5, 1), o(5, 7), o(7)
O_WRITE, O_SHUTDOWN, O_UPDATE_KEYS, O_UPDATE_KEYS_REQUESTED = o(6, 3), o(6, 29), o(6, 30), o(6, 31)


def o_raw(data):
    return o(4, len(data) - 1) + data


OPENSSL_RX = {
    "data-then-close-notify": bytes([0]) + o_data(4) + O_READ_SMALL + O_READ_ALL + O_CLOSE_NOTIFY + O_READ_ALL,
    "key-update-requested": bytes([1]) + o_data(2) + O_KEY_UPDATE_REQUESTED + o_data(3) + O_READ_ALL + O_WRITE,
    "key-update-chacha": bytes([2]) + O_KEY_UPDATE + o_data(1) + O_READ_BIG,
    "key-update-ccm-with-tickets": bytes([3 | O_TICKETS]) + O_KEY_UPDATE_REQUESTED + O_KEY_UPDATE + o_data(1) + O_READ_ALL,
    "tls12-renegotiation": bytes([O_TLS12]) + o_data(1) + O_READ_ALL + O_KEY_UPDATE + o_data(1) + O_READ_ALL,
    "tls12-ccm-data": bytes([O_TLS12 | 3]) + o_data(8) + O_READ_BIG + O_CLOSE_NOTIFY + O_READ_ALL,
    "fin-without-close-notify": bytes([0]) + o_data(2) + O_FIN + O_READ_ALL,
    "raw-bytes-on-the-wire": bytes([0]) + o_data(1) + o_raw(b"\x17\x03\x03\x00\x10" + bytes(16)) + O_READ_ALL,
    "shutdown-then-key-update-requested": bytes([0]) + O_SHUTDOWN + O_KEY_UPDATE_REQUESTED + o_data(1) + O_READ_ALL
    + O_CLOSE_NOTIFY + O_READ_ALL,
    "server-updates-keys": bytes([1]) + O_UPDATE_KEYS + O_WRITE + O_UPDATE_KEYS_REQUESTED + o_data(1) + O_READ_ALL,
    "set-key-fails": bytes([O_SET_KEY_FAILS]) + O_KEY_UPDATE_REQUESTED + O_READ_ALL + O_WRITE,
    "sendmsg-fails": bytes([O_SENDMSG_FAILS]) + O_WRITE + o_raw(b"\x15\x03\x03\x00\x02\x02\x28") + O_READ_ALL,
}


# connection_state: the format in src/conn/connection_move.h.
def moved_state(role=1, version=0x0304, cipher_index=0, flags=0, secrets=b"", counters=(0,) * 8, plaintext=b"",
                handshake=b"", alert=b"", strings=(b"TLSv1.3", b"TLS_AES_128_GCM_SHA256", b"", b""), certs=(),
                linger=(2000, 262144)):
    def be(v, n):
        return v.to_bytes(n, "big")

    def blob(b, n=4):
        return be(len(b), n) + b

    body = bytes([role]) + be(version, 2) + bytes([cipher_index, flags])
    body += b"".join(be(c, 8) for c in counters) + bytes([0, 0])
    body += blob(secrets, 1) + blob(secrets, 1)
    body += blob(plaintext) + blob(b"") + blob(handshake) + blob(alert)
    body += b"".join(blob(x, 2) for x in strings) + bytes([0]) + be(len(certs), 2) + b"".join(blob(c) for c in certs)
    body += be(linger[0], 8) + be(linger[1], 8)
    return b"KTLSCONN" + be(1, 2) + be(len(body), 4) + body


CONNECTION_STATE = {
    "server-tls13": moved_state(),
    "client-rekey-sha256": moved_state(role=0, flags=1, secrets=bytes(range(32)), counters=(5, 0, 0, 2, 3, 1, 0, 0)),
    "server-rekey-sha384": moved_state(cipher_index=1, flags=1, secrets=bytes(48),
                                       strings=(b"TLSv1.3", b"TLS_AES_256_GCM_SHA384", b"h2", b"example.com")),
    "tls12-with-plaintext": moved_state(version=0x0303, cipher_index=2, plaintext=b"GET / HTTP/1.1\r\n"),
    "partial-records": moved_state(flags=0x02 | 0x08, handshake=b"\x04\x00\x00", alert=b"\x01"),
    "with-certificates": moved_state(certs=(b"\x30\x82\x01\x00" + bytes(256), b"\x30\x03\x02\x01\x01")),
    "rekey-in-tls12": moved_state(version=0x0303, flags=1, secrets=bytes(32)),
    "format-2": moved_state()[:8] + b"\x00\x02" + moved_state()[10:],
    "truncated": moved_state()[:40],
}


def write_corpus(name, seeds):
    directory = os.path.join(HERE, "corpus", name)
    os.makedirs(directory, exist_ok=True)
    for seed, data in seeds.items():
        with open(os.path.join(directory, seed), "wb") as f:
            f.write(data)


write_corpus("keylog_line", KEYLOG)
write_corpus("kernel_rx", KERNEL_RX)
write_corpus("openssl_rx", OPENSSL_RX)
write_corpus("connection_state", CONNECTION_STATE)
