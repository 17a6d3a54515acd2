#!/usr/bin/env bash
# demo.sh [KERNEL]: the main job. Boots the guest (KERNEL 6.1, 6.12 or 7.3; default 6.12), pokes QEMU's edu
# device with the barpoke example (examples/barpoke.rs): identity, liveness register, factorial, a dump; then
# runs the userspace edu driver (examples/edu.rs): factorials on MSI and on INTx, a DMA copy in and out; and
# the minimal VMM (examples/passthrough.rs) whose KVM guest drives edu through a memory slot.
# Exits with the status of the first command that fails. The guest commands are the DEMO list below: edit
# them there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Guest shell commands, run in order (BARMAP_EDU / BARMAP_TESTDEV hold the devices' PCI addresses).
# shellcheck disable=SC2016 # the guest expands them
DEMO=(
    'barpoke list'
    'barpoke info $BARMAP_EDU'
    'barpoke config $BARMAP_EDU'
    'barpoke read $BARMAP_EDU bar0 0x0'            # identification: 0x010000ed
    'barpoke write $BARMAP_EDU bar0 0x4 0x12345678' # liveness: reads back the bitwise NOT
    'barpoke read $BARMAP_EDU bar0 0x4'            # 0xedcba987
    'barpoke write $BARMAP_EDU bar0 0x8 5'         # factorial of 5 ...
    'barpoke read $BARMAP_EDU bar0 0x8'            # ... is 0x78
    'barpoke dump $BARMAP_EDU bar0 0x0 0x40'
    'barpoke info $BARMAP_TESTDEV'
    'edu $BARMAP_EDU'         # the driver: identify, factorials waiting on MSI, DMA in and out
    'edu $BARMAP_EDU --intx'  # the same, waiting on INTx
    'passthrough $BARMAP_EDU' # edu passed through to a KVM guest (nested KVM in the TCG guest)
)

series=${1:-6.12}
kernel_check "$series"
ensure_host_packages
run_dir_init
guest_build test "$RUN_DIR/build.list"
for example in barpoke edu passthrough; do
    guest_build_has "$RUN_DIR/build.list" example "example-$example" ||
        die "the demo needs the $example example (examples/$example.rs)"
done

{
    echo 'set -e'
    for cmd in "${DEMO[@]}"; do
        printf 'echo %s\n%s\n' "$(shell_quote "guest# $cmd")" "$cmd"
    done
} >"$RUN_DIR/job.sh"
guest_run "$series" "$RUN_DIR/build.list" "$RUN_DIR/job.sh" </dev/null
exit "$GUEST_STATUS"
