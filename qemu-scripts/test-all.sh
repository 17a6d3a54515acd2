#!/usr/bin/env bash
# test-all.sh: runs every test. Host: `cargo test --workspace --all-targets --all-features` (barmap and the
# x86-mmio-emu crate), `cargo test --workspace --doc` and the fault-path host suites and x86-mmio-emu again in release (opt-level 3 code takes other instruction forms to the fault handler); all
# --no-fail-fast; device tests are ignored there. Guest: qemu-scripts/guest-test.sh on every kernel. Ends with the line
# "N passed, M failed" summing both; exits non-zero if anything failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_host_packages
mkdir -p "$BARMAP_GUEST_WORK/logs"
host_log="$BARMAP_GUEST_WORK/logs/host-test.log"
guest_log="$BARMAP_GUEST_WORK/logs/guest-test.log"

log "host: cargo test --workspace --all-targets --all-features; cargo test --workspace --doc; cargo test --release --test shadow_host --test shadow_forms --test revocation_host --test without_fault_handler_host --test region_host --test mmio_host --test shadow_refusal_host; cargo test --release -p x86-mmio-emu (--no-fail-fast)"
host_rc=0
(cd "$BARMAP_REPO" && cargo test --workspace --all-targets --all-features --no-fail-fast) 2>&1 | tee "$host_log" || host_rc=$?
(cd "$BARMAP_REPO" && cargo test --workspace --doc --no-fail-fast) 2>&1 | tee -a "$host_log" || host_rc=$?
(cd "$BARMAP_REPO" && cargo test --release --test shadow_host --test shadow_forms --test revocation_host \
    --test without_fault_handler_host --test region_host \
    --test mmio_host --test shadow_refusal_host --no-fail-fast) 2>&1 | tee -a "$host_log" ||
    host_rc=$?
(cd "$BARMAP_REPO" && cargo test --release -p x86-mmio-emu --no-fail-fast) 2>&1 | tee -a "$host_log" || host_rc=$?
read -r host_passed host_failed < <(parse_cargo_tests "$host_log")
if ((host_rc != 0 && host_failed == 0)); then
    log "host cargo test failed (status $host_rc) without a failed test: counted as 1 failure"
    host_failed=1
fi

log "guest: qemu-scripts/guest-test.sh all"
guest_rc=0
"$BARMAP_SCRIPTS/guest-test.sh" all 2>&1 | tee "$guest_log" || guest_rc=$?
guest_line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$guest_log" | tail -n 1 || true)
if [[ -n "$guest_line" ]]; then
    read -r guest_passed _ guest_failed _ <<<"$guest_line"
else
    log "guest-test.sh printed no result line (status $guest_rc): counted as 1 failure"
    guest_passed=0 guest_failed=1
fi
if ((guest_rc != 0 && guest_failed == 0)); then
    log "guest-test.sh failed (status $guest_rc) without a failed test: counted as 1 failure"
    guest_failed=1
fi

echo
echo "host: $host_passed passed, $host_failed failed"
echo "guest: $guest_passed passed, $guest_failed failed"
echo "$((host_passed + guest_passed)) passed, $((host_failed + guest_failed)) failed"
((host_failed + guest_failed == 0))
