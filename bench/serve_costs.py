#!/usr/bin/env python3
"""serve_costs.py: issue #18, what a request, a handshake and an idle
connection cost ktls-serve and nginx, counted rather than timed.

    serve_costs.py --ktls-serve PATH [--requests N] [--connections C]
                   [--idle N] [--label L] [--json OUT] [--markdown OUT]
                   [--smoke]

Runs inside a kernel with kTLS (scripts/bench runs it in each UML guest;
kernel.bench-serve-smoke runs it tiny). Servers, each with one thread (nginx:
one worker, sendfile on, OpenSSL's kTLS; the same certificate, TLS 1.3,
TLS_AES_128_GCM_SHA256, an access-log line per request to a file):
ktls-serve with its default flags, with --rx (both directions in the
kernel on kernels where the default keeps TLS 1.3 RX in OpenSSL), with
--no-rx (TX alone in the kernel), with --open-file-cache and with
--no-offload, and nginx.

1. Syscalls per keep-alive request for a 4 KiB file, and per connection
   (TCP accept, handshake and offload, close). Each server runs three times
   under `strace -f -c`: with no client (start-up and exit), with H (16)
   concurrent clients (Python ssl, each in its own thread) that make one
   request each, and with C (4) clients that make 1 + N requests each,
   each run after a first burst of H such clients (warm-up, the same in all
   three). The differences cancel start-up, warm-up and exit exactly: a connection with one
   request costs X = (second - first) / H; per request =
   (third - first - C * X) / (C * N); per connection = X less one request.
   Exact up to how the clients' timing groups wake-ups (epoll_wait, and
   reads that find nothing yet).
2. Memory per idle keep-alive connection: the server's resident set
   (VmRSS; nginx: its worker) and the kernel's slab (/proc/meminfo Slab)
   before and after N clients that made one request each and stay open,
   after a warm-up of 64 such connections opened and closed. The slab figure
   counts both ends of each connection (the clients' sockets are plain TCP,
   the same for every server), so the differences between servers are what
   the server's TLS costs the kernel.

Offload is proved from ktls-serve's access log (tx=kernel on every line,
rx=kernel where the kernel takes it) and /proc/net/tls_stat. The JSON has
the shape of ktls-bench --json (schema ktls-bench/1), group "serve_costs",
so bench/render_report.py can merge it; --markdown writes the tables. Exit
77 when the kernel has no kTLS, or 1 where kTLS was promised
(KTLS_REQUIRE_KERNEL=1, or a UML guest: KTLS_IN_UML=1).
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from benchlib import (Failure, kernel_promised, nginx_conf, remove_work, run_main, strace_counts, tls_stat,
                      wait_port)

SUITE = "TLS_AES_128_GCM_SHA256"
FILE = "4096.bin"
SERVERS = {
    # id: (label, port, extra ktls-serve flags; None for nginx)
    "ktls_serve": ("ktls-serve", 18461, []),
    # Linux < 6.14 keeps TLS 1.3 RX in OpenSSL by default (no rekey): --rx
    # puts it in the kernel there, as the default does on 6.14 and later.
    "ktls_serve_rx": ("ktls-serve --rx", 18465, ["--rx"]),
    # TX alone in the kernel: what RX in the kernel adds to the kernel's
    # memory per connection is the difference from --rx.
    "ktls_serve_no_rx": ("ktls-serve --no-rx", 18466, ["--no-rx"]),
    "ktls_serve_cache": ("ktls-serve --open-file-cache", 18462, ["--open-file-cache", "1000"]),
    "ktls_serve_no_offload": ("ktls-serve --no-offload", 18463, ["--no-offload"]),
    "nginx": ("nginx, one worker, sendfile on, OpenSSL kTLS", 18464, None),
}


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Python's ssl has no TLS 1.3 suite setter; the servers offer only SUITE.
    return ctx


class Client:
    """One keep-alive HTTPS connection making GET requests for FILE."""

    def __init__(self, ctx, port):
        raw = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def get(self):
        self.sock.sendall(f"GET /{FILE} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 200"):
            raise Failure(f"unexpected response {lines[0]!r}")
        length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                      if k.strip().lower() == "content-length")
        while len(self.buf) < length:
            self._more()
        if len(self.buf) != length:
            raise Failure(f"{len(self.buf)} bytes after a {length}-byte body")
        self.buf = b""

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise Failure("the server closed the connection")
        self.buf += data

    def close(self):
        try:
            self.sock.unwrap()  # close_notify, and the server's
        except (OSError, ssl.SSLError):
            pass
        self.sock.close()


def run_clients(port, connections, requests_each):
    """connections clients at once, each making requests_each requests."""
    ctx = client_context()
    errors = []
    start = threading.Barrier(connections)

    def one():
        try:
            c = Client(ctx, port)
            start.wait(timeout=120)
            for _ in range(requests_each):
                c.get()
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise Failure(f"client on port {port}: {errors[0]!r}")


class Server:
    def __init__(self, sid, work, ktls_serve, www, cert, key, trace=None):
        self.sid, self.work = sid, work
        label, self.port, extra = SERVERS[sid]
        if extra is None:
            conf = os.path.join(work, "nginx.conf")
            with open(conf, "w") as f:
                f.write(nginx_conf(work, www, cert, key, self.port, SUITE, worker_connections=4096))
            cmd = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf, "-p", work,
                   "-e", os.path.join(work, "nginx-error.log")]
            self.log = os.path.join(work, "nginx-access.log")
            out = subprocess.DEVNULL
        else:
            self.log = os.path.join(work, f"{sid}.log")
            cmd = [ktls_serve, "--root", www, "--listen", f"127.0.0.1:{self.port}", "--cert", cert, "--key", key,
                   "--threads", "1"] + extra
            out = open(self.log, "a")
        if trace:
            cmd = ["strace", "-f", "-c", "-o", trace] + cmd
        self.err = open(os.path.join(work, f"{sid}.err"), "a")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=self.err)
        wait_port(self.port, self.proc, label)

    def pid(self):
        """The process that serves: nginx's worker, or ktls-serve (under
        strace, the traced child)."""
        pid = self.proc.pid
        deadline = time.monotonic() + 10
        while True:
            chain = [pid]
            while True:
                with open(f"/proc/{chain[-1]}/task/{chain[-1]}/children") as f:
                    kids = f.read().split()
                if not kids:
                    break
                chain.append(int(kids[0]))
            leaf = chain[-1]
            # nginx: master then worker; ktls-serve: itself; strace adds one.
            if self.sid != "nginx" or len(chain) >= 2 or time.monotonic() > deadline:
                return leaf
            time.sleep(0.05)

    def stop(self):
        # SIGTERM to the server itself (not strace), which then writes its table.
        target = self.proc.pid
        with open(f"/proc/{target}/task/{target}/children") as f:
            kids = f.read().split()
        if open(f"/proc/{target}/comm").read().strip() == "strace" and kids:
            target = int(kids[0])
        try:
            os.kill(target, signal.SIGTERM if self.sid != "nginx" else signal.SIGQUIT)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"{self.sid} did not stop on a signal")
        self.err.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Failure(f"no VmRSS for {pid}")


def slab_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    raise Failure("no Slab in /proc/meminfo")


def log_lines(path, offset):
    with open(path) as f:
        f.seek(offset)
        return [line.split() for line in f.read().splitlines() if line.strip()]


def check_offload(sid, path, offset, want_lines, delta, connections):
    """Every ktls-serve line says where its directions ran; tls_stat agrees."""
    if sid == "nginx":
        return f"tls_stat TlsTxSw +{delta.get('TlsTxSw', 0)} TlsRxSw +{delta.get('TlsRxSw', 0)}"
    lines = log_lines(path, offset)
    if len(lines) != want_lines:
        raise Failure(f"{sid}: {len(lines)} access-log lines, expected {want_lines}")
    where = {" ".join(t for t in line if t.startswith(("tx=", "rx="))) for line in lines}
    want_tx = "tx=user" if sid.endswith("no_offload") else "tx=kernel"
    if any(want_tx not in w for w in where):
        raise Failure(f"{sid}: access log says {where}, expected {want_tx}")
    want_rx = {"ktls_serve_rx": "rx=kernel", "ktls_serve_no_rx": "rx=user"}.get(sid)
    if want_rx and any(want_rx not in w for w in where):
        raise Failure(f"{sid}: access log says {where}, expected {want_rx}")
    tx = 0 if want_tx == "tx=user" else connections
    rx = connections if any("rx=kernel" in w for w in where) else 0
    if delta.get("TlsTxSw", 0) != tx or delta.get("TlsRxSw", 0) != rx:
        raise Failure(f"{sid}: tls_stat TlsTxSw +{delta.get('TlsTxSw', 0)} TlsRxSw +{delta.get('TlsRxSw', 0)} "
                      f"for {connections} connections logged {where}")
    return f"access log {' / '.join(sorted(where))}, tls_stat TlsTxSw +{tx} TlsRxSw +{rx}"


def syscalls(sid, work, tools, connections, requests, handshakes):
    """Per-request and per-connection syscalls, by name."""
    tables = []
    evidence = ""
    for phase, (conns, each) in enumerate(((0, 0), (handshakes, 1), (connections, 1 + requests))):
        trace = os.path.join(work, f"strace-{sid}-{phase}.txt")
        server = Server(sid, work, *tools, trace=trace)
        offset = os.path.getsize(server.log) if os.path.exists(server.log) else 0
        try:
            # Every run first serves the same burst, counted in all three and
            # so cancelled: what the counts compare is a server that has
            # served before, not one just started (whose allocator still
            # grows its heap to the burst's high-water mark: `mprotect`).
            run_clients(server.port, handshakes, 1)
            before = tls_stat()
            if conns:
                run_clients(server.port, conns, each)
            delta = {k: v - before.get(k, 0) for k, v in tls_stat().items()}
            time.sleep(0.3)  # The servers' last log lines and closes.
        finally:
            server.stop()
        if conns:
            evidence = check_offload(sid, server.log, offset, handshakes + conns * each, delta, conns)
        tables.append(strace_counts(trace))
    names = sorted(set().union(*tables))
    # A connection with one request, from the second run; the third has
    # `connections` of those plus `requests` more requests each.
    one = {n: (tables[1].get(n, 0) - tables[0].get(n, 0)) / handshakes for n in names}
    per_request = {n: (tables[2].get(n, 0) - tables[0].get(n, 0) - connections * one[n]) / (connections * requests)
                   for n in names}
    per_connection = {n: one[n] - per_request[n] for n in names}
    clean = lambda d: {k: round(v, 3) for k, v in d.items() if abs(v) >= 0.005}  # noqa: E731
    return clean(per_request), clean(per_connection), evidence


def idle_memory(sid, work, tools, idle):
    server = Server(sid, work, *tools)
    ctx = client_context()
    clients = []
    try:
        pid = server.pid()
        warm = [Client(ctx, server.port) for _ in range(64)]
        for c in warm:
            c.get()
        for c in warm:
            c.close()
        time.sleep(0.5)
        rss0, slab0 = rss_kib(pid), slab_kib()
        before = tls_stat()
        for _ in range(idle):
            c = Client(ctx, server.port)
            c.get()
            clients.append(c)
        time.sleep(1.0)
        rss1, slab1 = rss_kib(pid), slab_kib()
        delta = {k: v - before.get(k, 0) for k, v in tls_stat().items()}
        curr = {k: v for k, v in tls_stat().items() if k.startswith("TlsCurr")}
    finally:
        for c in clients:
            c.close()
        server.stop()
    return {"rss_bytes": (rss1 - rss0) * 1024 / idle, "slab_bytes": (slab1 - slab0) * 1024 / idle,
            "evidence": f"tls_stat TlsTxSw +{delta.get('TlsTxSw', 0)} TlsRxSw +{delta.get('TlsRxSw', 0)}, "
                        f"open: {' '.join(f'{k} {v}' for k, v in sorted(curr.items()))}"}


def fmt(x):
    return f"{x:.2f}".rstrip("0").rstrip(".") if x else "0"


def markdown(results, args, kernel):
    out = [f"Kernel {kernel}; {args.connections} clients at once, {args.requests} keep-alive requests each for a "
           f"4 KiB file; {args.handshakes} connections for the per-connection counts; {args.idle} idle "
           "connections.", ""]
    names = sorted({n for r in results.values() for n in r["per_request"]},
                   key=lambda n: -max(r["per_request"].get(n, 0) for r in results.values()))
    sids = list(results)
    out.append("**Syscalls per keep-alive request**")
    out.append("")
    out.append("| syscall | " + " | ".join(SERVERS[s][0] for s in sids) + " |")
    out.append("| --- |" + " ---: |" * len(sids))
    for n in names:
        out.append(f"| {n} | " + " | ".join(fmt(results[s]["per_request"].get(n, 0)) for s in sids) + " |")
    out.append("| **total** | " + " | ".join(f"**{fmt(sum(results[s]['per_request'].values()))}**" for s in sids)
               + " |")
    out.append("")
    out.append("**Syscalls per connection** (accept, handshake, offload, close_notify, close; one request taken out)")
    out.append("")
    names = sorted({n for r in results.values() for n in r["per_connection"]},
                   key=lambda n: -max(r["per_connection"].get(n, 0) for r in results.values()))
    out.append("| syscall | " + " | ".join(SERVERS[s][0] for s in sids) + " |")
    out.append("| --- |" + " ---: |" * len(sids))
    for n in names:
        out.append(f"| {n} | " + " | ".join(fmt(results[s]["per_connection"].get(n, 0)) for s in sids) + " |")
    out.append("| **total** | " + " | ".join(f"**{fmt(sum(results[s]['per_connection'].values()))}**"
                                            for s in sids) + " |")
    out.append("")
    out.append("**Memory per idle keep-alive connection** (bytes)")
    out.append("")
    out.append("| server | resident set | kernel slab (both ends) |")
    out.append("| --- | ---: | ---: |")
    for s in sids:
        m = results[s]["idle"]
        out.append(f"| {SERVERS[s][0]} | {m['rss_bytes']:,.0f} | {m['slab_bytes']:,.0f} |")
    out.append("")
    for s in sids:
        out.append(f"- {SERVERS[s][0]}: {results[s]['evidence']}; idle: {results[s]['idle']['evidence']}")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ktls-serve", required=True)
    ap.add_argument("--requests", type=int, default=100, help="keep-alive requests per client, less the first")
    ap.add_argument("--connections", type=int, default=4, help="clients at once making keep-alive requests")
    ap.add_argument("--handshakes", type=int, default=16, help="clients at once making one request each")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections for the memory figure")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--smoke", action="store_true", help="10 requests, 32 idle connections")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.idle, args.handshakes = 10, 32, 8
    if not os.path.exists("/proc/net/tls_stat"):
        if kernel_promised():
            raise Failure("kernel TLS is promised (KTLS_REQUIRE_KERNEL=1 or a UML guest) but this kernel has none")
        print("serve_costs: this kernel has no kTLS (no /proc/net/tls_stat)")
        return 77
    for tool in ("nginx", "strace", "openssl"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise Failure(f"{tool} is not installed (scripts/setup installs it)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.idle * 2 + 1024)), hard))
    sids = [s for s in args.servers.split(",") if s]
    unknown = [s for s in sids if s not in SERVERS]
    if unknown:
        raise Failure(f"unknown servers {unknown}")

    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="ktls-costs-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        os.chmod(work, 0o755)
        www = os.path.join(work, "www")
        os.mkdir(www)
        with open(os.path.join(www, FILE), "wb") as f:
            f.write(os.urandom(4096))
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tools = (args.ktls_serve, www, cert, key)
        results = {}
        for sid in sids:
            per_request, per_connection, evidence = syscalls(sid, work, tools, args.connections, args.requests,
                                                             args.handshakes)
            idle = idle_memory(sid, work, tools, args.idle)
            results[sid] = {"per_request": per_request, "per_connection": per_connection, "evidence": evidence,
                            "idle": idle}
            print(f"{SERVERS[sid][0]}: {sum(per_request.values()):.2f} syscalls per request "
                  f"({', '.join(f'{k} {fmt(v)}' for k, v in sorted(per_request.items(), key=lambda kv: -kv[1]))}); "
                  f"{sum(per_connection.values()):.1f} per connection; idle: RSS {idle['rss_bytes']:,.0f} B, "
                  f"slab {idle['slab_bytes']:,.0f} B per connection; {evidence}", flush=True)
        with open("/proc/version") as f:
            kernel = f.read().split()[2]
        text = markdown(results, args, kernel)
        print(text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        if args.json:
            cases = lambda metric: [  # noqa: E731
                {"id": s, "label": SERVERS[s][0], "status": "ok", "reason": "", "notes": results[s]["evidence"],
                 "samples": [metric(results[s])], "median": metric(results[s]), "min": metric(results[s]),
                 "max": metric(results[s])} for s in sids]
            comparisons = [
                {"id": "serve_costs.syscalls_per_request", "group": "serve_costs", "column": "syscalls/request",
                 "title": "Syscalls per keep-alive 4 KiB request", "metric": "syscalls", "unit": "syscalls",
                 "higher_is_better": False, "reference": "nginx",
                 "cases": cases(lambda r: sum(r["per_request"].values()))},
                {"id": "serve_costs.syscalls_per_connection", "group": "serve_costs",
                 "column": "syscalls/connection", "title": "Syscalls per connection (handshake, offload, close)",
                 "metric": "syscalls", "unit": "syscalls", "higher_is_better": False, "reference": "nginx",
                 "cases": cases(lambda r: sum(r["per_connection"].values()))},
                {"id": "serve_costs.idle_rss", "group": "serve_costs", "column": "idle RSS/connection",
                 "title": "Resident memory per idle keep-alive connection", "metric": "bytes", "unit": "bytes",
                 "higher_is_better": False, "reference": "nginx", "cases": cases(lambda r: r["idle"]["rss_bytes"])},
                {"id": "serve_costs.idle_slab", "group": "serve_costs", "column": "idle kernel slab/connection",
                 "title": "Kernel slab per idle keep-alive connection (both ends)", "metric": "bytes",
                 "unit": "bytes", "higher_is_better": False, "reference": "nginx",
                 "cases": cases(lambda r: r["idle"]["slab_bytes"])},
            ]
            for c in comparisons:
                ref = next((x["median"] for x in c["cases"] if x["id"] == "nginx"), None)
                for x in c["cases"]:
                    x["ratio"] = x["median"] / ref if ref else None
            report = {
                "schema": "ktls-bench/1",
                "environment": {"label": args.label, "kernel": kernel, "uml": os.environ.get("KTLS_IN_UML") == "1",
                                "uml_kernel": os.environ.get("KTLS_UML_KERNEL", ""),
                                "machine": platform.machine()},
                "parameters": {"serve_costs": {"connections": args.connections, "requests": args.requests,
                                               "handshakes": args.handshakes,
                                               "idle": args.idle, "suite": SUITE,
                                               "took_seconds": round(time.monotonic() - started)}},
                "comparisons": comparisons,
                "serve_costs": results,
            }
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return 0
    finally:
        remove_work(work, "KTLS_COSTS_KEEP")


if __name__ == "__main__":
    run_main(main, "serve_costs")
