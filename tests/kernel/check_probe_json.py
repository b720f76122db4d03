#!/usr/bin/env python3
"""Check ktls-probe's command line and JSON output against the documented
schema, and its answers against the kernel it runs on.

usage: check_probe_json.py PATH/TO/ktls-probe [--built-without-kernel-tls]

Where /proc/net/tls_stat exists (a kernel with the tls module loaded), kTLS
must be reported available, with every row usable and rekey exactly when the
kernel is 6.14 or later. Elsewhere it must be reported unavailable, with a
reason. With --built-without-kernel-tls (a build with KTLS_KERNEL_TLS=OFF)
it must be unavailable whatever the kernel has, because "built without
kernel TLS", and so must the counters. Either way the exit status must be 0.
"""
import json
import os
import platform
import re
import subprocess
import sys

VERSIONS = {"1.2", "1.3"}
CIPHERS = {"AES_128_GCM", "AES_256_GCM", "CHACHA20_POLY1305", "AES_128_CCM"}
BUILT_WITHOUT = "built without kernel TLS"


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def read_tls_stat():
    with open("/proc/net/tls_stat") as f:
        return {name: int(value) for name, value in (line.split() for line in f if line.strip())}


def check_tls_stat(caps, table_text, without_kernel_tls):
    if without_kernel_tls or not os.path.exists("/proc/net/tls_stat"):
        if caps.get("tls_stat", 0) is not None or not caps.get("tls_stat_error"):
            fail(f"no /proc/net/tls_stat, but tls_stat is not null with a reason: {caps}")
        if "unavailable" not in table_text:
            fail(f"table mode should say the counters are unavailable: {table_text!r}")
        return
    after = read_tls_stat()
    got = caps.get("tls_stat")
    if not isinstance(got, dict) or set(got) != set(after):
        fail(f"tls_stat {got} does not list /proc/net/tls_stat's counters {sorted(after)}")
    for name, value in got.items():
        if not isinstance(value, int) or value < 0:
            fail(f"tls_stat {name}={value!r} is not a count")
        if not name.startswith("TlsCurr") and value > after[name]:
            fail(f"tls_stat {name}={value} is more than /proc says afterwards ({after[name]})")
    installed_tx = sum(1 for r in caps["ciphers"] if r["tx"])
    installed_rx = sum(1 for r in caps["ciphers"] if r["rx"])
    if got["TlsTxSw"] < installed_tx or got["TlsRxSw"] < installed_rx:
        fail(f"the probe installed {installed_tx} TX and {installed_rx} RX keys before reading, "
             f"but TlsTxSw={got['TlsTxSw']} TlsRxSw={got['TlsRxSw']}")
    for name in after:
        # "  TlsTxSw   12  TX sessions ever installed ..." : a value and words.
        if not re.search(rf"^\s+{name}\s+\d+\s+\S.*\S$", table_text, re.M):
            fail(f"table mode has no line with a value and an explanation for {name}: {table_text!r}")


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--built-without-kernel-tls"):
        fail(f"usage: {sys.argv[0]} PATH/TO/ktls-probe [--built-without-kernel-tls]")
    probe = sys.argv[1]
    without_kernel_tls = len(sys.argv) == 3
    run = subprocess.run([probe, "--json"], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        fail(f"--json exited {run.returncode}: {run.stderr}")
    try:
        caps = json.loads(run.stdout)
    except json.JSONDecodeError as e:
        fail(f"not one JSON object: {e}\n{run.stdout}")
    for key, kind in (("available", bool), ("kernel", str), ("rekey", bool), ("ciphers", list)):
        if not isinstance(caps.get(key), kind):
            fail(f"{key!r} missing or not {kind.__name__}: {caps}")
    if not isinstance(caps.get("rx_no_pad"), bool):
        fail(f"'rx_no_pad' missing or not bool: {caps}")
    if not caps["rx_no_pad"] and not (isinstance(caps.get("rx_no_pad_reason"), str) and caps["rx_no_pad_reason"]):
        fail(f"rx_no_pad is false without an rx_no_pad_reason: {caps}")
    if caps["kernel"] != platform.release():
        fail(f"kernel {caps['kernel']!r} != uname -r {platform.release()!r}")
    rows = {(r["version"], r["cipher"]): r for r in caps["ciphers"]}
    if set(rows) != {(v, c) for v in VERSIONS for c in CIPHERS} or len(caps["ciphers"]) != 8:
        fail(f"expected one row per version and cipher, got {caps['ciphers']}")
    for r in caps["ciphers"]:
        if not isinstance(r.get("tx"), bool) or not isinstance(r.get("rx"), bool):
            fail(f"row without boolean tx/rx: {r}")

    if without_kernel_tls:
        if caps["available"] or caps.get("reason") != BUILT_WITHOUT:
            fail(f"a build without kernel TLS must say unavailable, {BUILT_WITHOUT!r}: {caps}")
        if any(r["tx"] or r["rx"] for r in caps["ciphers"]) or caps["rekey"]:
            fail(f"a build without kernel TLS reports a usable row or rekey: {caps}")
        if BUILT_WITHOUT not in (caps.get("tls_stat_error") or ""):
            fail(f"a build without kernel TLS must not read the kernel's counters: {caps}")
    elif os.path.exists("/proc/net/tls_stat"):
        if not caps["available"]:
            fail(f"kernel has kTLS but probe says unavailable: {caps.get('reason')}")
        bad = [r for r in caps["ciphers"] if not (r["tx"] and r["rx"])]
        if bad:
            fail(f"rows not usable on this kernel: {bad}")
        major, minor = (int(x) for x in platform.release().split(".")[:2])
        if caps["rekey"] != ((major, minor) >= (6, 14)):
            fail(f"rekey={caps['rekey']} on kernel {platform.release()}")
    else:
        if caps["available"] or not caps.get("reason"):
            fail(f"no kTLS here, but probe says available or gives no reason: {caps}")

    table = subprocess.run([probe], capture_output=True, text=True, timeout=60)
    if table.returncode != 0 or "AES_128_CCM" not in table.stdout:
        fail(f"table mode: exit {table.returncode}, output {table.stdout!r}")
    check_tls_stat(caps, table.stdout, without_kernel_tls)
    bad_flag = subprocess.run([probe, "--no-such-flag"], capture_output=True, text=True, timeout=60)
    if bad_flag.returncode != 2:
        fail(f"unknown flag should exit 2, got {bad_flag.returncode}")
    print(f"ok: available={caps['available']} rekey={caps['rekey']} kernel={caps['kernel']} "
          f"tls_stat={'null' if caps['tls_stat'] is None else len(caps['tls_stat'])}")


if __name__ == "__main__":
    main()
