#!/usr/bin/env python3
"""proxy.py: TLS-terminating proxies compared (issue #16): ktls-proxy,
splicing (both directions in the kernel, --rx) and copying (--copy), against
stunnel4 and HAProxy (Debian's, OpenSSL in userspace), for a large download
and a large upload through each, one proxy thread each.

    proxy.py --ktls-proxy PATH --ktls-echo PATH [--runs N] [--mib N]
             [--label L] [--json OUT] [--strace] [--smoke]

Runs inside a kernel with kTLS (scripts/bench runs it in each UML guest;
kernel.bench-smoke runs it tiny). Every proxy gets the same certificate
(ECDSA P-256, made here) and only TLS_AES_128_GCM_SHA256, TLS 1.3. The
client is ktls-echo --connect (kTLS itself); the backend a Python thread
that sends (download) or swallows (upload) --mib MiB in plain TCP. Runs are
interleaved across the proxies so that machine load hits all alike.

Reported per proxy and direction: throughput (MiB/s, wall clock from the
client's connect to its end) and the proxy's CPU seconds (user + system,
/proc/PID/stat, deltas around the transfer) per GiB moved, medians of the
runs. The proxy's TLS work is one AES-GCM pass per byte, in the kernel for
ktls-proxy (UML's generic C AES: no AES-NI) and in OpenSSL for the others
(AES-NI). So each row also gives the CPU per GiB with that AES-GCM pass
taken out, measured here: the kernel's gcm(aes) through AF_ALG, OpenSSL's
through `openssl speed`. What is left is the proxy's own cost (copies,
syscalls, wake-ups). With --strace, one more run of each proxy under
`strace -f -c` gives its system calls per MiB (exact, unlike the timings).

Offload is proved from ktls-proxy's log line (tx=kernel rx=kernel, and
bytes spliced vs copied) and /proc/net/tls_stat. The JSON has the shape of
ktls-bench --json (schema ktls-bench/1), group "proxy". Exit 77 when the
kernel has no kTLS, or 1 where kTLS was promised (KTLS_REQUIRE_KERNEL=1, or
a UML guest: KTLS_IN_UML=1).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import Failure, kernel_promised, strace_counts, tls_stat, wait_port

SUITE = "TLS_AES_128_GCM_SHA256"
MiB = 1 << 20
GiB = 1 << 30
PROXIES = ["ktls_proxy", "ktls_proxy_copy", "stunnel4", "haproxy"]
LABELS = {
    "ktls_proxy": "ktls-proxy --rx (splice, both directions in the kernel)",
    "ktls_proxy_copy": "ktls-proxy --rx --copy (read/write through the process)",
    "stunnel4": "stunnel4 (OpenSSL in userspace)",
    "haproxy": "HAProxy, nbthread 1, mode tcp (OpenSSL in userspace)",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU of the process and its threads so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """Plain TCP backend: each connection gets `size` bytes (download) or
    has all it sends swallowed (upload); then it closes."""

    def __init__(self, mode, size, blob):
        self.mode, self.size, self.blob = mode, size, blob
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.current = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        with conn:
            if self.mode == "download":
                view = memoryview(self.blob)
                left = self.size
                while left > 0:
                    left -= conn.send(view[:min(left, len(view))])
                conn.shutdown(socket.SHUT_WR)
            self.current = 0
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                self.current += len(chunk)
            self.received.append(self.current)

    def bytes_so_far(self):
        return self.current

    def close(self):
        self.sock.close()


def start_proxy(name, work, tools, port, backend_port, trace=None):
    cert, key, combined = (os.path.join(work, n) for n in ("cert.pem", "key.pem", "combined.pem"))
    listen, backend = f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}"
    if name.startswith("ktls_proxy"):
        cmd = [tools["ktls-proxy"], "--listen", listen, "--backend", backend, "--cert", cert, "--key", key,
               "--threads", "1", "--rx", "--ciphersuites", SUITE]
        if name == "ktls_proxy_copy":
            cmd.append("--copy")
    elif name == "stunnel4":
        conf = os.path.join(work, f"stunnel-{port}.conf")
        with open(conf, "w") as f:
            f.write(f"foreground = yes\npid =\n[bench]\naccept = {listen}\nconnect = {backend}\ncert = {cert}\n"
                    f"key = {key}\nsslVersionMin = TLSv1.3\nciphersuites = {SUITE}\n")
        cmd = [tools["stunnel4"], conf]
    else:
        conf = os.path.join(work, f"haproxy-{port}.cfg")
        with open(conf, "w") as f:
            f.write(f"global\n  nbthread 1\n  ssl-default-bind-ciphersuites {SUITE}\n"
                    "  ssl-default-bind-options ssl-min-ver TLSv1.3\n"
                    "defaults\n  mode tcp\n  timeout connect 10s\n  timeout client 60s\n  timeout server 60s\n"
                    f"frontend fe\n  bind {listen} ssl crt {combined}\n  default_backend be\n"
                    f"backend be\n  server s1 {backend}\n")
        cmd = [tools["haproxy"], "-db", "-f", conf]
    if trace:
        cmd = ["strace", "-f", "-c", "-o", trace] + cmd
    log = open(os.path.join(work, f"{name}-{port}.log"), "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, name)
    except Failure as e:
        # What the proxy said is the only clue to why it did not start.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        text = log.read()
        log.close()
        raise Failure(f"{e}; its output: {text[-1500:]!r}") from None
    # strace wraps the proxy: measure the proxy itself, its only child.
    pid = proc.pid
    if trace:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
            if children:
                pid = int(children[0])
                break
            time.sleep(0.05)
    return proc, pid, log


def stop_proxy(proc, pid, log):
    # The proxy itself, also under strace (which then writes its counts).
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.seek(0)
    text = log.read()
    log.close()
    return text


def transfer(tools, port, mode, size, upload_file, backend):
    """One client connection through the proxy; returns its wall seconds.
    The client keeps its side open until all bytes arrived (download) or
    the backend has them all (upload): a FIN before the proxy offloaded
    would keep the proxy in userspace TLS (the kernel attaches the ULP only
    to an established socket)."""
    cmd = [tools["ktls-echo"], "--connect", f"127.0.0.1:{port}", "--insecure"]
    start = time.monotonic()
    client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = 0
    if mode == "download":
        while got < size:
            chunk = client.stdout.read1(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    else:
        with open(upload_file, "rb") as f:
            shutil.copyfileobj(f, client.stdin, 1 << 20)
        deadline = time.monotonic() + 600
        while backend.bytes_so_far() < size and time.monotonic() < deadline and client.poll() is None:
            time.sleep(0.01)
    client.stdin.close()
    rest = client.stdout.read()
    err = client.stderr.read()
    client.wait(timeout=600)
    wall = time.monotonic() - start
    if client.returncode != 0:
        raise Failure(f"ktls-echo client exited {client.returncode}: {err.decode()[-500:]}")
    if mode == "download" and got + len(rest) != size:
        raise Failure(f"download: got {got + len(rest)} bytes of {size}")
    return wall


def one_run(name, work, tools, mode, size, blob, upload_file, trace=None):
    backend = Backend(mode, size, blob)
    # A port free_port found free can be taken before the proxy listens on
    # it (a connection's ephemeral port comes from the same range): then
    # another.
    for attempt in range(3):
        port = free_port()
        try:
            proc, pid, log = start_proxy(name, work, tools, port, backend.port, trace)
            break
        except Failure as e:
            if "Address already in use" not in str(e) or attempt == 2:
                backend.close()
                raise
    try:
        cpu_before = cpu_seconds(pid)
        wall = transfer(tools, port, mode, size, upload_file, backend)
        time.sleep(0.2)  # Let the proxy finish its side of the close.
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        text = stop_proxy(proc, pid, log)
        backend.close()
    if mode == "upload" and backend.received[:1] != [size]:
        raise Failure(f"{name} upload: the backend got {backend.received}")
    if name.startswith("ktls_proxy"):
        lines = [dict(w.partition("=")[::2] for w in line.split()) for line in text.splitlines()
                 if " tx=" in line and "end=handshake" not in line]  # (Not wait_port's probe.)
        if not lines or lines[-1].get("tx") != "kernel" or lines[-1].get("rx") != "kernel":
            raise Failure(f"{name}: not offloaded both ways: {text[-400:]}")
        line = lines[-1]
        moved = "up" if mode == "upload" else "down"
        how = "copied" if name == "ktls_proxy_copy" else "spliced"
        if line.get(f"{moved}_{how}") != str(size):
            raise Failure(f"{name} {mode}: expected all {size} bytes {how}: {line}")
    return {"wall": wall, "cpu": cpu, "log": text}


def kernel_gcm_seconds_per_gib(size):
    """CPU seconds the kernel's gcm(aes) takes per GiB, in 16 KiB records,
    through AF_ALG: the AES-GCM pass ktls-proxy's kernel does."""
    alg = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    alg.bind(("aead", "gcm(aes)"))
    alg.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, bytes(16))
    alg.setsockopt(socket.SOL_ALG, socket.ALG_SET_AEAD_AUTHSIZE, None, 16)
    op, _ = alg.accept()
    record = bytes(16 * 1024)
    t0 = os.times()
    done = 0
    while done < size:
        op.sendmsg_afalg([bytes(13) + record], op=socket.ALG_OP_ENCRYPT, iv=bytes(12), assoclen=13)
        op.recv(13 + len(record) + 16)
        done += len(record)
    t1 = os.times()
    op.close()
    alg.close()
    # AF_ALG runs the cipher in this process's system time.
    return ((t1.user - t0.user) + (t1.system - t0.system)) * GiB / size


def openssl_gcm_seconds_per_gib():
    out = subprocess.run(["openssl", "speed", "-evp", "aes-128-gcm", "-bytes", "16384", "-seconds", "2"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"^aes-128-gcm\s+([\d.]+)k\s*$", out, re.M | re.I)
    if not m:
        raise Failure(f"openssl speed: no figure in {out[-300:]}")
    per_second = float(m.group(1)) * 1000
    return GiB / per_second


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ktls-proxy", required=True)
    ap.add_argument("--ktls-echo", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    ap.add_argument("--markdown", help="write the table as Markdown here")
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="1 run of 4 MiB: proves the benchmark runs")
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.mib = 1, 4
    if not os.path.exists("/proc/net/tls_stat"):
        print("SKIP: no kTLS (/proc/net/tls_stat missing)")
        return 1 if kernel_promised() else 77
    tools = {"ktls-proxy": args.ktls_proxy, "ktls-echo": args.ktls_echo,
             "stunnel4": shutil.which("stunnel4") or shutil.which("stunnel"), "haproxy": shutil.which("haproxy")}
    proxies = [p for p in PROXIES if p.startswith("ktls_proxy") or tools[p]]
    missing = [p for p in PROXIES if p not in proxies]
    if missing and kernel_promised():
        print(f"FAIL: not installed: {', '.join(missing)} (scripts/setup installs them)")
        return 1
    size = args.mib * MiB
    with tempfile.TemporaryDirectory(prefix="ktls-bench-proxy-") as work:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", os.path.join(work, "key.pem"), "-out", os.path.join(work, "cert.pem"),
                        "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
        with open(os.path.join(work, "combined.pem"), "w") as out:
            for n in ("cert.pem", "key.pem"):
                out.write(open(os.path.join(work, n)).read())
        blob = os.urandom(4 * MiB)
        upload_file = os.path.join(work, "upload.bin")
        with open(upload_file, "wb") as f:
            for _ in range(0, size, len(blob)):
                f.write(blob[:min(len(blob), size - f.tell())])
        stat_before = tls_stat()
        samples = {(p, m): [] for p in proxies for m in ("download", "upload")}
        logs = {}
        for run in range(args.runs):
            order = proxies[run % len(proxies):] + proxies[:run % len(proxies)]
            for mode in ("download", "upload"):
                for p in order:
                    r = one_run(p, work, tools, mode, size, blob, upload_file)
                    samples[(p, mode)].append(r)
                    logs[(p, mode)] = r["log"]
        stat_after = tls_stat()
        syscalls = {}
        if args.strace and shutil.which("strace"):
            for p in proxies:
                for mode in ("download", "upload"):
                    trace = os.path.join(work, f"strace-{p}-{mode}.txt")
                    one_run(p, work, tools, mode, size, blob, upload_file, trace=trace)
                    calls = strace_counts(trace)
                    syscalls[(p, mode)] = {k: v / args.mib for k, v in calls.items()}
        kernel_gcm = kernel_gcm_seconds_per_gib(64 * MiB)
        openssl_gcm = openssl_gcm_seconds_per_gib()

    results = []
    rows = []
    print(f"proxies, {args.mib} MiB per transfer, median of {args.runs} runs ({args.label or 'this kernel'}); "
          f"AES-128-GCM per GiB: kernel {kernel_gcm:.2f} s, OpenSSL {openssl_gcm:.2f} s")
    print(f"{'proxy':18} {'direction':9} {'MiB/s':>8} {'CPU s/GiB':>10} {'minus AES-GCM':>14} {'syscalls/MiB':>13}")
    for (p, mode), runs in samples.items():
        mibps = statistics.median(size / MiB / r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] * GiB / size for r in runs)
        gcm = kernel_gcm if p.startswith("ktls_proxy") else openssl_gcm
        calls = syscalls.get((p, mode), {})
        per_mib = f"{sum(calls.values()):.1f}" if calls else "-"
        print(f"{p:18} {mode:9} {mibps:8.1f} {cpu:10.2f} {cpu - gcm:14.2f} {per_mib:>13}")
        rows.append(f"| {LABELS[p]} | {mode} | {mibps:.1f} | {cpu:.2f} | {cpu - gcm:.2f} | {per_mib} |")
        results.append({"group": "proxy", "case": f"{p}.{mode}", "label": LABELS[p], "unit": "MiB/s",
                        "median": mibps, "cpu_seconds_per_gib": cpu, "cpu_seconds_per_gib_minus_aes_gcm": cpu - gcm,
                        "aes_gcm_seconds_per_gib": gcm, "syscalls_per_mib": calls, "runs": len(runs)})
        if p == "ktls_proxy":
            line = [ln for ln in logs[(p, mode)].splitlines() if " tx=" in ln and "end=handshake" not in ln][-1]
            print(f"    ktls-proxy's line: {line.strip()}")
    grown = {k: stat_after.get(k, 0) - stat_before.get(k, 0) for k in ("TlsTxSw", "TlsRxSw")}
    print(f"tls_stat grew by {grown}")
    if grown["TlsTxSw"] <= 0 or grown["TlsRxSw"] <= 0:
        raise Failure(f"no kTLS offload seen in tls_stat: {grown}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Proxies on {args.label or os.uname().release}: {args.mib} MiB per transfer, median of "
                    f"{args.runs} runs. AES-128-GCM per GiB: kernel (generic C in UML) {kernel_gcm:.2f} s, "
                    f"OpenSSL (AES-NI) {openssl_gcm:.2f} s. Generated by bench/proxy.py.\n\n"
                    "| proxy | direction | MiB/s | proxy CPU s/GiB | minus its AES-GCM | syscalls/MiB |\n"
                    "| --- | --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": "ktls-bench/1", "label": args.label, "results": results,
                       "kernel": os.uname().release}, f, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"FAIL: {e}")
        sys.exit(1)
