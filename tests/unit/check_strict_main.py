#!/usr/bin/env python3
"""Checks tests/support/strict_gtest_main.cc through strict_main_selftest:
a skip (in a test, in SetUpTestSuite, in a global Environment) fails the run
where kernel TLS is promised (KTLS_REQUIRE_KERNEL=1, or KTLS_IN_UML=1), and
a --gtest_filter that selects no test fails the run everywhere. The runs
without the promise show that the same skips pass otherwise, so it is the
strict main that fails them.

usage: check_strict_main.py PATH/TO/strict_main_selftest
Exit status 0 when every case gave its one expected status and message.
"""
import os
import subprocess
import sys

NO_PROMISE = {"KTLS_REQUIRE_KERNEL": "", "KTLS_IN_UML": "", "KTLS_STRICT_SELFTEST_SKIP_GLOBAL": ""}

# (what, filter, extra environment, exit status, text the output must hold)
CASES = [
    ("a passing test", "StrictMainPasses.*", {"KTLS_REQUIRE_KERNEL": "1"}, 0, "[  PASSED  ] 1 test"),
    ("a skip in a test, nothing promised", "StrictMainSkipInBody.*", {}, 0, "[  SKIPPED ] 1 test"),
    ("a skip in a test, KTLS_REQUIRE_KERNEL=1", "StrictMainSkipInBody.*", {"KTLS_REQUIRE_KERNEL": "1"}, 1,
     "FAIL: skipped where kernel TLS is promised (KTLS_REQUIRE_KERNEL=1 or a UML guest): StrictMainSkipInBody.Skips"),
    ("a skip in a test, in a UML guest", "StrictMainSkipInBody.*", {"KTLS_IN_UML": "1"}, 1,
     "StrictMainSkipInBody.Skips"),
    # gtest 1.12 records a skip in SetUpTestSuite for the suite, then runs
    # its tests anyway, and passes them.
    ("a skip in SetUpTestSuite, nothing promised", "StrictMainSkipInSuiteSetUp.*", {}, 0, "[  PASSED  ] 1 test"),
    ("a skip in SetUpTestSuite, KTLS_REQUIRE_KERNEL=1", "StrictMainSkipInSuiteSetUp.*",
     {"KTLS_REQUIRE_KERNEL": "1"}, 1, "StrictMainSkipInSuiteSetUp (SetUpTestSuite)"),
    ("a skip in the global set-up, KTLS_REQUIRE_KERNEL=1", "StrictMainPasses.*",
     {"KTLS_REQUIRE_KERNEL": "1", "KTLS_STRICT_SELFTEST_SKIP_GLOBAL": "1"}, 1, "FAIL: skipped where"),
    ("a skip in the global set-up, nothing promised", "StrictMainPasses.*",
     {"KTLS_STRICT_SELFTEST_SKIP_GLOBAL": "1"}, 0, "skipped in the global set-up"),
    ("a filter that selects nothing", "NoSuchSuite.*", {}, 1, "FAIL: no test selected"),
    ("a filter that selects nothing, KTLS_REQUIRE_KERNEL=1", "NoSuchSuite.*", {"KTLS_REQUIRE_KERNEL": "1"}, 1,
     "FAIL: no test selected"),
]


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    binary = sys.argv[1]
    failed = 0
    for what, gtest_filter, env, want_status, want_text in CASES:
        run = subprocess.run([binary, f"--gtest_filter={gtest_filter}"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, **NO_PROMISE, **env})
        output = run.stdout + run.stderr
        if run.returncode == want_status and want_text in output:
            print(f"ok: {what}: exit {run.returncode}")
        else:
            failed += 1
            print(f"FAIL: {what}: exit {run.returncode} (want {want_status}), output should hold {want_text!r}:\n"
                  f"{output}")
    print(f"{len(CASES) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
