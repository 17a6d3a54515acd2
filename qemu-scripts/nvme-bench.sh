#!/usr/bin/env bash
# nvme-bench.sh [KERNEL]: barmap's userspace NVMe driver (examples/nvme.rs) against the kernel's nvme driver
# on the same controller in one guest boot (KERNEL 6.1, 6.12 or 7.3; default 6.12). Builds both examples in
# release, adds the kernel's nvme modules (and what they depend on) to the initramfs, and in the guest runs,
# on the null namespace (2, QEMU null-co: no storage cost) and the file-backed one (1):
#   4 KiB random reads at QD1 (median and p99 latency), at QD32 (IOPS), 128 KiB sequential reads at QD4
#   (MiB/s), each for BARMAP_NVME_BENCH_TIME seconds (default 3): `nvme bench` polled and on MSI-X, then,
#   after rebinding the controller from vfio-pci to nvme (loaded with poll_queues=1), `nvme_uring`
#   (O_DIRECT through io_uring, the same patterns and queue depths) on /dev/nvme0nN, completing on
#   interrupts and again with IORING_SETUP_IOPOLL;
#   `nvme floor`: the cost of one doorbell write and one register read (the floor under each command).
# Prints a table per namespace and RATIO lines (userspace / kernel; goals: QD1 latency <= 0.8, QD32 IOPS
# >= 1.0). Exits non-zero if a run failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BARMAP_NVME_BENCH_TIME:=3}"
series=${1:-6.12}
kernel_check "$series"
! kernel_is_built "$series" ||
    die "nvme-bench.sh needs a Debian kernel, whose nvme driver is a module (6.1, 6.12 or 7.3), not $series"

# nvme_modules SERIES OUT: extracts the kernel's nvme module and every module it depends on (the
# `depends=` field of each, recursively) from the series' cached packages into OUT, decompressed, and
# writes their load order (dependencies first) to OUT/order.
nvme_modules() {
    local series=$1 out=$2 pkg tmp p deb
    local -a pkgs order=()
    pkg=$(basename "$(kernel_prepare "$series")")
    read -r -a pkgs <<<"$(kernel_packages "$series" "$pkg")"
    tmp=$(mktemp -d "$RUN_DIR/modules.XXXXXX")
    for p in "${pkgs[@]}"; do
        deb=$(kernel_cached_deb "$p")
        [[ -n "$deb" ]] || die "no cached .deb of $p in $BARMAP_CACHE"
        dpkg -x "$deb" "$tmp"
    done
    mkdir -p "$out"
    add_module() {
        local m=$1 ko dep
        [[ " ${order[*]} " == *" $m "* ]] && return 0
        ko=$(find "$tmp" -path '*/modules/*' \( -name "$m.ko" -o -name "$m.ko.*" \) | head -n 1)
        [[ -n "$ko" ]] || die "module $m not found in ${pkgs[*]}"
        kernel_decompress "$ko" "$out/$m.ko"
        for dep in $(strings "$out/$m.ko" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '); do
            add_module "$dep"
        done
        order+=("$m")
    }
    add_module nvme
    printf '%s\n' "${order[@]}" >"$out/order"
    rm -rf "$tmp"
    log "kernel nvme modules: ${order[*]}"
}

ensure_host_packages
run_dir_init
guest_build nvme-bench "$RUN_DIR/build.list"
guest_build_has "$RUN_DIR/build.list" example example-nvme || die "examples/nvme.rs was not built"
guest_build_has "$RUN_DIR/build.list" example example-nvme_uring || die "examples/nvme_uring.rs was not built"
nvme_modules "$series" "$RUN_DIR/extra/lib/modules/nvme"
export BARMAP_INITRAMFS_EXTRA="$RUN_DIR/extra"

cat >"$RUN_DIR/job.sh" <<JOB
T=$BARMAP_NVME_BENCH_TIME
JOB
cat >>"$RUN_DIR/job.sh" <<'JOB'
A=$BARMAP_NVME
status=0
# run WHO NS TEST CMD...: runs CMD with --json and prints its result as one BENCH line.
run() {
    who=$1 ns=$2 test=$3
    shift 3
    if line=$("$@" --quiet --json); then
        echo "BENCH {\"who\":\"$who\",\"ns\":$ns,\"test\":\"$test\",\"result\":$line}"
    else
        echo "bench: $who namespace $ns $test failed"
        status=1
    fi
}
# patterns WHO NS CMD...: the three runs with CMD as the benchmark command.
patterns() {
    who=$1 ns=$2
    shift 2
    run "$who" "$ns" qd1 "$@" --pattern randread --qd 1 --bs 4096 --time "$T"
    run "$who" "$ns" qd32 "$@" --pattern randread --qd 32 --bs 4096 --time "$T"
    run "$who" "$ns" seq128k "$@" --pattern seqread --qd 4 --bs 131072 --time "$T"
}
if line=$(nvme --json floor --count 20000); then echo "FLOOR $line"; else status=1; fi
for ns in 2 1; do
    patterns barmap-poll "$ns" nvme --mode poll bench --nsid "$ns"
    patterns barmap-msix "$ns" nvme --mode msix bench --nsid "$ns"
done

dev=/sys/bus/pci/devices/$A
echo "$A" >"$dev/driver/unbind"
echo nvme >"$dev/driver_override"
for m in $(cat /lib/modules/nvme/order); do
    params=
    [ "$m" = nvme ] && params=poll_queues=1 # a polled queue for io_uring's IOPOLL, besides the interrupt one
    insmod "/lib/modules/nvme/$m.ko" $params || { echo "bench: insmod $m failed"; exit 1; }
done
[ -e "$dev/driver" ] || echo "$A" >/sys/bus/pci/drivers_probe
i=0
while [ ! -b /dev/nvme0n2 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
driver=$(readlink "$dev/driver")
echo "bench: $A bound to ${driver##*/}; nvme0n1 $(cat /sys/block/nvme0n1/size) and nvme0n2 $(cat /sys/block/nvme0n2/size) sectors"
[ -b /dev/nvme0n2 ] || { echo "bench: the kernel's nvme driver made no /dev/nvme0n2"; exit 1; }
for ns in 2 1; do
    patterns kernel "$ns" nvme_uring "/dev/nvme0n$ns"
    patterns kernel-iopoll "$ns" nvme_uring "/dev/nvme0n$ns" --iopoll
done
exit $status
JOB

guest_run "$series" "$RUN_DIR/build.list" "$RUN_DIR/job.sh" </dev/null

# The results side by side, and the ratios.
out="$BARMAP_GUEST_WORK/logs/$series-output.log"
strip_ansi <"$out" | sed -n 's/^BENCH //p' | jq -rs --argjson floor "$(strip_ansi <"$out" |
    sed -n 's/^FLOOR //p' | tail -n 1 | grep . || echo null)" '
    def get(who; ns; test): (map(select(.who == who and .ns == ns and .test == test)) | .[0].result);
    def f(x; d): if x == null then "-" else (x * pow(10; d) | round / pow(10; d) | tostring) end;
    def pad(s; n): (s + (" " * n))[0:n];
    . as $all |
    (if $floor != null then "floor: doorbell write \($floor.doorbell_write_ns) ns, register read \($floor.register_read_ns) ns" else "floor: not measured" end),
    ([2, 1][] as $ns |
        ("", "namespace \($ns) (\(if $ns == 2 then "null-co" else "file-backed" end))",
         (pad("driver"; 20) + pad("QD1 p50 us"; 12) + pad("QD1 p99 us"; 12) + pad("QD32 IOPS"; 12) + "128K QD4 MiB/s"),
         (["barmap-poll", "barmap-msix", "kernel", "kernel-iopoll"][] as $w |
            pad($w; 20) + pad(f($all | get($w; $ns; "qd1") | .lat_us.p50; 1); 12)
            + pad(f($all | get($w; $ns; "qd1") | .lat_us.p99; 1); 12)
            + pad(f($all | get($w; $ns; "qd32") | .iops; 0); 12) + f($all | get($w; $ns; "seq128k") | .mib_s; 1)),
         ([["barmap-poll", "kernel"], ["barmap-msix", "kernel"], ["barmap-poll", "kernel-iopoll"]][] as [$w, $kw] |
            ($all | get($w; $ns; "qd1")) as $u | ($all | get($kw; $ns; "qd1")) as $k |
            ($all | get($w; $ns; "qd32")) as $u32 | ($all | get($kw; $ns; "qd32")) as $k32 |
            ($all | get($w; $ns; "seq128k")) as $us | ($all | get($kw; $ns; "seq128k")) as $ks |
            if $u and $k then "RATIO ns\($ns) qd1-p50-latency \($w)/\($kw) \(f($u.lat_us.p50 / $k.lat_us.p50; 2)) (goal <= 0.8)",
                "RATIO ns\($ns) qd1-p99-latency \($w)/\($kw) \(f($u.lat_us.p99 / $k.lat_us.p99; 2))" else empty end,
            if $u32 and $k32 then "RATIO ns\($ns) qd32-iops \($w)/\($kw) \(f($u32.iops / $k32.iops; 2)) (goal >= 1.0)" else empty end,
            if $us and $ks then "RATIO ns\($ns) seq128k-mib-s \($w)/\($kw) \(f($us.mib_s / $ks.mib_s; 2))" else empty end)))'
exit "$GUEST_STATUS"
