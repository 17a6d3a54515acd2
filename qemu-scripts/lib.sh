# shellcheck shell=bash
# Shared functions of the barmap QEMU guest harness. Sourced by the scripts in this folder, never run.
#
# Stages: host packages -> guest kernel (download, cache, extract) -> static build of the test, example and
# bench binaries -> initramfs (busybox, modules, binaries, /init, /job.sh) -> QEMU (TCG) run -> parse results.
# Every knob is an environment variable; see README.md in this folder.

shopt -s inherit_errexit

BARMAP_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BARMAP_SCRIPTS="$BARMAP_REPO/qemu-scripts"
: "${BARMAP_GUEST_TARGET:=$BARMAP_REPO/target/guest}"
: "${BARMAP_GUEST_TIMEOUT:=900}"
: "${BARMAP_GUEST_MEM:=1024}"
: "${BARMAP_QEMU_ARGS:=}"
: "${BARMAP_KERNEL_ARGS:=}"
if [[ -z "${BARMAP_CACHE:-}" ]]; then
    if [[ -w /var/cache/barmap-kernels || (! -e /var/cache/barmap-kernels && -w /var/cache) ]]; then
        BARMAP_CACHE=/var/cache/barmap-kernels
    else
        BARMAP_CACHE="$BARMAP_REPO/.cache/kernels"
    fi
fi
BARMAP_GUEST_WORK="$BARMAP_GUEST_TARGET/qemu"
BARMAP_RUST_TARGET=x86_64-unknown-linux-gnu
BARMAP_KERNELS=(6.1 6.12)
BARMAP_HOST_PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils jq libc6-dev clang)
# Printed by the guest (qemu-scripts/guest/*) on a line of its own; parsed by the host.
BARMAP_MARKER='@@BARMAP@@'

# shell_quote WORDS...: prints the words single-quoted for a POSIX shell (the guest's), space-separated.
shell_quote() {
    local word quoted=()
    for word in "$@"; do
        quoted+=("'${word//\'/\'\\\'\'}'")
    done
    printf '%s' "${quoted[*]}"
}

log() { printf 'barmap: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# run_dir_init: creates RUN_DIR, this run's scratch folder under $BARMAP_GUEST_WORK (build lists, job,
# initramfs), removed when the script exits.
run_dir_init() {
    mkdir -p "$BARMAP_GUEST_WORK"
    RUN_DIR=$(mktemp -d "$BARMAP_GUEST_WORK/run.XXXXXX")
    trap 'rm -rf "$RUN_DIR"' EXIT
}

# ---------------------------------------------------------------------------------------------------------
# Host packages

# Installs the Debian packages the harness needs when any is missing (root only; otherwise says what to do).
ensure_host_packages() {
    local missing=() pkg
    for pkg in "${BARMAP_HOST_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" == ii* ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $EUID -eq 0 ]] || die "missing packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# ---------------------------------------------------------------------------------------------------------
# Guest kernels: Debian's signed images, newest of each series, cached in $BARMAP_CACHE/<package>/

# kernel_check SERIES: dies unless SERIES is a known kernel series.
kernel_check() {
    case "$1" in
    6.1 | 6.12) ;;
    *) die "unknown kernel '$1' (expected one of: ${BARMAP_KERNELS[*]})" ;;
    esac
}

# kernel_package_regex SERIES: the apt package name pattern of the series.
kernel_package_regex() {
    case "$1" in
    6.1) echo '^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
    6.12) echo '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' ;;
    esac
}

# kernel_modules SERIES: the modules /init loads, in load order (dependencies first).
kernel_modules() {
    case "$1" in
    6.1) echo irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci ccp kvm kvm-amd ;;
    6.12) echo irqbypass vfio vfio_iommu_type1 vfio-pci-core vfio-pci ccp kvm kvm-amd ;;
    esac
}

# kernel_newest_package SERIES: newest package of the series known to apt, else the newest cached .deb.
kernel_newest_package() {
    local regex pkg
    regex=$(kernel_package_regex "$1")
    pkg=$(apt-cache search --names-only "$regex" | awk '{print $1}' | sort -V | tail -n 1)
    if [[ -z "$pkg" && $EUID -eq 0 ]]; then
        log "no $1 kernel package known to apt: running apt-get update"
        apt-get update -q >&2
        pkg=$(apt-cache search --names-only "$regex" | awk '{print $1}' | sort -V | tail -n 1)
    fi
    if [[ -z "$pkg" ]]; then
        pkg=$(find "$BARMAP_CACHE" -maxdepth 1 -name 'linux-image-*.deb' -printf '%f\n' 2>/dev/null |
            sed 's/_.*//' | grep -E "$regex" | sort -V | tail -n 1 || true)
    fi
    [[ -n "$pkg" ]] || die "no package matches $regex in apt or in $BARMAP_CACHE"
    echo "$pkg"
}

# kernel_prepare SERIES: prints the directory holding `vmlinuz` and `modules/NN-name.ko` (decompressed),
# downloading and extracting the kernel package on first use. Holds a lock on the cache (shared by worktrees).
kernel_prepare() {
    local series=$1 pkg dir
    kernel_check "$series"
    pkg=$(kernel_newest_package "$series")
    dir="$BARMAP_CACHE/$pkg"
    if [[ ! -f "$dir/.complete" ]]; then
        mkdir -p "$BARMAP_CACHE"
        (
            flock 9
            if [[ ! -f "$dir/.complete" ]]; then
                kernel_extract "$series" "$pkg" "$dir"
            fi
        ) 9>"$BARMAP_CACHE/.lock"
    fi
    echo "$dir"
}

# kernel_extract SERIES PACKAGE DIR: downloads PACKAGE's .deb into the cache if absent and fills DIR.
kernel_extract() {
    local series=$1 pkg=$2 dir=$3 deb tmp i m ko
    rm -rf "$BARMAP_CACHE"/.extract.*
    deb=$(find "$BARMAP_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
    if [[ -z "$deb" ]]; then
        log "downloading $pkg into $BARMAP_CACHE"
        (cd "$BARMAP_CACHE" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
        deb=$(find "$BARMAP_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
        [[ -n "$deb" ]] || die "apt-get download $pkg left no .deb in $BARMAP_CACHE"
    fi
    log "extracting $(basename "$deb")"
    tmp=$(mktemp -d "$BARMAP_CACHE/.extract.XXXXXX")
    rm -rf "$dir"
    mkdir -p "$dir/modules"
    dpkg -x "$deb" "$tmp"
    cp "$tmp"/boot/vmlinuz-* "$dir/vmlinuz" || die "no boot/vmlinuz-* in $deb"
    i=10
    for m in $(kernel_modules "$series"); do
        ko=$(find "$tmp/lib/modules" -name "$m.ko" -o -name "$m.ko.xz" | head -n 1)
        [[ -n "$ko" ]] || die "module $m not found in $deb"
        case "$ko" in
        *.xz) xz -dc "$ko" >"$dir/modules/$i-$m.ko" ;;
        *) cp "$ko" "$dir/modules/$i-$m.ko" ;;
        esac
        i=$((i + 1))
    done
    rm -rf "$tmp"
    touch "$dir/.complete"
}

# ---------------------------------------------------------------------------------------------------------
# Static build of the binaries that go into the guest

# guest_build MODE OUT: builds statically (separate target dir) and writes "KIND NAME PATH" lines to OUT:
#   MODE test:  KIND test (lib unit tests, integration tests) and example (examples, normal build);
#   MODE bench: KIND bench (criterion bench binaries, bench profile).
guest_build() {
    local mode=$1 out=$2 filter json="$2.json" format=json rc=0
    local -a cmd
    case "$mode" in
    test)
        cmd=(test --no-run)
        filter='(.profile.test and (.target.kind[0] != "bench")) or .target.kind[0] == "example"'
        ;;
    bench)
        cmd=(bench --no-run)
        filter='.target.kind[0] == "bench"'
        ;;
    esac
    [[ -t 2 ]] && format='json-diagnostic-rendered-ansi'
    log "static build ($mode) in $BARMAP_GUEST_TARGET"
    (cd "$BARMAP_REPO" && RUSTFLAGS='-C target-feature=+crt-static' cargo "${cmd[@]}" \
        --target "$BARMAP_RUST_TARGET" --target-dir "$BARMAP_GUEST_TARGET" \
        --message-format="$format" >"$json") || rc=$?
    # With JSON output the compiler's warnings and errors are in the JSON: show them as cargo would.
    jq -j 'select(.reason == "compiler-message") | .message.rendered' "$json" >&2
    ((rc == 0)) || die "static $mode build failed (cargo exit $rc)"
    jq -r "select(.reason == \"compiler-artifact\" and .executable != null and ($filter))
           | [(if .target.kind[0] == \"example\" or .target.kind[0] == \"bench\"
               then .target.kind[0] else \"test\" end),
              .target.kind[0] + \"-\" + .target.name, .executable] | @tsv" "$json" >"$out"
}

# guest_build_has BUILD_LIST KIND NAME: true if the build list holds that binary
# (e.g. `example example-barpoke`).
guest_build_has() {
    awk -v k="$2" -v n="$3" '$1 == k && $2 == n { found = 1 } END { exit !found }' "$1"
}

# ---------------------------------------------------------------------------------------------------------
# Initramfs

# initramfs_build KERNEL_DIR BUILD_LIST JOB OUT: writes the guest's initramfs (uncompressed newc cpio) to OUT.
# Layout: busybox applets, /init, /lib/modules/barmap/*.ko, /tests/*, examples in /usr/bin, /benches/*,
# /usr/bin/barmap-run-tests, and JOB as /job.sh (the command the guest runs).
initramfs_build() {
    local kdir=$1 list=$2 job=$3 out=$4 root kind name path applet
    root=$(mktemp -d "$RUN_DIR/initramfs.XXXXXX")
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,tests,benches,lib/modules/barmap}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list-full); do
        [[ -e "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
    done
    install -m 0755 "$BARMAP_SCRIPTS/guest/init" "$root/init"
    install -m 0755 "$BARMAP_SCRIPTS/guest/run-tests" "$root/usr/bin/barmap-run-tests"
    install -m 0755 "$job" "$root/job.sh"
    cp "$kdir"/modules/*.ko "$root/lib/modules/barmap/"
    while IFS=$'\t' read -r kind name path; do
        case "$kind" in
        test) cp "$path" "$root/tests/$name" ;;
        example) cp "$path" "$root/usr/bin/${name#example-}" ;;
        bench) cp "$path" "$root/benches/${name#bench-}" ;;
        esac
    done <"$list"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out"
    rm -rf "$root"
}

# ---------------------------------------------------------------------------------------------------------
# QEMU

# testdev_rom FILE: writes the 4 KiB expansion ROM given to pci-testdev, so the tests have a read-only
# region: a PCI ROM header (0x55 0xAA; image size byte 0, so the firmware skips it) pointing at a "PCIR"
# structure (1b36:0005, one 8 x 512-byte image, last-image flag) that the kernel checks before it lets VFIO
# read the ROM, and the text "barmap pci-testdev ROM" at 0x40.
testdev_rom() {
    {
        printf '\x55\xaa\x00'
        head -c $((0x18 - 3)) /dev/zero
        printf '\x1c\x00\x00\x00'
        printf 'PCIR\x36\x1b\x05\x00\x00\x00\x18\x00\x00\x00\xff\x00\x08\x00\x00\x00\x00\x80\x00\x00'
        head -c $((0x40 - 0x34)) /dev/zero
        printf 'barmap pci-testdev ROM\x00'
    } >"$1"
    truncate -s 4096 "$1"
}

# guest_boot SERIES KERNEL_DIR INITRAMFS: boots the guest under TCG with edu and pci-testdev behind an
# intel-iommu, streams the job's output (guest ttyS1) to stdout and into $BARMAP_GUEST_WORK/logs/
# SERIES-output.log, and keeps the kernel console (ttyS0) in SERIES-console.log (also streamed to stderr if
# BARMAP_CONSOLE=1). Returns QEMU's (or timeout's) exit status. Stdin is passed through to the job (use
# </dev/null for unattended runs).
guest_boot() {
    local series=$1 kdir=$2 initrd=$3 logs="$BARMAP_GUEST_WORK/logs" rc=0 tail_pid=
    local -a extra
    read -r -a extra <<<"$BARMAP_QEMU_ARGS"
    mkdir -p "$logs"
    : >"$logs/$series-console.log"
    if [[ "${BARMAP_CONSOLE:-0}" == 1 ]]; then
        tail -n +1 -F "$logs/$series-console.log" >&2 2>/dev/null &
        tail_pid=$!
    fi
    testdev_rom "$BARMAP_GUEST_WORK/testdev-rom.bin"
    log "booting guest kernel $series ($(basename "$kdir")), timeout ${BARMAP_GUEST_TIMEOUT}s"
    timeout --foreground -k 10 "$BARMAP_GUEST_TIMEOUT" \
        qemu-system-x86_64 -machine q35,kernel-irqchip=split -accel tcg -cpu max -smp 1 \
        -m "$BARMAP_GUEST_MEM" \
        -device intel-iommu,intremap=on,caching-mode=on -nic none -device edu \
        -device "pci-testdev,romfile=$BARMAP_GUEST_WORK/testdev-rom.bin" \
        -kernel "$kdir/vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 intel_iommu=on panic=1 $BARMAP_KERNEL_ARGS" \
        -display none -monitor none -no-reboot \
        -serial "file:$logs/$series-console.log" -chardev stdio,id=job,signal=on -serial chardev:job \
        "${extra[@]}" | tee "$logs/$series-output.log" || rc=$?
    if [[ -n "$tail_pid" ]]; then
        sleep 0.2 # let tail show the console's last lines
        kill "$tail_pid"
    fi
    return "$rc"
}

# guest_job_status SERIES: the job's exit status from the guest's job-exit marker, or nothing.
guest_job_status() {
    strip_ansi <"$BARMAP_GUEST_WORK/logs/$1-output.log" |
        sed -n "s/.*$BARMAP_MARKER job-exit \([0-9]*\).*/\1/p" | tail -n 1
}

# guest_run SERIES BUILD_LIST JOB: (after run_dir_init) builds the initramfs, boots, and sets GUEST_STATUS to
# the job's exit status: 124 on timeout, 125 if the guest ended without reporting it. Dies on harness errors.
# (Not meant to be called in an `||` or `if` context: that would switch off `set -e` inside.)
# shellcheck disable=SC2034 # GUEST_STATUS is read by the scripts
guest_run() {
    local series=$1 list=$2 job=$3 kdir initrd="$RUN_DIR/initrd-$1.cpio" qemu_rc=0 status
    kdir=$(kernel_prepare "$series")
    initramfs_build "$kdir" "$list" "$job" "$initrd"
    guest_boot "$series" "$kdir" "$initrd" || qemu_rc=$?
    rm -f "$initrd"
    status=$(guest_job_status "$series")
    if ((qemu_rc == 124 || qemu_rc == 137)); then
        log "guest $series timed out after ${BARMAP_GUEST_TIMEOUT}s (BARMAP_GUEST_TIMEOUT)"
        guest_console_tail "$series"
        GUEST_STATUS=124
    elif [[ -z "$status" ]]; then
        log "guest $series ended without reporting the job's status (QEMU exit $qemu_rc)"
        guest_console_tail "$series"
        GUEST_STATUS=125
    else
        ((qemu_rc == 0)) || log "warning: QEMU exited with $qemu_rc"
        GUEST_STATUS=$status
    fi
}

# guest_console_tail SERIES: shows the end of the guest's kernel console, for failures.
guest_console_tail() {
    local f="$BARMAP_GUEST_WORK/logs/$1-console.log"
    log "last lines of the kernel console ($f):"
    tail -n 30 "$f" >&2 || true
}

# ---------------------------------------------------------------------------------------------------------
# Results

# strip_ansi: filters out carriage returns and terminal colour sequences.
strip_ansi() {
    sed 's/\r//g; s/\x1b\[[0-9;]*[A-Za-z]//g'
}

# parse_guest_tests OUTPUT_LOG: reads the guest's output and prints one "binary: ..." line per test binary,
# then "TOTAL passed failed binaries" last. A binary without a `test result:` line, or that exits non-zero
# without a counted failure, adds one failure; so does a binary that started but never reported its exit.
parse_guest_tests() {
    strip_ansi <"$1" | awk -v marker="$BARMAP_MARKER" '
        function finish(rc,   extra) {
            extra = 0
            if (!have) extra = 1
            else if (rc != 0 && f == 0) extra = 1
            printf "  %s: %d passed, %d failed, exit %s%s\n", name, p, f + extra, rc,
                (have ? "" : " (no test result line)")
            tp += p; tf += f + extra; nbin++; name = ""
        }
        index($0, marker " bin-start ") {
            split(substr($0, index($0, marker)), w, " ")
            name = w[3]; p = 0; f = 0; have = 0; next
        }
        index($0, marker " bin-exit ") && name != "" {
            split(substr($0, index($0, marker)), w, " ")
            finish(w[4]); next
        }
        name != "" && match($0, /test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed/) {
            split(substr($0, RSTART, RLENGTH), w, " ")
            p += w[4]; f += w[6]; have = 1
        }
        END {
            if (name != "") finish("none (never finished)")
            printf "TOTAL %d %d %d\n", tp, tf, nbin
        }'
}

# parse_cargo_tests LOG: sums the `test result:` lines of host cargo test output; prints "passed failed".
parse_cargo_tests() {
    strip_ansi <"$1" | awk 'match($0, /test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed/) {
            split(substr($0, RSTART, RLENGTH), w, " "); p += w[4]; f += w[6]
        }
        END { printf "%d %d\n", p, f }'
}
