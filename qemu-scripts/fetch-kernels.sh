#!/usr/bin/env bash
# fetch-kernels.sh [6.1|6.12|7.3|6.12-iommufd|noiommu|all]: installs the host packages and downloads, caches
# and extracts the guest kernels (newest Debian signed image of each series; 7.3 comes from trixie-backports;
# 6.12-iommufd and noiommu share barmap's own build of linux-source-6.12) into $BARMAP_CACHE.
# Prints each kernel's directory. The other scripts do this on demand; run it alone to warm a cache or to
# check a fresh one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

which=${1:-all}
case "$which" in
all) kernels=("${BARMAP_KERNELS[@]}") ;;
*) kernel_check "$which" && kernels=("$which") ;;
esac
ensure_host_packages
for series in "${kernels[@]}"; do
    kernel_prepare "$series"
done
