#!/usr/bin/env bash
# guest-bench.sh [KERNEL] [-- CRITERION-ARGS...]: builds the criterion benches statically (bench profile),
# boots the guest (KERNEL 6.1, 6.12 or 7.3; default 6.12) and runs each bench binary there with
# `--bench $BARMAP_BENCH_ARGS` (default: short warm-up and measurement) followed by CRITERION-ARGS (e.g. a
# benchmark name filter). BARMAP_BENCHES (space-separated bench names, e.g. "access") runs only those
# binaries. Prints their output; exits non-zero if a bench failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BARMAP_BENCH_ARGS:=--warm-up-time 1 --measurement-time 3}"
: "${BARMAP_BENCHES:=}"
[[ -t 1 ]] || BARMAP_BENCH_ARGS+=" --color never"
series=6.12
if (($# > 0)) && [[ $1 != -- ]]; then
    series=$1
    shift
fi
[[ ${1:-} == -- ]] && shift
kernel_check "$series"

ensure_host_packages
run_dir_init
guest_build bench "$RUN_DIR/build.list"
grep -q '^bench' "$RUN_DIR/build.list" || die "no bench binaries were built"

cat >"$RUN_DIR/job.sh" <<JOB
status=0
for bench in /benches/*; do
    name=\${bench##*/}
    case " $BARMAP_BENCHES " in
    "  " | *" \$name "*) ;;
    *) continue ;;
    esac
    echo "== \$name"
    "\$bench" --bench $BARMAP_BENCH_ARGS $(shell_quote "$@") || status=1
done
exit \$status
JOB
guest_run "$series" "$RUN_DIR/build.list" "$RUN_DIR/job.sh" </dev/null
exit "$GUEST_STATUS"
