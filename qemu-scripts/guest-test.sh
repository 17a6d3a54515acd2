#!/usr/bin/env bash
# guest-test.sh [6.1|6.12|7.3|6.12-iommufd|noiommu|all] [-- LIBTEST-ARGS...]: builds the test binaries
# statically, boots the guest on each kernel (default: all) and runs every test binary in it (on noiommu only
# those named test-noiommu* or opt3-test-noiommu*: none there is a failure) with --include-ignored
# --test-threads=1 (plus LIBTEST-ARGS, e.g. a name filter), one after another, each killed after
# $BARMAP_TEST_TIMEOUT seconds. Prints the results per kernel and binary and ends with the line "N passed,
# M failed". Exits non-zero if a test failed, a binary crashed or gave no result, the guest timed out or did
# not report completion.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BARMAP_TEST_TIMEOUT:=300}"
# The kernels whose guests boot L2 (tests/vmm_guest.rs); on the others that binary is skipped and said so
# (noiommu runs only its own binaries anyway).
: "${BARMAP_L2_SERIES:=6.1 6.12 7.3 6.12-iommufd}"

which=${1:-all}
(($# > 0)) && shift
[[ ${1:-} == -- ]] && shift
case "$which" in
all) kernels=("${BARMAP_KERNELS[@]}") ;;
*) kernel_check "$which" && kernels=("$which") ;;
esac

ensure_host_packages
run_dir_init
guest_build test "$RUN_DIR/build.list"
passed=0 failed=0 summary=()
for series in "${kernels[@]}"; do
    start=$SECONDS
    skip=""
    [[ " $BARMAP_L2_SERIES " == *" $series "* ]] || skip=test-vmm_guest
    # The no-IOMMU tests (tests/noiommu.rs) need the noiommu guest: VFIO's no-IOMMU mode, no IOMMU.
    [[ $series == noiommu ]] || skip="${skip:+$skip }test-noiommu"
    printf 'BARMAP_TEST_TIMEOUT=%d BARMAP_SKIP_TESTS=%s BARMAP_ONLY_TESTS=%s barmap-run-tests --include-ignored --test-threads=1 --color never %s\n' \
        "$BARMAP_TEST_TIMEOUT" "$(shell_quote "$skip")" "$(shell_quote "$(kernel_only_tests "$series")")" "$(shell_quote "$@")" \
        >"$RUN_DIR/job.sh"
    guest_run "$series" "$RUN_DIR/build.list" "$RUN_DIR/job.sh" </dev/null
    rc=$GUEST_STATUS
    results=$(parse_guest_tests "$BARMAP_GUEST_WORK/logs/$series-output.log")
    read -r _ p f n <<<"$(tail -n 1 <<<"$results")"
    summary+=("kernel $series: $p passed, $f failed in $n test binaries (guest status $rc, $((SECONDS - start)) s)")
    ((n == 0)) || summary+=("$(sed '$d' <<<"$results")")
    if ((n == 0)); then
        summary+=("  kernel $series: no test binary ran (those run there: $(kernel_only_tests "$series"))")
    fi
    if ((rc != 0 && f == 0)); then
        # The guest failed without a counted test failure: no binaries, timeout, crash of the guest.
        summary+=("  kernel $series: the run itself failed (status $rc): counted as 1 failure")
        f=1
    fi
    passed=$((passed + p)) failed=$((failed + f))
done

echo
printf '%s\n' "${summary[@]}"
echo "$passed passed, $failed failed"
((failed == 0))
