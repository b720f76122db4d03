#!/usr/bin/env python3
"""Check ktls-probe's command line and JSON output against the documented
schema, and its answers against the kernel it runs on.

usage: check_probe_json.py PATH/TO/ktls-probe

Where /proc/net/tls_stat exists (a kernel with the tls module loaded), kTLS
must be reported available, with every row usable and rekey exactly when the
kernel is 6.14 or later. Elsewhere it must be reported unavailable, with a
reason. Either way the exit status must be 0.
"""
import json
import os
import platform
import subprocess
import sys

VERSIONS = {"1.2", "1.3"}
CIPHERS = {"AES_128_GCM", "AES_256_GCM", "CHACHA20_POLY1305", "AES_128_CCM"}


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def main():
    probe = sys.argv[1]
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
    if caps["kernel"] != platform.release():
        fail(f"kernel {caps['kernel']!r} != uname -r {platform.release()!r}")
    rows = {(r["version"], r["cipher"]): r for r in caps["ciphers"]}
    if set(rows) != {(v, c) for v in VERSIONS for c in CIPHERS} or len(caps["ciphers"]) != 8:
        fail(f"expected one row per version and cipher, got {caps['ciphers']}")
    for r in caps["ciphers"]:
        if not isinstance(r.get("tx"), bool) or not isinstance(r.get("rx"), bool):
            fail(f"row without boolean tx/rx: {r}")

    if os.path.exists("/proc/net/tls_stat"):
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
    bad_flag = subprocess.run([probe, "--no-such-flag"], capture_output=True, text=True, timeout=60)
    if bad_flag.returncode != 2:
        fail(f"unknown flag should exit 2, got {bad_flag.returncode}")
    print(f"ok: available={caps['available']} rekey={caps['rekey']} kernel={caps['kernel']}")


if __name__ == "__main__":
    main()
