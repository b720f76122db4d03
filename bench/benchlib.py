"""benchlib.py: what the Python benchmarks (static_files.py, proxy.py,
serve_costs.py) share: whether kernel TLS was promised, /proc/net/tls_stat,
waiting for a server to listen, nginx's configuration and strace -c's
table."""

import os
import re
import shutil
import socket
import sys
import time


class Failure(Exception):
    """A benchmark that cannot measure what it says: it fails, with this text."""


def kernel_promised():
    """Whether kernel TLS was promised to this run (CI, or a UML guest):
    then finding none is a failure, never a skip."""
    return "1" in (os.environ.get("KTLS_REQUIRE_KERNEL"), os.environ.get("KTLS_IN_UML"))


def tls_stat():
    with open("/proc/net/tls_stat") as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def wait_port(port, proc, what):
    """Waits until 127.0.0.1:port accepts, while proc (its server) lives."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"{what} exited {proc.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Failure(f"{what} is not listening on {port}")


def nginx_conf(work, www, cert, key, port, suite, worker_connections=1024):
    """nginx as the benchmarks run it: one worker, sendfile on, OpenSSL's
    kTLS (ssl_conf_command Options KTLS), TLS 1.3 with one suite, an access
    log line per request (as ktls-serve writes one)."""
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile {worker_connections * 2 + 64};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log info;
events {{ worker_connections {worker_connections}; }}
http {{
    types {{ application/octet-stream bin; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    log_format conn '$remote_addr:$remote_port $request $status $body_bytes_sent';
    access_log {work}/nginx-access.log conn;
    sendfile on;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites {suite};
        ssl_conf_command Options KTLS;
        root {www};
    }}
}}
"""


def strace_counts(path):
    """The calls column of an `strace -c -o path` table: {syscall: calls}."""
    calls = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
    return calls


def remove_work(work, keep_variable):
    """Removes a benchmark's scratch directory, unless keep_variable is set
    in the environment (to look at its logs)."""
    if os.environ.get(keep_variable):
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def run_main(main, name):
    """Runs a benchmark's main: its exit status, or 1 with the Failure's
    text on stderr."""
    try:
        sys.exit(main())
    except Failure as e:
        print(f"{name}: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
