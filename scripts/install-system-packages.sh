#!/usr/bin/env bash
# Install the Debian packages cowstore and its tests use, only those missing (idempotent).
set -euo pipefail
packages=(
  busybox-static      # the demo's and tests' real image content
  e2fsprogs xfsprogs btrfs-progs util-linux   # mkfs, losetup, fincore, fstrim
  fuse3               # fusermount3 (unmounting by hand); the FUSE servers mount through mount(2)
  thin-provisioning-tools  # thin_check / thin_restore interop of the devicemapper pool
  skopeo umoci podman # round-trip tests of image formats with real tools
  attr                # getfattr/setfattr for debugging layers
  docker.io containerd runc  # real peers: dockerd (bench, Docker data roots), containerd + runc (snapshotter)
  docker-registry apache2-utils openssl  # a real registry (distribution 2.8), htpasswd, a test CA
  golang-go golang-github-containerd-containerd-dev  # containerd's own snapshotter test suite
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "cowstore: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
