#!/bin/bash
# A Python base image made from Debian packages, for machines that cannot pull
# from a container registry: debootstrap a minimal Debian with python3 and
# python3-venv, strip documentation and package lists, and "docker import" it.
#
#   docker/debian-base.sh [TAG]          (default bids_muscle-base:bookworm; needs root)
#
# DEBIAN_SUITE (bookworm) and DEBIAN_MIRROR (the first deb.debian.org-style URI
# of apt's sources on this machine, else http://deb.debian.org/debian) choose
# where the packages come from. An image that already has the tag is kept.
set -euo pipefail

tag=${1:-bids_muscle-base:bookworm}
suite=${DEBIAN_SUITE:-bookworm}
docker=${DOCKER:-docker}

if "$docker" image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists; remove it (docker rmi $tag) to rebuild"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "debootstrap needs root: run as root, or pull a Python base image and pass BASE=<image>" >&2
    exit 2
fi
command -v debootstrap >/dev/null || { echo "debootstrap not found: apt-get install debootstrap" >&2; exit 2; }

mirror=${DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    # the mirror apt already uses here (deb822 or one-line sources)
    mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }
               /^deb / && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) { print $i; exit } }' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

root=$(mktemp -d /tmp/bids_muscle-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$root/fs" "$mirror" >"$root/debootstrap.log" 2>&1 \
    || { tail -20 "$root/debootstrap.log" >&2; echo "debootstrap failed (log above)" >&2; exit 1; }

# what a container does not need: package caches and lists, documentation, locales, logs
rm -rf "$root"/fs/var/cache/apt/*.bin "$root"/fs/var/cache/apt/archives/*.deb "$root"/fs/var/lib/apt/lists/* \
       "$root"/fs/usr/share/doc/* "$root"/fs/usr/share/man/* "$root"/fs/usr/share/info/* \
       "$root"/fs/usr/share/locale/* "$root"/fs/var/log/*.log "$root"/fs/var/log/apt/* "$root"/fs/tmp/*
find "$root/fs" -depth -name __pycache__ -type d -exec rm -rf {} +

tar --numeric-owner -C "$root/fs" -c . | "$docker" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=python3,python3-venv $suite $mirror" \
    - "$tag" >/dev/null
echo "base image $tag: $("$docker" run --rm --network none "$tag" python3 --version)"
