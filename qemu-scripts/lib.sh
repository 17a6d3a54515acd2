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
: "${BARMAP_GUEST_MEM:=2048}"
: "${BARMAP_QEMU_ARGS:=}"
: "${BARMAP_KERNEL_ARGS:=}"
: "${BARMAP_CACHE:=$BARMAP_REPO/target/kernels}"
BARMAP_GUEST_WORK="$BARMAP_GUEST_TARGET/qemu"
BARMAP_RUST_TARGET=x86_64-unknown-linux-gnu
# The guests: Debian's kernels 6.1, 6.12 and 7.3, barmap's own build of 6.12 with iommufd (6.12-iommufd),
# and that kernel again without an IOMMU, in VFIO's no-IOMMU mode (noiommu).
BARMAP_KERNELS=(6.1 6.12 7.3 6.12-iommufd noiommu)
BARMAP_HOST_PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils jq libc6-dev zstd clang binutils)
# What building the 6.12-iommufd kernel (kernel_build) needs on top.
BARMAP_BUILD_PACKAGES=(gcc make flex bison bc libelf-dev libssl-dev perl)
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

# ensure_host_packages: installs the Debian packages the harness needs when any is missing (root only;
# otherwise says what to do).
ensure_host_packages() {
    ensure_packages "${BARMAP_HOST_PACKAGES[@]}"
}

# ensure_packages PACKAGE...: installs those of the Debian packages that are missing (root only).
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
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
#   6.1, 6.12: linux-image-* from the host's own apt sources (bookworm, bookworm-security);
#   7.3: linux-binary-* (vmlinuz), linux-modules-* and linux-base-* (config) from trixie-backports, through a
#        private apt state in $BARMAP_CACHE/apt-trixie-backports: the host's sources and lists stay untouched.

# kernel_check SERIES: dies unless SERIES is a known kernel series.
kernel_check() {
    case "$1" in
    6.1 | 6.12 | 7.3 | 6.12-iommufd | noiommu) ;;
    *) die "unknown kernel '$1' (expected one of: ${BARMAP_KERNELS[*]})" ;;
    esac
}

# kernel_package_regex SERIES: the apt package name pattern of the series (the package holding vmlinuz).
kernel_package_regex() {
    case "$1" in
    6.1) echo '^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
    6.12) echo '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' ;;
    7.3) echo '^linux-binary-7\.3\.[0-9]+\+deb13-amd64$' ;;
    esac
}

# kernel_packages SERIES PACKAGE: every package to fetch for the kernel whose vmlinuz is in PACKAGE.
kernel_packages() {
    case "$1" in
    7.3) echo "$2" "${2/#linux-binary-/linux-modules-}" "${2/#linux-binary-/linux-base-}" ;;
    *) echo "$2" ;;
    esac
}

# kernel_modules SERIES: the modules /init loads, in load order (dependencies first).
kernel_modules() {
    case "$1" in
    6.12-iommufd | noiommu) ;;
    6.1) echo irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci ccp kvm kvm-amd ;;
    6.12 | 7.3) echo irqbypass vfio vfio_iommu_type1 vfio-pci-core vfio-pci ccp kvm kvm-amd ;;
    esac
}

# kernel_only_tests SERIES: the test binaries guest-test.sh runs on the series (BARMAP_ONLY_TESTS of
# guest/run-tests): all, but on noiommu only the no-IOMMU tests.
kernel_only_tests() {
    case "$1" in
    noiommu) echo 'test-noiommu* opt3-test-noiommu*' ;;
    *) echo '*' ;;
    esac
}

# The modules of the L2 guest's initramfs (qemu-scripts/guest/l2-init), with the modules they depend on
# (found from each module's `depends=`), which kernel_extract puts first.
BARMAP_L2_MODULES=(nvme)

BARMAP_BACKPORTS_APT="$BARMAP_CACHE/apt-trixie-backports"

# kernel_apt SERIES apt-get|apt-cache ARGS...: runs the apt command for the series' archive: the host's
# configuration for 6.1 and 6.12, the private trixie-backports state for 7.3.
kernel_apt() {
    local series=$1 cmd=$2
    shift 2
    case "$series" in
    7.3)
        "$cmd" -o Dir::Etc::sourcelist="$BARMAP_BACKPORTS_APT/sources.list" \
            -o Dir::Etc::sourceparts=/dev/null -o Dir::State::Lists="$BARMAP_BACKPORTS_APT/lists" \
            -o Dir::Cache="$BARMAP_BACKPORTS_APT/cache" "$@"
        ;;
    *) "$cmd" "$@" ;;
    esac
}

# apt_source_of CODENAME: the archive URI of the host's apt source for release CODENAME (needs its lists).
apt_source_of() {
    # shellcheck disable=SC2016 # apt's format fields, not shell expansions
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' | awk -v c="$1" '$1 == c && !uri { uri = $2 }
        END { if (uri) print uri }'
}

# debian_mirror: the Debian archive the host's apt uses for its own release (bookworm), or
# $BARMAP_DEBIAN_MIRROR if set. Runs `apt-get update` (root) if the host's apt has no lists yet.
debian_mirror() {
    local codename uri
    if [[ -n "${BARMAP_DEBIAN_MIRROR:-}" ]]; then
        echo "$BARMAP_DEBIAN_MIRROR"
        return 0
    fi
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n "$codename" ]] || die "no VERSION_CODENAME in /etc/os-release: set BARMAP_DEBIAN_MIRROR"
    uri=$(apt_source_of "$codename")
    if [[ -z "$uri" && $EUID -eq 0 ]]; then
        log "the host's apt has no lists for $codename: running apt-get update"
        apt-get update -q >&2
        uri=$(apt_source_of "$codename")
    fi
    [[ -n "$uri" ]] ||
        die "cannot tell the host's Debian mirror (no apt source for $codename): set BARMAP_DEBIAN_MIRROR"
    echo "$uri"
}

# kernel_apt_update SERIES: refreshes the package lists the series is found in. 6.1 and 6.12: the host's
# `apt-get update` (root only; returns 1 otherwise). 7.3: the private state, created on first use; the
# archive's signature is checked against Debian's keyring, as for the host's own sources.
kernel_apt_update() {
    local series=$1 mirror
    case "$series" in
    7.3)
        mirror=$(debian_mirror) || return 1
        mkdir -p "$BARMAP_BACKPORTS_APT"/{lists/partial,cache/archives/partial}
        printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie-backports main\n' \
            "$mirror" >"$BARMAP_BACKPORTS_APT/sources.list"
        log "updating the trixie-backports package lists in $BARMAP_BACKPORTS_APT ($mirror)"
        kernel_apt "$series" apt-get update -q -o APT::Sandbox::User="$(id -un)" >&2
        ;;
    *)
        [[ $EUID -eq 0 ]] || return 1
        log "running apt-get update"
        apt-get update -q >&2
        ;;
    esac
}

# kernel_apt_newest SERIES: the newest package of the series that apt knows (nothing if none).
kernel_apt_newest() {
    local regex
    regex=$(kernel_package_regex "$1")
    [[ $1 != 7.3 || -d "$BARMAP_BACKPORTS_APT/lists" ]] || return 0
    kernel_apt "$1" apt-cache search --names-only "$regex" | awk '{print $1}' | sort -V | tail -n 1
}

# kernel_newest_package SERIES: newest package of the series known to apt (its lists are updated first if
# they know none), else the newest cached .deb.
kernel_newest_package() {
    local series=$1 regex pkg
    regex=$(kernel_package_regex "$series")
    pkg=$(kernel_apt_newest "$series")
    if [[ -z "$pkg" ]]; then
        log "no $series kernel package known to apt"
        if kernel_apt_update "$series"; then
            pkg=$(kernel_apt_newest "$series")
        else
            log "warning: could not update the package lists for $series"
        fi
    fi
    if [[ -z "$pkg" ]]; then
        pkg=$(find "$BARMAP_CACHE" -maxdepth 1 -name 'linux-*.deb' -printf '%f\n' 2>/dev/null |
            sed 's/_.*//' | grep -E "$regex" | sort -V | tail -n 1 || true)
    fi
    [[ -n "$pkg" ]] || die "no package matches $regex in apt or in $BARMAP_CACHE"
    echo "$pkg"
}

# kernel_prepare SERIES: prints the directory holding `vmlinuz`, `config`, `modules/NN-name.ko` and
# `l2-modules/NN-name.ko` (decompressed), downloading and extracting the kernel's packages on first use
# (6.12-iommufd and noiommu: building the kernel, kernel_build_prepare). Holds a lock on the cache (shared
# by worktrees).
kernel_prepare() {
    local series=$1 pkg dir
    kernel_check "$series"
    mkdir -p "$BARMAP_CACHE"
    if kernel_is_built "$series"; then
        kernel_build_prepare
        return 0
    fi
    pkg=$(cache_locked kernel_newest_package "$series") # apt-get update inside must not race another run's
    dir="$BARMAP_CACHE/$pkg"
    if [[ ! -f "$dir/.complete" || ! -d "$dir/l2-modules" ]]; then
        (
            flock 9
            if [[ ! -f "$dir/.complete" || ! -d "$dir/l2-modules" ]]; then
                kernel_extract "$series" "$pkg" "$dir"
            fi
        ) 9>"$BARMAP_CACHE/.lock"
    fi
    echo "$dir"
}

# cache_locked CMD...: runs CMD in a subshell holding the kernel cache's lock.
cache_locked() {
    (
        flock 9
        "$@"
    ) 9>"$BARMAP_CACHE/.lock"
}

# kernel_cached_deb PACKAGE: the newest cached .deb of PACKAGE, or nothing.
kernel_cached_deb() {
    find "$BARMAP_CACHE" -maxdepth 1 -name "${1}_*.deb" | sort -V | tail -n 1
}

# kernel_download SERIES PACKAGE...: downloads the packages' .debs into the cache. Lists that name a version
# the archive no longer has are updated once and the download retried.
kernel_download() {
    local series=$1
    shift
    log "downloading $* into $BARMAP_CACHE"
    if ! (cd "$BARMAP_CACHE" && kernel_apt "$series" apt-get download -q -o APT::Sandbox::User="$(id -un)" \
        "$@" >&2); then
        log "download failed: updating the package lists and trying again"
        kernel_apt_update "$series" || die "cannot update the package lists for $series (not root?)"
        (cd "$BARMAP_CACHE" && kernel_apt "$series" apt-get download -q -o APT::Sandbox::User="$(id -un)" \
            "$@" >&2) || die "apt-get download $* failed"
    fi
}

# kernel_decompress FILE OUT: writes the module FILE (.ko, .ko.xz, .ko.zst or .ko.gz) uncompressed to OUT.
kernel_decompress() {
    case "$1" in
    *.ko) cp "$1" "$2" ;;
    *.xz) xz -dc "$1" >"$2" ;;
    *.zst) zstd -q -dc "$1" >"$2" ;;
    *.gz) gzip -dc "$1" >"$2" ;;
    *) die "unknown module compression: $1" ;;
    esac
}

# kernel_module_file TREE NAME: the file of module NAME (`-` and `_` alike) in the extracted packages TREE.
kernel_module_file() {
    find "$1" -path '*/modules/*' \( -name "${2//_/-}.ko" -o -name "${2//_/-}.ko.*" \
        -o -name "${2//-/_}.ko" -o -name "${2//-/_}.ko.*" \) | head -n 1
}

# kernel_l2_module TREE OUT NAME...: decompresses each module NAME from TREE into OUT as NN-NAME.ko after
# the modules it depends on (its `depends=` in .modinfo), each once (L2_SEEN, L2_INDEX: the caller's).
kernel_l2_module() {
    local tree=$1 out=$2 name ko deps
    shift 2
    for name in "$@"; do
        [[ " $L2_SEEN " == *" ${name//_/-} "* ]] && continue
        L2_SEEN+=" ${name//_/-}"
        ko=$(kernel_module_file "$tree" "$name")
        [[ -n "$ko" ]] || die "module $name (for the L2 guest) not found"
        kernel_decompress "$ko" "$out/module.ko"
        objcopy -O binary --only-section=.modinfo "$out/module.ko" "$out/modinfo"
        deps=$(tr '\0' '\n' <"$out/modinfo" | sed -n 's/^depends=//p' | tr ',' ' ')
        rm -f "$out/modinfo"
        # shellcheck disable=SC2086 # the dependencies are words
        kernel_l2_module "$tree" "$out" $deps
        kernel_decompress "$ko" "$out/$L2_INDEX-${name//_/-}.ko"
        L2_INDEX=$((L2_INDEX + 1))
    done
    rm -f "$out/module.ko"
}

# kernel_extract SERIES PACKAGE DIR: downloads the kernel's .debs into the cache if absent and fills DIR.
# Handles both layouts: /boot/vmlinuz-VER and /lib/modules/VER (bookworm), and /usr/lib/modules/VER/vmlinuz
# with the modules under /usr/lib/modules/VER/kernel (trixie, merged /usr).
kernel_extract() {
    local series=$1 pkg=$2 dir=$3 deb tmp i m ko p
    local -a pkgs missing=() debs=() found
    rm -rf "$BARMAP_CACHE"/.extract.*
    read -r -a pkgs <<<"$(kernel_packages "$series" "$pkg")"
    for p in "${pkgs[@]}"; do
        [[ -n "$(kernel_cached_deb "$p")" ]] || missing+=("$p")
    done
    ((${#missing[@]} == 0)) || kernel_download "$series" "${missing[@]}"
    for p in "${pkgs[@]}"; do
        deb=$(kernel_cached_deb "$p")
        [[ -n "$deb" ]] || die "apt-get download $p left no .deb in $BARMAP_CACHE"
        debs+=("$deb")
    done
    tmp=$(mktemp -d "$BARMAP_CACHE/.extract.XXXXXX")
    rm -rf "$dir"
    mkdir -p "$dir/modules"
    for deb in "${debs[@]}"; do
        log "extracting $(basename "$deb")"
        dpkg -x "$deb" "$tmp"
    done
    mapfile -t found < <(find "$tmp/boot" "$tmp/usr/lib/modules" -maxdepth 2 -name 'vmlinuz*' 2>/dev/null)
    ((${#found[@]} == 1)) || die "expected one vmlinuz in ${pkgs[*]}, found ${#found[@]}"
    cp "${found[0]}" "$dir/vmlinuz"
    mapfile -t found < <(find "$tmp/boot" "$tmp/usr/lib/modules" -maxdepth 2 \
        \( -name 'config-*' -o -name config \) 2>/dev/null)
    ((${#found[@]} == 0)) || cp "${found[0]}" "$dir/config"
    i=10
    for m in $(kernel_modules "$series"); do
        ko=$(find "$tmp" -path '*/modules/*' \( -name "$m.ko" -o -name "$m.ko.*" \) | head -n 1)
        [[ -n "$ko" ]] || die "module $m not found in ${pkgs[*]}"
        kernel_decompress "$ko" "$dir/modules/$i-$m.ko"
        i=$((i + 1))
    done
    mkdir -p "$dir/l2-modules"
    L2_SEEN="" L2_INDEX=10
    kernel_l2_module "$tmp" "$dir/l2-modules" "${BARMAP_L2_MODULES[@]}"
    rm -rf "$tmp"
    touch "$dir/.complete"
}

# ---------------------------------------------------------------------------------------------------------
# barmap's own guest kernel (6.12-iommufd, noiommu): Debian's kernels have neither IOMMUFD nor VFIO_NOIOMMU,
# so this one is built from Debian's linux-source-6.12 (host apt sources, bookworm-security) with
# `make allnoconfig` plus qemu-scripts/kernel/barmap.config: everything built in, no modules. Cached in
# $BARMAP_CACHE/linux-barmap-VERSION-HASH/ (VERSION: the source package's, HASH: of the fragment, so a
# changed fragment builds anew); the build tree is deleted afterwards.

BARMAP_KERNEL_SOURCE=linux-source-6.12
BARMAP_KERNEL_FRAGMENT="$BARMAP_SCRIPTS/kernel/barmap.config"

# kernel_is_built SERIES: true for the series that boot barmap's own kernel.
kernel_is_built() {
    [[ $1 == 6.12-iommufd || $1 == noiommu ]]
}

# kernel_source_candidate: the version of linux-source-6.12 apt would install (nothing if it knows none).
kernel_source_candidate() {
    apt-cache show --no-all-versions "$BARMAP_KERNEL_SOURCE" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1
}

# kernel_source_version: the version of linux-source-6.12 apt would fetch (its lists are updated first if
# they know none), else that of the newest cached .deb; nothing if neither.
kernel_source_version() {
    local version deb
    version=$(kernel_source_candidate)
    if [[ -z "$version" ]] && kernel_apt_update 6.12; then
        version=$(kernel_source_candidate)
    fi
    if [[ -z "$version" ]]; then
        deb=$(kernel_cached_deb "$BARMAP_KERNEL_SOURCE")
        [[ -z "$deb" ]] || version=$(dpkg-deb -f "$deb" Version)
    fi
    echo "$version"
}

# kernel_build_prepare: prints the directory of the built kernel (`vmlinuz`, `config`, and `modules/` and
# `l2-modules/` empty), building it first if it is not cached. Holds the cache's lock while building.
kernel_build_prepare() {
    local version hash dir
    version=$(cache_locked kernel_source_version)
    [[ -n "$version" ]] || die "no $BARMAP_KERNEL_SOURCE known to apt or cached in $BARMAP_CACHE"
    hash=$(sha256sum "$BARMAP_KERNEL_FRAGMENT" | cut -c1-12)
    dir="$BARMAP_CACHE/linux-barmap-$version-$hash"
    if [[ ! -f "$dir/.complete" ]]; then
        (
            flock 9
            [[ -f "$dir/.complete" ]] || kernel_build "$version" "$dir"
        ) 9>"$BARMAP_CACHE/.lock"
    fi
    echo "$dir"
}

# kernel_config_check CONFIG: dies unless every line of the fragment holds in CONFIG (`make olddefconfig`
# silently drops options whose dependencies are unmet), listing those that do not.
kernel_config_check() {
    local config=$1 line sym bad=()
    while read -r line; do
        if [[ $line =~ ^CONFIG_[A-Za-z0-9_]+= ]]; then
            grep -qxF -- "$line" "$config" ||
                bad+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo unset))")
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym=${BASH_REMATCH[1]}
            ! grep -q "^$sym=" "$config" || bad+=("$line (got: $(grep "^$sym=" "$config"))")
        fi
    done <"$BARMAP_KERNEL_FRAGMENT"
    ((${#bad[@]} == 0)) ||
        die "the kernel config lacks options of $BARMAP_KERNEL_FRAGMENT: $(printf '%s; ' "${bad[@]}")"
}

# kernel_build VERSION DIR: downloads linux-source-6.12 VERSION into the cache (if absent), unpacks it in
# $BARMAP_CACHE/.build.*, configures (allnoconfig, the fragment, olddefconfig, kernel_config_check), builds
# bzImage with all CPUs and fills DIR; the build log is DIR.build.log. Logs the time of each step.
kernel_build() {
    local version=$1 dir=$2 deb tree start=$SECONDS step jobs
    local -a make
    ensure_packages "${BARMAP_BUILD_PACKAGES[@]}"
    rm -rf "$BARMAP_CACHE"/.build.*
    deb=$(find "$BARMAP_CACHE" -maxdepth 1 -name "${BARMAP_KERNEL_SOURCE}_${version}_*.deb" | head -n 1)
    if [[ -z "$deb" ]]; then
        kernel_download 6.12 "$BARMAP_KERNEL_SOURCE=$version"
        deb=$(find "$BARMAP_CACHE" -maxdepth 1 -name "${BARMAP_KERNEL_SOURCE}_${version}_*.deb" | head -n 1)
        [[ -n "$deb" ]] || die "apt-get download $BARMAP_KERNEL_SOURCE=$version left no .deb in $BARMAP_CACHE"
    fi
    tree=$(mktemp -d "$BARMAP_CACHE/.build.XXXXXX")
    log "unpacking $(basename "$deb") in $tree"
    step=$SECONDS
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$BARMAP_KERNEL_SOURCE.tar.xz" | tar -xJ -C "$tree"
    tree="$tree/$BARMAP_KERNEL_SOURCE"
    [[ -f "$tree/Makefile" ]] || die "no kernel tree in $(basename "$deb")"
    log "unpacked in $((SECONDS - step)) s; configuring (allnoconfig + $BARMAP_KERNEL_FRAGMENT)"
    jobs=$(nproc)
    make=(make -C "$tree" ARCH=x86_64 -j"$jobs")
    "${make[@]}" allnoconfig >"$dir.build.log" 2>&1 || die "make allnoconfig failed (see $dir.build.log)"
    cat "$BARMAP_KERNEL_FRAGMENT" >>"$tree/.config"
    "${make[@]}" olddefconfig >>"$dir.build.log" 2>&1 || die "make olddefconfig failed (see $dir.build.log)"
    kernel_config_check "$tree/.config"
    log "building bzImage with $jobs jobs (log: $dir.build.log)"
    step=$SECONDS
    "${make[@]}" bzImage >>"$dir.build.log" 2>&1 || {
        tail -n 30 "$dir.build.log" >&2
        die "the kernel build failed (see $dir.build.log)"
    }
    log "bzImage built in $((SECONDS - step)) s"
    rm -rf "$dir"
    mkdir -p "$dir/modules" "$dir/l2-modules"
    cp "$tree/arch/x86/boot/bzImage" "$dir/vmlinuz"
    cp "$tree/.config" "$dir/config"
    rm -rf "${tree%/*}"
    touch "$dir/.complete"
    log "kernel $BARMAP_KERNEL_SOURCE $version built in $((SECONDS - start)) s: $dir"
}

# ---------------------------------------------------------------------------------------------------------
# Static build of the binaries that go into the guest

# Host-only test binaries, left out of the guest: they build code at test time with rustc, gcc and clang,
# which the guest does not have.
BARMAP_HOST_ONLY_TESTS=(shadow_forms)

# Device tests of the fault path that also run built at opt-level 3 (as users ship code: the compiler
# folds volatile accesses into other instruction forms there), as test binaries named `opt3-test-NAME`.
BARMAP_OPT3_TESTS=(shadow_guest revocation)

# guest_build MODE OUT: builds statically (separate target dir) and writes "KIND NAME PATH" lines to OUT:
#   MODE test:  KIND test (lib unit tests, integration tests) and example (examples, normal build), then
#               the BARMAP_OPT3_TESTS again in release as KIND test named opt3-test-NAME;
#   MODE bench: KIND bench (criterion bench binaries, bench profile);
#   MODE nvme-bench: KIND example, the userspace NVMe driver and its kernel baseline in release
#               (qemu-scripts/nvme-bench.sh).
guest_build() {
    local mode=$1 out=$2 filter json="$2.json" format=json rc=0 prefix="" t
    local -a cmd
    case "$mode" in
    test)
        cmd=(test --no-run)
        # shellcheck disable=SC2016 # $host_only is jq's, given with --argjson below
        filter='(.profile.test and (.target.kind[0] != "bench")
                 and ([.target.name] | inside($host_only) | not)) or .target.kind[0] == "example"'
        ;;
    opt3)
        cmd=(test --release --no-run)
        for t in "${BARMAP_OPT3_TESTS[@]}"; do cmd+=(--test "$t"); done
        filter='.profile.test'
        prefix="opt3-"
        ;;
    bench)
        cmd=(bench --no-run)
        filter='.target.kind[0] == "bench"'
        ;;
    nvme-bench)
        cmd=(build --release --example nvme --example nvme_uring)
        filter='.target.kind[0] == "example"'
        ;;
    esac
    # The guest has /dev/kvm: build the KVM passthrough (tests, example, bench) too.
    cmd+=(--features kvm)
    [[ -t 2 ]] && format='json-diagnostic-rendered-ansi'
    log "static build ($mode) in $BARMAP_GUEST_TARGET"
    (cd "$BARMAP_REPO" && RUSTFLAGS='-C target-feature=+crt-static' cargo "${cmd[@]}" \
        --target "$BARMAP_RUST_TARGET" --target-dir "$BARMAP_GUEST_TARGET" \
        --message-format="$format" >"$json") || rc=$?
    # With JSON output the compiler's warnings and errors are in the JSON: show them as cargo would.
    jq -j 'select(.reason == "compiler-message") | .message.rendered' "$json" >&2
    ((rc == 0)) || die "static $mode build failed (cargo exit $rc)"
    jq -r --argjson host_only "$(printf '%s\n' "${BARMAP_HOST_ONLY_TESTS[@]}" | jq -R . | jq -s .)" \
        "select(.reason == \"compiler-artifact\" and .executable != null and ($filter))
           | [(if .target.kind[0] == \"example\" or .target.kind[0] == \"bench\"
               then .target.kind[0] else \"test\" end),
              \"$prefix\" + .target.kind[0] + \"-\" + .target.name, .executable] | @tsv" "$json" >"$out"
    if [[ $mode == test ]]; then
        guest_build opt3 "$out.opt3"
        cat "$out.opt3" >>"$out"
    fi
}

# guest_build_has BUILD_LIST KIND NAME: true if the build list holds that binary
# (e.g. `example example-barpoke`).
guest_build_has() {
    awk -v k="$2" -v n="$3" '$1 == k && $2 == n { found = 1 } END { exit !found }' "$1"
}

# ---------------------------------------------------------------------------------------------------------
# Initramfs

# busybox_install ROOT: busybox in ROOT/bin with a link for each applet, in the usual folders.
busybox_install() {
    local root=$1 applet
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list-full); do
        [[ -e "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
    done
}

# l2_initramfs_build KERNEL_DIR OUT: writes the initramfs of the L2 guest that examples/vmm boots in the
# guest (tests/vmm_guest.rs): busybox, /init (guest/l2-init) and the kernel's l2-modules in /lib/modules/l2.
l2_initramfs_build() {
    local kdir=$1 out=$2 root
    root=$(mktemp -d "$RUN_DIR/l2-initramfs.XXXXXX")
    busybox_install "$root"
    mkdir -p "$root"/{proc,sys,dev,tmp,lib/modules/l2}
    install -m 0755 "$BARMAP_SCRIPTS/guest/l2-init" "$root/init"
    # None for barmap's own kernel: its nvme driver is built in.
    find "$kdir/l2-modules" -name '*.ko' -exec cp -t "$root/lib/modules/l2/" {} +
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out"
    rm -rf "$root"
}

# initramfs_build KERNEL_DIR BUILD_LIST JOB OUT: writes the guest's initramfs (uncompressed newc cpio) to OUT.
# Layout: busybox applets, /init, /lib/modules/barmap/*.ko, /tests/*, examples in /usr/bin, /benches/*,
# /usr/bin/barmap-run-tests, JOB as /job.sh (the command the guest runs), and in /l2 what examples/vmm
# boots: the same kernel (vmlinuz), the L2 initramfs (initramfs.cpio) and the SHA-256 of the part of NVMe
# namespace 1 that L2 reads (nvme.sha256: blocks BARMAP_NVME_L2_BLOCKS of nvme_image, which no test
# writes); then the tree in $BARMAP_INITRAMFS_EXTRA, if set, on top.
initramfs_build() {
    local kdir=$1 list=$2 job=$3 out=$4 root kind name path first count
    root=$(mktemp -d "$RUN_DIR/initramfs.XXXXXX")
    busybox_install "$root"
    mkdir -p "$root"/{proc,sys,dev,tmp,root,tests,benches,lib/modules/barmap,l2}
    install -m 0755 "$BARMAP_SCRIPTS/guest/init" "$root/init"
    install -m 0755 "$BARMAP_SCRIPTS/guest/run-tests" "$root/usr/bin/barmap-run-tests"
    install -m 0755 "$job" "$root/job.sh"
    find "$kdir/modules" -name '*.ko' -exec cp -t "$root/lib/modules/barmap/" {} +
    cp "$kdir/vmlinuz" "$root/l2/vmlinuz"
    l2_initramfs_build "$kdir" "$root/l2/initramfs.cpio"
    nvme_image "$root/l2/nvme.img"
    read -r first count <<<"$BARMAP_NVME_L2_BLOCKS"
    tail -c +$((first * 512 + 1)) "$root/l2/nvme.img" | head -c $((count * 512)) | sha256sum |
        cut -d' ' -f1 >"$root/l2/nvme.sha256"
    printf '%s %s\n' "$first" "$count" >"$root/l2/nvme.blocks"
    rm "$root/l2/nvme.img"
    while IFS=$'\t' read -r kind name path; do
        case "$kind" in
        # Without debug info: the unpacked initramfs lives in the guest's RAM.
        test) strip --strip-debug -o "$root/tests/$name" "$path" ;;
        example) strip --strip-debug -o "$root/usr/bin/${name#example-}" "$path" ;;
        bench) strip --strip-debug -o "$root/benches/${name#bench-}" "$path" ;;
        esac
    done <"$list"
    if [[ -n "${BARMAP_INITRAMFS_EXTRA:-}" ]]; then
        cp -a "$BARMAP_INITRAMFS_EXTRA/." "$root/"
    fi
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

# NVMe namespace 1 of the test guest: a raw image of this many 512-byte blocks (16 MiB).
BARMAP_NVME_IMAGE_BLOCKS=32768
# The blocks of namespace 1 (first, count: the last 2 MiB) that the L2 guest reads and hashes. No test in
# the guest writes them (tests/nvme_driver.rs keeps below them), so their content is nvme_image's at any
# point of the run.
BARMAP_NVME_L2_BLOCKS="28672 4096"

# nvme_image FILE: writes the known-pattern image of NVMe namespace 1: block N (512 bytes) is the text
# "barmap-nvme lba NNNNNNNNNNNN" (N in 12 decimal digits) padded with spaces to 511 bytes and a newline
# (tests/nvme/image.rs has the same definition).
nvme_image() {
    awk -v n="$BARMAP_NVME_IMAGE_BLOCKS" \
        'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", sprintf("barmap-nvme lba %012d", i) }' >"$1"
}

# nvme_image_check SERIES IMAGE: for every line "MARKER nvme-image-cksum OFFSET LEN CRC" in the guest's
# output (a test that wrote namespace 1 and computed the POSIX cksum CRC that those bytes of the image must
# have), compares with `cksum` of that range of the image file after the guest is gone. Appends the result to
# the output log as a pseudo test binary `harness-nvme-image` (counted by parse_guest_tests); returns 1 if a
# range differs.
nvme_image_check() {
    local log="$BARMAP_GUEST_WORK/logs/$1-output.log" img=$2 offset len crc actual line out passed=0 failed=0
    local -a checks
    mapfile -t checks < <(strip_ansi <"$log" |
        sed -n "s/.*$BARMAP_MARKER nvme-image-cksum \([0-9]*\) \([0-9]*\) \([0-9]*\).*/\1 \2 \3/p")
    ((${#checks[@]} > 0)) || return 0
    out=$(printf '\n%s bin-start harness-nvme-image' "$BARMAP_MARKER")
    for line in "${checks[@]}"; do
        read -r offset len crc <<<"$line"
        actual=$(tail -c +$((offset + 1)) "$img" | head -c "$len" | cksum | awk '{ print $1 }')
        if [[ "$actual" == "$crc" ]]; then
            out+=$'\n'"test nvme image bytes $offset..+$len: cksum $crc as the guest expects ... ok"
            passed=$((passed + 1))
        else
            out+=$'\n'"test nvme image bytes $offset..+$len: cksum $actual, the guest expects $crc ... FAILED"
            failed=$((failed + 1))
        fi
    done
    out+=$'\n'"test result: $( ((failed == 0)) && echo ok || echo FAILED). $passed passed; $failed failed"
    out+=$'\n'"$BARMAP_MARKER bin-exit harness-nvme-image $((failed > 0))"
    printf '%s\n' "$out" | tee -a "$log"
    ((failed == 0))
}

# Every guest's tick runs the local APIC timer in periodic mode. Under TCG, QEMU 7.2 can lose the request
# that makes its vCPU look at the local APIC (seen while the guest runs a nested KVM guest): the timer's
# vector then waits in IRR with interrupts enabled, GIF set and nothing requested, the vCPU halts, and a
# tickless guest, whose next tick is programmed by that very interrupt, never wakes (QEMU's monitor showed
# that state, and one keyboard interrupt through the IOAPIC woke the guest). A periodic timer fires again
# and makes QEMU look at the APIC, so a lost request costs one tick.
BARMAP_GUEST_TICK_ARGS="nohz=off highres=off"

# guest_kernel_args SERIES: the kernel command line of the series' guest after `console=ttyS0 panic=1` and
# BARMAP_GUEST_TICK_ARGS.
# Every guest: virtio_pci (built in from 6.12 on) would take the virtio device meant for vfio-pci
# (BARMAP_FLR_DEV) before /init runs, so its initcall is skipped; on barmap's own kernel also nvme's (built
# in there; the L2 guest, booted with its own command line, keeps both). `barmap.interface=` is the VFIO
# interface the guest suite goes through (guest/init exports it as BARMAP_INTERFACE). noiommu: no IOMMU,
# VFIO's no-IOMMU mode, 16 huge pages of 2 MiB for physically contiguous DMA buffers.
guest_kernel_args() {
    case "$1" in
    6.12-iommufd)
        echo intel_iommu=on initcall_blacklist=virtio_pci_driver_init,nvme_init barmap.interface=iommufd
        ;;
    noiommu)
        echo initcall_blacklist=virtio_pci_driver_init,nvme_init vfio.enable_unsafe_noiommu_mode=1 \
            hugepages=16 barmap.interface=noiommu
        ;;
    *) echo intel_iommu=on initcall_blacklist=virtio_pci_driver_init barmap.interface=group ;;
    esac
}

# guest_qemu_iommu SERIES: the QEMU arguments of the guest's IOMMU and edu: an intel-iommu (interrupt
# remapping) and edu's default 28-bit DMA mask, or for noiommu no IOMMU and a 32-bit DMA mask for edu
# (its DMA addresses are then physical, and the guest's 2 GiB of RAM lie below 4 GiB), and a transitional
# virtio-rng (1af4:1005) with two functions behind a root port of its own: in no-IOMMU mode each function
# is a group, and a hot reset of their bus needs both groups (tests/noiommu.rs).
guest_qemu_iommu() {
    case "$1" in
    noiommu)
        echo -device edu,dma_mask=0xffffffff -device pcie-root-port,id=pair-port,chassis=2 \
            -device virtio-rng-pci,bus=pair-port,addr=0.0,multifunction=on,disable-legacy=off \
            -device virtio-rng-pci,bus=pair-port,addr=0.1,disable-legacy=off
        ;;
    *) echo -device intel-iommu,intremap=on,caching-mode=on -device edu ;;
    esac
}

# guest_boot SERIES KERNEL_DIR INITRAMFS: boots the guest under TCG behind an intel-iommu (none for
# noiommu: guest_qemu_iommu) with the test devices: edu, pci-testdev, a modern-only virtio-rng
# (function-level reset; its DMA translated by the IOMMU, iommu_platform=on, as a device handed to VFIO
# must be) alone behind a pcie-root-port, an NVMe controller (MDTS 1 MiB) with namespace 1 on a fresh known-pattern 16 MiB raw image
# ($RUN_DIR/nvme-SERIES.img, nvme_image; left for guest_run to check) and namespace 2 on a 1 GiB null-co
# block device that reads zeroes, and ivshmem-plain with a 1 GiB RAM backend (BAR2: 1 GiB, 64-bit
# prefetchable). Streams the job's output (guest ttyS1) to stdout and into
# $BARMAP_GUEST_WORK/logs/SERIES-output.log, and keeps the kernel console (ttyS0) in SERIES-console.log
# (also streamed to stderr if BARMAP_CONSOLE=1). Returns QEMU's (or timeout's) exit status. Stdin is passed
# through to the job (use </dev/null for unattended runs).
guest_boot() {
    local series=$1 kdir=$2 initrd=$3 logs="$BARMAP_GUEST_WORK/logs" rc=0 tail_pid="" nvme_img watchdog
    local monitor="$logs/$series-monitor"
    local -a extra iommu
    read -r -a extra <<<"$BARMAP_QEMU_ARGS"
    read -r -a iommu <<<"$(guest_qemu_iommu "$series")"
    mkdir -p "$logs"
    : >"$logs/$series-console.log"
    rm -f "$monitor.in" "$monitor.out" "$logs/$series-monitor.log"
    mkfifo "$monitor.in" "$monitor.out"
    guest_watchdog "$monitor" "$logs/$series-monitor.log" &
    watchdog=$!
    if [[ "${BARMAP_CONSOLE:-0}" == 1 ]]; then
        tail -n +1 -F "$logs/$series-console.log" >&2 2>/dev/null &
        tail_pid=$!
    fi
    testdev_rom "$BARMAP_GUEST_WORK/testdev-rom.bin"
    nvme_img="$RUN_DIR/nvme-$series.img"
    nvme_image "$nvme_img"
    log "booting guest kernel $series ($(basename "$kdir")), timeout ${BARMAP_GUEST_TIMEOUT}s"
    timeout --foreground -k 10 "$BARMAP_GUEST_TIMEOUT" \
        qemu-system-x86_64 -machine q35,kernel-irqchip=split -accel tcg -cpu max -smp 1 \
        -m "$BARMAP_GUEST_MEM" \
        "${iommu[@]}" -nic none \
        -device "pci-testdev,romfile=$BARMAP_GUEST_WORK/testdev-rom.bin" \
        -device pcie-root-port,id=flr-port,chassis=1 -device virtio-rng-pci,bus=flr-port,disable-legacy=on,iommu_platform=on \
        -drive "file=$nvme_img,if=none,id=nvm,format=raw" -device nvme,id=nvme0,serial=barmap0001,mdts=8 \
        -device nvme-ns,drive=nvm,bus=nvme0,nsid=1 \
        -blockdev null-co,node-name=nvmnull,size=$((1 << 30)),read-zeroes=on \
        -device nvme-ns,drive=nvmnull,bus=nvme0,nsid=2 \
        -object memory-backend-ram,id=shm,size=1G -device ivshmem-plain,memdev=shm \
        -kernel "$kdir/vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 panic=1 $BARMAP_GUEST_TICK_ARGS $(guest_kernel_args "$series") $BARMAP_KERNEL_ARGS" \
        -display none -chardev "pipe,id=monitor,path=$monitor" -mon chardev=monitor,mode=readline -no-reboot \
        -serial "file:$logs/$series-console.log" -chardev stdio,id=job,signal=on -serial chardev:job \
        "${extra[@]}" | tee "$logs/$series-output.log" || rc=$?
    kill "$watchdog" 2>/dev/null || true
    wait "$watchdog" 2>/dev/null || true
    rm -f "$monitor.in" "$monitor.out"
    if [[ -n "$tail_pid" ]]; then
        sleep 0.2 # let tail show the console's last lines
        kill "$tail_pid"
    fi
    return "$rc"
}

# guest_watchdog MONITOR LOG: (in the background of guest_boot) 20 s before the guest's timeout, asks QEMU's
# monitor (the pipe chardev MONITOR.in/.out) where the vCPU is, three times a second apart, into LOG: a hung
# guest's registers (an L2 guest's while it runs nested), the instructions at its RIP and its local APIC.
# Ends quietly if it is killed first.
guest_watchdog() {
    local monitor=$1 out=$2 sleeper
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep $((BARMAP_GUEST_TIMEOUT > 30 ? BARMAP_GUEST_TIMEOUT - 20 : 10)) &
    sleeper=$!
    wait "$sleeper"
    timeout 8 cat "$monitor.out" >"$out" &
    for _ in 1 2 3; do
        printf 'info registers\nx/8i $pc\ninfo lapic\n' >"$monitor.in"
        sleep 1
    done
    wait
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
    if ! nvme_image_check "$series" "$RUN_DIR/nvme-$series.img" && [[ $status == 0 ]]; then
        status=1
    fi
    rm -f "$RUN_DIR/nvme-$series.img"
    if ((qemu_rc == 124 || qemu_rc == 137)); then
        log "guest $series timed out after ${BARMAP_GUEST_TIMEOUT}s (BARMAP_GUEST_TIMEOUT)"
        guest_console_tail "$series"
        guest_monitor_dump "$series"
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

# guest_monitor_dump SERIES: shows what QEMU's monitor said of the vCPU before a timeout (guest_watchdog).
guest_monitor_dump() {
    local f="$BARMAP_GUEST_WORK/logs/$1-monitor.log"
    if [[ -s $f ]]; then
        log "the vCPU 20 s before the timeout, from QEMU's monitor ($f):"
        strip_ansi <"$f" | grep -Ev '^(\(qemu\)|YMM|XMM|FPR|FCW)' >&2 || true
    else
        log "QEMU's monitor did not answer before the timeout"
    fi
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
