#!/usr/bin/env python3
"""smoke_test.py: a tiny run of every ktls-bench case and of the static
file benchmark (bench/static_files.py: ktls-serve, nginx, wrk), then the
report renderer on their output, so that none of them can rot unnoticed.

    smoke_test.py PATH/TO/ktls-bench PATH/TO/ktls-serve

Runs inside a kernel with kTLS (CTest: kernel.bench-smoke.6.1 and .7.2).
It checks what the benchmark claims to measure, never how fast anything
was: every comparison is there, every ktls case was measured (ktls-bench
itself fails a case whose offload did not happen or that
/proc/net/tls_stat did not count), every case that was not measured says
why, and the renderer fills every generated block of docs/BENCHMARKS.md
and draws the chart. Exit 77 (skip) when ktls-bench reports no kTLS, or 1
where kTLS was promised (KTLS_REQUIRE_KERNEL=1, or a UML guest).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

IDLE_CASES = ["openssl", "openssl_release_buffers", "ktls", "openssl_client_cert", "ktls_client_cert",
              "ktls_client_cert_not_kept"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from benchlib import kernel_promised  # noqa: E402


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: smoke_test.py PATH/TO/ktls-bench PATH/TO/ktls-serve")
    bench, serve = sys.argv[1], sys.argv[2]
    work = tempfile.mkdtemp(prefix="ktls-bench-smoke-")
    try:
        result = os.path.join(work, "smoke.json")
        run = subprocess.run([bench, "--runs", "1", "--bulk-mib", "1", "--handshakes", "4", "--idle-connections",
                              "8", "--label", "smoke", "--json", result], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=240)
        print(run.stdout)
        if run.returncode == 77:
            if kernel_promised():
                fail("ktls-bench found no kTLS where it was promised (KTLS_REQUIRE_KERNEL=1 or a UML guest)")
            sys.exit(77)
        if run.returncode != 0:
            fail(f"ktls-bench exited {run.returncode}")
        with open(result) as f:
            data = json.load(f)

        suites = data["parameters"]["suites"]
        if "TLS_AES_128_GCM_SHA256" not in suites:
            fail(f"AES-128-GCM was not measured (suites: {suites})")
        ciphers = {s: n for s, n in [("TLS_AES_128_GCM_SHA256", "AES_128_GCM"), ("TLS_AES_256_GCM_SHA384",
                   "AES_256_GCM"), ("TLS_CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305"),
                   ("TLS_AES_128_CCM_SHA256", "AES_128_CCM")]}
        want = {"handshakes.full": ["openssl", "ktls"], "handshakes.resumed": ["openssl", "ktls"],
                "handshakes.client_resumed": ["openssl", "ktls"],
                "handshake_syscalls.server_full": ["openssl", "ktls"],
                "handshake_syscalls.server_resumed": ["openssl", "ktls"],
                "handshake_syscalls.client_full": ["openssl", "ktls"],
                "handshake_syscalls.client_resumed": ["openssl", "ktls"],
                "client_memory.heap": ["openssl", "ktls", "ktls_no_tickets"],
                "idle_memory.heap": IDLE_CASES, "idle_memory.rss": IDLE_CASES, "idle_memory.kernel": IDLE_CASES,
                "moves.rate": ["export_import", "unix_socket"], "moves.state_bytes": ["export_import", "unix_socket"]}
        for suite in suites:
            name = ciphers[suite]
            want[f"bulk_send.{name}"] = ["af_alg", "ktls_write", "ktls_sendfile", "openssl_write",
                                         "openssl_ktls_write", "openssl_ktls_sendfile"]
            want[f"bulk_receive.{name}"] = ["openssl_read", "openssl_read_ahead", "ktls_read"]
            want[f"bulk_receive_no_pad.{name}"] = ["ktls_read", "ktls_read_no_pad", "ktls_read_padding_peer",
                                                   "ktls_read_no_pad_padding_peer"]
        got = {c["id"]: c for c in data["comparisons"]}
        for comparison_id, case_ids in want.items():
            comparison = got.get(comparison_id)
            if comparison is None:
                fail(f"comparison {comparison_id} missing")
            cases = {c["id"]: c for c in comparison["cases"]}
            for case_id in case_ids:
                case = cases.get(case_id)
                if case is None:
                    fail(f"{comparison_id}: case {case_id} missing")
                if case["status"] == "ok":
                    if len(case["samples"]) != 1 or not case["min"] <= case["median"] <= case["max"]:
                        fail(f"{comparison_id}/{case_id}: bad summary {case}")
                # No-pad cases are unavailable where the probe found it
                # unsafe (6.1), with the reason; every other ktls case runs.
                elif ((case_id.startswith("ktls") and "_no_pad" not in case_id) or case_id.startswith("openssl_read")
                      or case_id == "openssl"):
                    fail(f"{comparison_id}/{case_id} not measured: {case.get('reason')}")
                elif not case.get("reason"):
                    fail(f"{comparison_id}/{case_id} not measured and no reason given")
            # Where the records were: ktls-bench already failed the run if
            # the offload or its counters were wrong; check it said so.
            for case_id, where in (("ktls_write", "tx=kernel"), ("ktls_sendfile", "tx=kernel"),
                                   ("ktls_read", "rx=kernel"), ("ktls", "tx=kernel rx=kernel"),
                                   ("openssl_write", "tx=user"), ("openssl", "tx=user rx=user")):
                if case_id in cases and where not in cases[case_id]["notes"]:
                    fail(f"{comparison_id}/{case_id}: notes do not say {where}: {cases[case_id]['notes']}")

        # Moving connections: every one moved, both directions in the
        # kernel, and the state a few hundred bytes.
        for case in got["moves.state_bytes"]["cases"]:
            if case["status"] != "ok" or not 64 <= case["median"] <= 1024:
                fail(f"moves.state_bytes/{case['id']}: {case}")
            if "both directions in the kernel" not in case["notes"]:
                fail(f"moves.state_bytes/{case['id']}: notes do not say where: {case['notes']}")

        # Offload adds its three setsockopt (TCP_ULP, TLS_TX, TLS_RX) to a
        # handshake; a client that read the server's close_notify closes
        # without asking the socket's flags (no linger to do), and
        # close_notify alone (kCloseNotifyOnly) makes no shutdown(2).
        for comparison_id in [c for c in want if c.startswith("handshake_syscalls.")]:
            cases = {c["id"]: c.get("breakdown", {}) for c in got[comparison_id]["cases"]}
            added = cases["ktls"].get("setsockopt", 0) - cases["openssl"].get("setsockopt", 0)
            if added != 3 or "fcntl" in cases["ktls"] or "shutdown" in cases["ktls"]:
                fail(f"{comparison_id}: ktls made {added} more setsockopt than OpenSSL (3 expected), "
                     f"{cases['ktls'].get('fcntl', 0)} fcntl and {cases['ktls'].get('shutdown', 0)} shutdown: "
                     f"{cases}")

        # The static file benchmark: one 1 s wrk run per server and size.
        # static_files.py itself fails a ktls-serve run whose access log or
        # tls_stat deltas do not show the offload (or its absence).
        static = os.path.join(work, "static.json")
        run = subprocess.run([sys.executable, os.path.join(HERE, "static_files.py"), "--ktls-serve", serve, "--smoke",
                              "--label", "smoke", "--json", static], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=120)
        print(run.stdout)
        if run.returncode != 0:
            fail(f"static_files.py exited {run.returncode}")
        with open(static) as f:
            got = {c["id"]: c for c in json.load(f)["comparisons"]}
        for size in ("4KiB", "large"):
            for metric in ("rps", "mbps"):
                comparison = got.get(f"static_files.{size}_{metric}")
                if comparison is None:
                    fail(f"comparison static_files.{size}_{metric} missing")
                cases = {c["id"]: c for c in comparison["cases"]}
                for case_id, where in (("nginx", "TlsTxSw"), ("ktls_serve", "tx=kernel"),
                                       ("ktls_serve_no_offload", "tx=user"), ("ktls_serve_metrics", "tx=kernel")):
                    case = cases.get(case_id)
                    if case is None or case["status"] != "ok" or not case["median"] > 0:
                        fail(f"static_files.{size}_{metric}/{case_id} not measured: {case}")
                    if where not in case["notes"]:
                        fail(f"static_files.{size}_{metric}/{case_id}: notes do not say {where}: {case['notes']}")

        # The renderer, on a copy of the real doc.
        doc = os.path.join(work, "BENCHMARKS.md")
        shutil.copy(os.path.join(ROOT, "docs", "BENCHMARKS.md"), doc)
        charts = os.path.join(work, "charts")
        subprocess.run([sys.executable, os.path.join(HERE, "render_report.py"), "--doc", doc, "--chart-dir", charts,
                        result, static], check=True)
        with open(doc) as f:
            text = f.read()
        for block in ("conditions", "targets", "results", "handshake_syscalls"):
            start = text.index(f"<!-- generated:{block} -->")
            end = text.index(f"<!-- /generated:{block} -->")
            if "smoke" not in text[start:end]:
                fail(f"the rendered {block} block does not show the run")
        if "`ktls-serve` >= nginx, requests/s, 4 KiB file | smoke" not in text or "Static files over HTTPS" not in text:
            fail("the rendered doc has no static file target or table")
        chart = os.path.join(charts, "bulk_send-smoke.png")
        with open(chart, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                fail(f"{chart} is not a PNG")
        print("PASS")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
