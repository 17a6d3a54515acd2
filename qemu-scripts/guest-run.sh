#!/usr/bin/env bash
# guest-run.sh KERNEL [--] CMD...: boots the test guest (KERNEL 6.1, 6.12, 7.3, 6.12-iommufd or noiommu) with
# the test devices bound to vfio-pci, runs the shell command line CMD in it and exits with its status. The
# guest has busybox, the test binaries in /tests (run them all with `barmap-run-tests --include-ignored`),
# the examples in /usr/bin, and BARMAP_EDU / BARMAP_TESTDEV / BARMAP_FLR_DEV / BARMAP_NVME / BARMAP_IVSHMEM
# and BARMAP_INTERFACE set. Stdin is passed through, so `guest-run.sh 6.12 sh` gives a shell.
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
run_dir_init
guest_build test "$RUN_DIR/build.list"
printf '%s\n' "$cmdline" >"$RUN_DIR/job.sh"
guest_run "$series" "$RUN_DIR/build.list" "$RUN_DIR/job.sh"
exit "$GUEST_STATUS"
