#!/usr/bin/env bash
# guest-test.sh [6.1|6.12|all] [-- LIBTEST-ARGS...]: builds the test binaries statically, boots the guest on
# each kernel (default: all) and runs every test binary in it with --include-ignored --test-threads=1 (plus
# LIBTEST-ARGS, e.g. a name filter). Prints the results per kernel and ends with the line "N passed, M failed".
# Exits non-zero if a test failed, a binary crashed or gave no result, the guest timed out or did not finish.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

which=${1:-all}
(($# > 0)) && shift
[[ ${1:-} == -- ]] && shift
case "$which" in
all) kernels=("${BARMAP_KERNELS[@]}") ;;
*) kernel_check "$which" && kernels=("$which") ;;
esac

ensure_host_packages
mkdir -p "$BARMAP_GUEST_WORK"
list="$BARMAP_GUEST_WORK/build-test.list"
guest_build test "$list"
job=$(mktemp "$BARMAP_GUEST_WORK/job.XXXXXX")
trap 'rm -f "$job"' EXIT
printf 'barmap-run-tests --include-ignored --test-threads=1 %s\n' "$(shell_quote "$@")" >"$job"

passed=0 failed=0 summary=()
for series in "${kernels[@]}"; do
    rc=0
    guest_run "$series" "$list" "$job" </dev/null || rc=$?
    read -r _ p f n < <(parse_guest_tests "$BARMAP_GUEST_WORK/logs/$series-output.log" | tail -n 1)
    summary+=("kernel $series: $p passed, $f failed in $n test binaries (guest status $rc)")
    summary+=("$(parse_guest_tests "$BARMAP_GUEST_WORK/logs/$series-output.log" | sed '$d')")
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
