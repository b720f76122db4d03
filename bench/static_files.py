#!/usr/bin/env python3
"""static_files.py: issue #7 part 5, static files over HTTPS: ktls-serve
against nginx (Debian's, one worker, `sendfile on;`, OpenSSL's kTLS through
`ssl_conf_command Options KTLS;`) and against ktls-serve with the offload
off and with its Prometheus counters on (--metrics, to show what counting
costs), driven by wrk with keep-alive, for a 4 KiB and a 16 MiB file.

    static_files.py --ktls-serve PATH [--runs N] [--seconds-small S]
                    [--seconds-large S] [--large-bytes N] [--label L]
                    [--json OUT] [--smoke]

Runs inside a kernel with kTLS (scripts/bench runs it in each UML guest; the
smoke test kernel.bench-smoke runs it tiny). All four servers run at once on
their own ports with the same certificate (ECDSA P-256, made here with
openssl), TLS 1.3 only, and one thread each (nginx: one worker process;
ktls-serve: --threads 1). wrk (one thread, keep-alive) is made to offer only
TLS_AES_128_GCM_SHA256 through an OpenSSL configuration file, so every
server negotiates that suite; openssl s_client checks it for each server.
Each run hits the servers one after another (the order rotating from run to
run), so load on the machine spreads over all of them.

Offload is proved per run from /proc/net/tls_stat deltas and ktls-serve's
access log: every ktls-serve request must say tx=kernel and TlsTxSw must
grow by exactly the number of connections the log shows; with --no-offload
every line says tx=user and nothing grows. nginx's deltas are recorded.

The JSON has the shape of ktls-bench --json (schema ktls-bench/1), group
"static_files", so bench/render_report.py merges it with ktls-bench's file of
the same label. Exit 77 when the kernel has no kTLS, or 1 where kTLS was
promised (KTLS_REQUIRE_KERNEL=1, or inside a UML guest: KTLS_IN_UML=1).
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time

from benchlib import Failure, kernel_promised, nginx_conf, remove_work, run_main, tls_stat, wait_port

SUITE = "TLS_AES_128_GCM_SHA256"
PORTS = {"nginx": 18443, "ktls_serve": 18444, "ktls_serve_no_offload": 18445, "ktls_serve_metrics": 18446}
METRICS_PORT = 18447
SERVERS = ["nginx", "ktls_serve", "ktls_serve_no_offload", "ktls_serve_metrics"]
LABELS = {
    "nginx": "nginx, one worker, sendfile on, OpenSSL kTLS",
    "ktls_serve": "ktls-serve --threads 1",
    "ktls_serve_no_offload": "ktls-serve --threads 1 --no-offload",
    "ktls_serve_metrics": "ktls-serve --threads 1 --metrics (counting on every request)",
}


def openssl_conf(path):
    # wrk has no cipher option; OpenSSL reads this file at start
    # (OPENSSL_CONF) and applies it to every SSL_CTX: TLS 1.3, one suite.
    with open(path, "w") as f:
        f.write("openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
                f"[sys]\nMinProtocol = TLSv1.3\nCiphersuites = {SUITE}\n")


def check_suite(port, env):
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, timeout=30).stdout
    if f"Ciphersuite: {SUITE}" not in out or "TLSv1.3" not in out:
        raise Failure(f"port {port} did not negotiate TLS 1.3 {SUITE}:\n{out}")


def wrk(url, seconds, connections, env):
    run = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         timeout=seconds + 60)
    out = run.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if run.returncode != 0 or not m or not rps:
        raise Failure(f"wrk {url} failed:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        raise Failure(f"wrk {url} saw errors:\n{out}")
    return int(m.group(1)), float(rps.group(1))


def read_new(path, offset):
    with open(path) as f:
        f.seek(offset)
        text = f.read()
        return text, f.tell()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ktls-serve", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds-small", type=int, default=4, help="wrk duration for the 4 KiB file")
    parser.add_argument("--seconds-large", type=int, default=10, help="wrk duration for the large file")
    parser.add_argument("--large-bytes", type=int, default=16 << 20)
    parser.add_argument("--connections-small", type=int, default=4)
    parser.add_argument("--connections-large", type=int, default=2)
    parser.add_argument("--label", default="")
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="1 run of 1 s each, a 1 MiB large file")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.seconds_small, args.seconds_large, args.large_bytes = 1, 1, 1, 1 << 20
    if not os.path.exists("/proc/net/tls_stat"):
        if kernel_promised():
            raise Failure("kernel TLS is promised (KTLS_REQUIRE_KERNEL=1 or a UML guest) but this kernel has none "
                          "(no /proc/net/tls_stat)")
        print("static_files: this kernel has no kTLS (no /proc/net/tls_stat)")
        return 77
    for tool in ("nginx", "wrk", "openssl"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise Failure(f"{tool} is not installed (scripts/setup installs it)")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    large_name = f"{args.large_bytes >> 20} MiB" if args.large_bytes >= 1 << 20 else f"{args.large_bytes >> 10} KiB"
    sizes = [("4KiB", "4 KiB", 4096, args.seconds_small, args.connections_small),
             ("large", large_name, args.large_bytes, args.seconds_large, args.connections_large)]
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="ktls-static-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    procs = []
    try:
        os.chmod(work, 0o755)
        www = os.path.join(work, "www")
        os.mkdir(www)
        for _, _, size, _, _ in sizes:
            with open(os.path.join(www, f"{size}.bin"), "wb") as f:
                f.write(os.urandom(size))
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client_env = dict(os.environ, OPENSSL_CONF=os.path.join(work, "client.cnf"))
        openssl_conf(client_env["OPENSSL_CONF"])

        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(work, www, cert, key, PORTS["nginx"], SUITE))
        logs = {}
        nginx = subprocess.Popen([nginx_bin, "-c", conf, "-p", work, "-e", os.path.join(work, "nginx-error.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nginx)
        logs["nginx"] = os.path.join(work, "nginx-access.log")
        for server, extra in (("ktls_serve", []), ("ktls_serve_no_offload", ["--no-offload"]),
                              ("ktls_serve_metrics", ["--metrics", f"127.0.0.1:{METRICS_PORT}"])):
            logs[server] = os.path.join(work, f"{server}.log")
            with open(logs[server], "w") as out, open(os.path.join(work, f"{server}.err"), "w") as err:
                procs.append(subprocess.Popen([args.ktls_serve, "--root", www, "--listen",
                                               f"127.0.0.1:{PORTS[server]}", "--cert", cert, "--key", key,
                                               "--threads", "1"] + extra, stdout=out, stderr=err))
        for server, proc in zip(SERVERS, procs):
            wait_port(PORTS[server], proc, server)
            check_suite(PORTS[server], client_env)
        offsets = {s: os.path.getsize(logs[s]) if os.path.exists(logs[s]) else 0 for s in SERVERS}

        samples = {(sid, s): {"rps": [], "mbps": []} for sid, *_ in sizes for s in SERVERS}
        evidence = {(sid, s): [] for sid, *_ in sizes for s in SERVERS}
        for run in range(args.runs):
            for sid, name, size, seconds, conns in sizes:
                order = SERVERS[run % len(SERVERS):] + SERVERS[:run % len(SERVERS)]
                for server in order:
                    before = tls_stat()
                    requests, rps = wrk(f"https://127.0.0.1:{PORTS[server]}/{size}.bin", seconds, conns, client_env)
                    after = tls_stat()
                    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
                    # Let the servers write their last log lines: ktls-serve
                    # buffers its access log and writes it out once a second
                    # (--access-log-flush 1000, its default, which is measured).
                    time.sleep(1.3 if server.startswith("ktls_serve") else 0.2)
                    text, offsets[server] = read_new(logs[server], offsets[server])
                    deadline = time.monotonic() + 5
                    while text.count("\n") < requests and time.monotonic() < deadline:
                        time.sleep(0.2)  # A sweep that ran late in a loaded guest.
                        more, offsets[server] = read_new(logs[server], offsets[server])
                        text += more
                    lines = [line.split() for line in text.splitlines() if line.strip()]
                    peers = {line[0] for line in lines}
                    if server.startswith("ktls_serve"):
                        want = "tx=user" if server.endswith("no_offload") else "tx=kernel"
                        wrong = [line for line in lines if want not in line]
                        if wrong or not lines:
                            raise Failure(f"{server}: access log lines without {want}: {wrong[:3]}")
                        tx_want = 0 if want == "tx=user" else len(peers)
                        if delta.get("TlsTxSw", 0) != tx_want:
                            raise Failure(f"{server}: TlsTxSw +{delta.get('TlsTxSw', 0)} for {len(peers)} "
                                          f"connections, expected +{tx_want}")
                    where = sorted({" ".join(t for t in line if t.startswith(("tx=", "rx="))) for line in lines})
                    # TlsCurr* depend on whether wrk's connections were closed
                    # yet when the counters were read: left out.
                    counters = " ".join(f"{k} +{v}" for k, v in sorted(delta.items()) if not k.startswith("TlsCurr"))
                    evidence[(sid, server)].append(
                        f"tls_stat {counters or 'unchanged'} for {len(peers)} connections"
                        + (f", access log {' / '.join(where)}" if server.startswith("ktls_serve") else ""))
                    samples[(sid, server)]["rps"].append(rps)
                    samples[(sid, server)]["mbps"].append(rps * size / 1e6)
                    print(f"  {name} {server} run {run + 1}/{args.runs}: {rps:.1f} req/s, "
                          f"{rps * size / 1e6:.1f} MB/s ({requests} requests); {evidence[(sid, server)][-1]}",
                          flush=True)

        comparisons = []
        for sid, name, size, seconds, conns in sizes:
            for metric, unit, column in (("rps", "requests/s", "req/s"), ("mbps", "MB/s", "MB/s")):
                cases = []
                for server in SERVERS:
                    values = samples[(sid, server)][metric]
                    variants = sorted(set(evidence[(sid, server)]))
                    notes = ("every run: " if len(variants) == 1 else "runs: ") + " or ".join(variants)
                    cases.append({"id": server, "label": LABELS[server], "status": "ok", "reason": "",
                                  "notes": notes,
                                  "samples": values, "median": statistics.median(values), "min": min(values),
                                  "max": max(values)})
                ref = cases[0]["median"]
                for case in cases:
                    case["ratio"] = case["median"] / ref if ref > 0 else None
                comparisons.append({"id": f"static_files.{sid}_{metric}", "group": "static_files",
                                    "column": f"{name}, {column}",
                                    "title": f"{name} file, keep-alive: {unit}", "metric": metric, "unit": unit,
                                    "higher_is_better": True, "reference": "nginx", "cases": cases})
        with open("/proc/version") as f:
            kernel = f.read().split()[2]
        with open(os.path.join(work, "nginx-error.log")) as f:
            nginx_errors = [l.strip() for l in f if "[error]" in l or "[crit]" in l or "[alert]" in l
                            or "[emerg]" in l]
        if nginx_errors:
            raise Failure("nginx logged errors: " + "; ".join(nginx_errors[:5]))
        report = {
            "schema": "ktls-bench/1",
            "environment": {"label": args.label, "kernel": kernel, "uml": os.environ.get("KTLS_IN_UML") == "1",
                            "uml_kernel": os.environ.get("KTLS_UML_KERNEL", ""), "machine": platform.machine()},
            "parameters": {"static_files": {
                "runs": args.runs, "suite": SUITE, "sizes": [n for _, n, *_ in sizes],
                "seconds": {n: s for _, n, _, s, _ in sizes}, "connections": {n: c for _, n, _, _, c in sizes},
                "nginx": subprocess.run([nginx_bin, "-v"], stderr=subprocess.PIPE, text=True).stderr.strip(),
                "wrk": "wrk -t1 -c{connections} -d{seconds}s, keep-alive",
                "took_seconds": round(time.monotonic() - started)}},
            "comparisons": comparisons,
        }
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        for c in comparisons:
            print(f"{c['title']}: " + ", ".join(
                f"{x['id']} {x['median']:.1f} ({x['min']:.1f}-{x['max']:.1f}) {x['ratio']:.2f}x" for x in c["cases"]))
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        remove_work(work, "KTLS_STATIC_KEEP")


if __name__ == "__main__":
    run_main(main, "static_files")
