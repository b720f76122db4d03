#!/bin/bash
# selftest.sh: checks the kernel test harness itself on one UML kernel.
#
#   selftest.sh 6.1|7.2
#
# Registered in CTest as harness.selftest.<kernel> (through run-kernel-test
# --on-host, which fetches the kernel or skips). It boots several guests with
# ktls-uml and checks what tests rely on: exit statuses come back (including
# 77 for skip), arguments arrive byte for byte, output is captured, the
# environment and working directory are passed, host files are shared both
# ways, stdin is closed, kTLS works for every cipher, a kernel warning fails
# the run, a hung guest is stopped by the timeout, and run-kernel-test turns
# a skip into a failure under KTLS_REQUIRE_KERNEL=1.
set -euo pipefail

kernel=${1:?usage: selftest.sh 6.1|7.2}
HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HARNESS_DIR
readonly KTLS_UML=$HARNESS_DIR/ktls-uml

# Job directories of the deliberate failures below are not worth keeping.
export KTLS_UML_KEEP_JOB=0

num_failed=0
pass() { echo "ok: $*"; }
fail() {
    echo "FAIL: $*"
    num_failed=$((num_failed + 1))
}

# The working directory has a space in its name, on purpose.
work=$(mktemp -d "${TMPDIR:-/tmp}/ktls selftest.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
cd "$work"

# expect_status WANT NAME [ktls-uml run options] -- COMMAND...
expect_status() {
    local want=$1 name=$2 got=0
    shift 2
    "$KTLS_UML" run --kernel "$kernel" "$@" >"$work/out" 2>&1 || got=$?
    if [[ $got == "$want" ]]; then
        pass "$name (status $got)"
    else
        fail "$name: status $got, expected $want; output:"
        sed 's/^/    /' "$work/out"
    fi
}

# --- 1. One guest checks most things at once. -------------------------------
cc -O2 -Wall -o "$work/ktls_smoke" "$HARNESS_DIR/uml_ktls_smoke.c"
echo "from the host" >"$work/host-file"
# shellcheck disable=SC2016 # literal $ and backquotes, on purpose
weird_args=("two words" "it's \"quoted\"" "" '$HOME `id` \n *' $'new\nline' '--')
# Prints its arguments one per line between markers, then facts about the
# guest; the host compares them with what it expects.
cat >"$work/probe.sh" <<'EOF'
printf '<%s>\n' "$@"
echo "kernel=$(uname -r)"
echo "cwd=$PWD"
echo "in_uml=${KTLS_IN_UML:-} uml_kernel=${KTLS_UML_KERNEL:-}"
echo "custom=${SELFTEST_VALUE:-}"
echo "gtest=${GTEST_FILTER:-} require=${KTLS_REQUIRE_KERNEL:-}"
[ -e /proc/net/tls_stat ] && echo "tls_stat=yes"
if read -r line; then echo "stdin=open"; else echo "stdin=eof"; fi
echo "host_file=$(cat host-file)"
echo "written in the guest" >guest-file
echo "to stderr" >&2
./ktls_smoke
EOF
status=0
# shellcheck disable=SC2016 # a literal $d, on purpose
GTEST_FILTER='Suite.*:-Other' KTLS_REQUIRE_KERNEL=0 \
    "$KTLS_UML" run --kernel "$kernel" --env 'SELFTEST_VALUE=a b "c" $d' \
    -- bash probe.sh "${weird_args[@]}" >"$work/out" 2>"$work/err" || status=$?
output=$(<"$work/out")

# check NAME COMMAND...: one check, passing if COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
has_line() { grep -qxF -- "$1" <<<"$output"; }
expected_args=$(printf '<%s>\n' "${weird_args[@]}")
num_failed_before=$num_failed

check "arguments arrive intact" test "${output:0:${#expected_args}}" == "$expected_args"
check "probe exited 0 (status $status)" test "$status" == 0
check "uname -r is $kernel.*" grep -q "^kernel=${kernel//./\\.}\\." <<<"$output"
check "working directory kept (with a space)" has_line "cwd=$work"
check "KTLS_IN_UML, KTLS_UML_KERNEL set" has_line "in_uml=1 uml_kernel=$kernel"
# shellcheck disable=SC2016 # a literal $d, as passed above
check "--env value intact" has_line 'custom=a b "c" $d'
check "GTEST_*, KTLS_REQUIRE_KERNEL forwarded" has_line 'gtest=Suite.*:-Other require=0'
check "/proc/net/tls_stat exists" has_line 'tls_stat=yes'
check "stdin is closed" has_line 'stdin=eof'
check "guest reads host files" has_line 'host_file=from the host'
check "guest writes reach the host" grep -qxF "written in the guest" "$work/guest-file"
check "stderr captured (merged into stdout)" has_line 'to stderr'
check "no harness noise on success" test ! -s "$work/err"
num_round_trips=$(grep -c '^ok: TLS1\.[23] .* round trip$' <<<"$output" || true)
check "kTLS round trip: TLS 1.2/1.3 x 4 ciphers" test "$num_round_trips" == 8
if ((num_failed > num_failed_before)); then
    echo "guest output was:"
    sed 's/^/    /' "$work/out" "$work/err"
fi

# --- 2. Statuses, kernel warnings, timeout. ----------------------------------
expect_status 3 "exit status passed through" -- sh -c 'exit 3'
expect_status 77 "skip status passed through" -- sh -c 'echo skipping; exit 77'
# Through run-kernel-test (as CTest runs kernel tests): a skip stays a skip
# unless a kernel is required, where it is a failure.
got=0
KTLS_REQUIRE_KERNEL=0 "$HARNESS_DIR/run-kernel-test" "$kernel" -- sh -c 'exit 77' >"$work/out" 2>&1 || got=$?
check "run-kernel-test passes a skip through (status $got)" test "$got" == 77
got=0
KTLS_REQUIRE_KERNEL=1 "$HARNESS_DIR/run-kernel-test" "$kernel" -- sh -c 'exit 77' >"$work/out" 2>&1 || got=$?
check "run-kernel-test fails a skip where a kernel is required (status $got)" test "$got" == 1
check "run-kernel-test says the skip failed" grep -q '^FAIL: kernel required but the test skipped' "$work/out"
# A line written to /dev/kmsg looks like any kernel warning to the scanner.
expect_status 125 "kernel WARNING fails the run" -- \
    sh -c 'echo "WARNING: injected by selftest.sh" >/dev/kmsg'
check "kernel warning reported" grep -q 'logged warnings' "$work/out"
expect_status 124 "hung guest stopped by --timeout" --timeout 5 -- sleep 60

if ((num_failed)); then
    echo "harness selftest on kernel $kernel: $num_failed check(s) FAILED"
    exit 1
fi
echo "harness selftest on kernel $kernel: all checks passed"
