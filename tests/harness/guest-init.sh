#!/bin/bash
# guest-init.sh: PID 1 of a UML guest started by tests/harness/ktls-uml.
#
# The guest's root file system is the host's own (hostfs), so host-built
# binaries run unchanged and every file the job writes lands on the host.
# ktls-uml copies this script into a job directory and passes that directory
# as KTLS_UML_JOB on the kernel command line. The job directory holds:
#   guest.conf   sourced here: KTLS_UML_KERNEL (6.1|7.2), KTLS_UML_MODROOT
#   modprobe     wrapper: `modprobe -d $KTLS_UML_MODROOT "$@"`
#   job.sh       the command to run, its environment and working directory
# and receives:
#   output           the job's stdout and stderr
#   kernel-warnings  kernel log lines that make the run fail (if any)
#   dmesg.log        the whole guest kernel log
#   status           the exit status, written last (its presence = finished)
#
# Status 125 means the harness failed (setup) or the kernel logged a warning,
# BUG or oops during the run. A UML process's own exit status never carries
# the guest's result, hence the status file.
#
# No `set -e`: whatever fails, this script must still write a status and
# power the guest off, or the host waits for its timeout.
set -u

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
job=${KTLS_UML_JOB:-}

# Kernel log lines that fail a run. They are only looked for after the start
# marker, so nothing from the boot itself counts.
readonly KERNEL_TROUBLE='WARNING:|BUG:|kernel BUG at|Oops|general protection|Kernel panic|UBSAN:|refcount_t:|list_(add|del) corruption|detected stall'
readonly START_MARKER='ktls-uml: job start'

power_off() {
    sync
    # Debian's poweroff (systemd's) works without systemd when forced; hosts
    # without it (minimal containers) use sysrq, then the raw reboot(2) call
    # through perl, which Debian always has (perl-base is essential).
    poweroff -f >/dev/null 2>&1
    echo o >/proc/sysrq-trigger 2>/dev/null
    sleep 2
    perl -e 'syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0)' 2>/dev/null
    echo "ktls-uml guest: could not power off" >&2
    sleep 3600
}

# Reports a setup failure as the job's result.
setup_failed() {
    echo "ktls-uml guest: $*" >>"$job/output"
    echo 125 >"$job/status.tmp" && mv "$job/status.tmp" "$job/status"
    power_off
}

if [[ -z $job || ! -d $job ]]; then
    echo "ktls-uml guest: KTLS_UML_JOB is not a directory: '$job'" >&2
    power_off
fi

mount -t proc proc /proc || setup_failed "cannot mount /proc"
mount -t sysfs sysfs /sys || setup_failed "cannot mount /sys"
# Debian's UML kernels mount devtmpfs on /dev by themselves. If not, mount it
# now: the host's /dev must never be written to through hostfs.
if ! mountpoint -q /dev; then
    mount -t devtmpfs devtmpfs /dev || setup_failed "cannot mount devtmpfs on /dev"
fi
# devtmpfs lacks what udev would add: /dev/fd (bash process substitution),
# /dev/std*, /dev/pts (pseudo-terminals) and /dev/shm (POSIX shared memory,
# which would otherwise not exist at all).
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && ln -sfn pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# /tmp, /run and everything else stay the host's: no tmpfs over host dirs.

ip link set lo up || setup_failed "cannot bring up loopback (is iproute2 installed?)"

# shellcheck source=/dev/null
source "$job/guest.conf" || setup_failed "cannot read $job/guest.conf"

echo "$START_MARKER" >/dev/kmsg

# The module tree lives in the harness cache, not in /lib/modules: the
# kernel's own module requests (crypto algorithms, address families) go
# through the same wrapper, so nothing is created on the host.
echo "$job/modprobe" >/proc/sys/kernel/modprobe
"$job/modprobe" tls || setup_failed "modprobe tls failed on kernel $KTLS_UML_KERNEL"
# The AEADs kTLS uses: AES-GCM, AES-CCM, ChaCha20-Poly1305 and their parts.
# The kernel would load them on first use; loading them now keeps the first
# setsockopt(TLS_TX) fast. Names differ between 6.1 and 7.2, hence -q.
"$job/modprobe" -q -a gcm ccm ctr chacha20poly1305 crypto-ghash crypto-chacha20 crypto-poly1305

env -i PATH="$PATH" HOME=/root LANG=C.UTF-8 TERM=dumb \
    /bin/bash "$job/job.sh" </dev/null >"$job/output" 2>&1
status=$?

dmesg >"$job/dmesg.log" 2>&1
sed -n "/$START_MARKER/,\$p" "$job/dmesg.log" | grep -E "$KERNEL_TROUBLE" >"$job/kernel-warnings"
if [[ -s $job/kernel-warnings ]]; then
    status=125
fi

echo "$status" >"$job/status.tmp" && mv "$job/status.tmp" "$job/status"
power_off
