#!/usr/bin/env bash
# guest-run.sh KERNEL [--] CMD...: boots the test guest (KERNEL 6.1 or 6.12) with edu and pci-testdev bound to
# vfio-pci, runs the shell command line CMD in it and exits with its status. The guest has busybox, the test
# binaries in /tests (run them all with `barmap-run-tests --include-ignored`), the examples in /usr/bin, and
# BARMAP_EDU / BARMAP_TESTDEV set. Stdin is passed through, so `guest-run.sh 6.12 sh` gives a shell.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# >= 2)) || die "usage: $0 KERNEL [--] CMD... (KERNEL: ${BARMAP_KERNELS[*]})"
series=$1
shift
[[ $1 == -- ]] && shift
kernel_check "$series"

# One argument is a shell command line; several are one command whose words are quoted as given.
if (($# == 1)); then
    cmdline=$1
else
    cmdline=$(shell_quote "$@")
fi

ensure_host_packages
mkdir -p "$BARMAP_GUEST_WORK"
list="$BARMAP_GUEST_WORK/build-test.list"
guest_build test "$list"
job=$(mktemp "$BARMAP_GUEST_WORK/job.XXXXXX")
trap 'rm -f "$job"' EXIT
printf '%s\n' "$cmdline" >"$job"
status=0
guest_run "$series" "$list" "$job" || status=$?
exit "$status"
