"""Scaffolding shared by the interop scripts (echo_interop.py,
key_update_interop.py): certificates made with the openssl CLI,
/proc/net/tls_stat, ports and pipes, and the main's skip/77 handling and
"N passed, N failed" summary.

The scripts run as `python3 tests/interop/SCRIPT.py`, so this directory is
on sys.path and they import this module by name.
"""
import collections
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HOST = "127.0.0.1"
STEP_TIMEOUT = 20  # seconds: the limit for any one process or exchange
TLS_STAT = "/proc/net/tls_stat"

OPENSSL = ""    # the openssl command-line tool (find_openssl() sets it)

Identity = collections.namedtuple("Identity", "cert key")


# --- Certificates ------------------------------------------------------------

def find_openssl():
    """The openssl CLI in PATH ("" when there is none); run_openssl uses it."""
    global OPENSSL
    OPENSSL = shutil.which("openssl") or ""
    return OPENSSL


def openssl_version():
    return subprocess.run([OPENSSL, "version"], capture_output=True, text=True,
                          timeout=STEP_TIMEOUT).stdout.strip()


def run_openssl(*args):
    done = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


class PkiBase:
    """Makes CAs and leaf certificates with the openssl CLI in `directory`
    (P-256 keys: quick to make under UML)."""

    def __init__(self, directory):
        self.dir = directory

    def path(self, name):
        return os.path.join(self.dir, name)

    def make_ca(self, name, common_name):
        ident = Identity(self.path(name + ".pem"), self.path(name + ".key"))
        run_openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", ident.key, "-out", ident.cert, "-subj", "/CN=" + common_name, "-days", "2",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return ident

    def make_leaf(self, name, issuer, common_name, usage, *extensions):
        ident = Identity(self.path(name + ".pem"), self.path(name + ".key"))
        csr = self.path(name + ".csr")
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("\n".join(["basicConstraints=critical,CA:FALSE", "extendedKeyUsage=" + usage, *extensions]))
            f.write("\n")
        run_openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", ident.key, "-out", csr, "-subj", "/CN=" + common_name)
        run_openssl("x509", "-req", "-in", csr, "-CA", issuer.cert, "-CAkey", issuer.key, "-CAcreateserial",
                    "-days", "2", "-out", ident.cert, "-extfile", ext)
        return ident


# --- Kernel counters ---------------------------------------------------------

def read_tls_stat():
    with open(TLS_STAT) as f:
        return {name: int(value) for name, value in (line.split() for line in f if line.strip())}


def ensure_tls_module():
    """Attaching the "tls" ULP once makes the kernel load the module (and
    create /proc/net/tls_stat) where it is available but not loaded yet."""
    if os.path.exists(TLS_STAT):
        return
    tcp_ulp = getattr(socket, "TCP_ULP", 31)
    with socket.create_server((HOST, 0)) as listener, \
            socket.create_connection(listener.getsockname(), timeout=5) as client:
        peer, _ = listener.accept()
        with peer:
            try:
                client.setsockopt(socket.IPPROTO_TCP, tcp_ulp, b"tls")
            except OSError:
                pass


def tls_stat_added(start_process):
    """What starting one process (start_process(): a context manager, e.g. a
    ktls-echo server and its start-up probe) adds to tls_stat, by counter."""
    before = read_tls_stat()
    with start_process():
        after = read_tls_stat()
    return {name: after[name] - before[name] for name in after if name in before}


# --- Processes ---------------------------------------------------------------

def wait_until(predicate, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def is_listening(port):
    """Whether something listens on TCP `port` (read from /proc, so nothing
    connects: s_server -naccept 1 would count a test connection)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


class Pump(threading.Thread):
    """Copies everything from a pipe into `data` until end of file."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.data = bytearray()
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                chunk = self.pipe.read1(65536)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            with self.lock:
                self.data += chunk

    def size(self):
        with self.lock:
            return len(self.data)

    def bytes(self):
        with self.lock:
            return bytes(self.data)

    def text(self):
        return self.bytes().decode(errors="replace")


# --- ktls-echo's output ------------------------------------------------------

def parse_line(line):
    """ktls-echo's per-connection line as a dict of its key=value words."""
    return dict(word.partition("=")[::2] for word in line.split())


def raw_connection_lines(text):
    """ktls-echo's per-connection lines in its stderr, unparsed."""
    return [line for line in text.splitlines() if line.startswith("peer=")]


def sha(data):
    return hashlib.sha256(data).hexdigest()


# --- Main ----------------------------------------------------------------------

def fail(reason):
    """Reports a failure before any test ran; the exit status."""
    print(f"FAIL: {reason}")
    print("0 passed, 1 failed")
    return 1


def check_kernel_tls():
    """None when this kernel has kTLS (/proc/net/tls_stat, after loading the
    module if need be); otherwise reports why and returns the exit status:
    77 (skip), or 1 when KTLS_REQUIRE_KERNEL=1."""
    ensure_tls_module()
    if os.path.exists(TLS_STAT):
        return None
    reason = f"no {TLS_STAT}: this kernel has no kTLS (CONFIG_TLS off, or the tls module not loaded)"
    if os.environ.get("KTLS_REQUIRE_KERNEL") == "1":
        return fail(f"kernel required but {reason}")
    print(f"SKIP: {reason}")
    return 77


class TimedResult(unittest.TextTestResult):
    """Also records how long each test took."""

    def startTest(self, test):
        self.started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        self.durations = getattr(self, "durations", [])
        self.durations.append((time.monotonic() - self.started, test.id().split(".", 1)[1]))


def run_tests(module, names, prefix, set_up, classes=None):
    """Calls set_up(directory) with a fresh temporary directory (named
    prefix...), then runs the tests in `module` (or only in `classes`) whose
    names contain one of `names` (all of them when there are none) and
    reports them; the exit status. A set_up that raises is a failure before
    any test ran; so is a skipped test: these suites run where the kernel is
    promised, and a test that did not run proved nothing."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            set_up(tmp)
        except Exception as e:
            return fail(f"setting up: {e}")
        loader = unittest.TestLoader()
        loader.testNamePatterns = [f"*{name}*" for name in names] or None
        tests = (unittest.TestSuite(loader.loadTestsFromTestCase(c) for c in classes) if classes
                 else loader.loadTestsFromModule(module))
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=TimedResult).run(tests)
    return report(result)


def report(result):
    """Prints the slowest tests and "N passed, N failed"; the exit status."""
    slowest = sorted(getattr(result, "durations", []), reverse=True)[:3]
    print("slowest: " + ", ".join(f"{name} {seconds:.1f}s" for seconds, name in slowest), flush=True)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses) + len(result.skipped)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1
