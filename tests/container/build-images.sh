#!/usr/bin/env bash
# Builds the project's Dockerfile, unchanged, with no registry: a Debian 12 base made here
# with debootstrap (its tarball cached in .cache/container/), a CI-only Python layer on it,
# then `podman build --build-arg BASE=...` of the top-level Dockerfile.
# Prints the image name of the result on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/container
cache=.cache/container
export CONTAINERS_CONF=$PWD/$here/containers.conf
DEBIAN_IMAGE=local/debian:bookworm
CI_BASE=local/targetd-ci-base:bookworm
IMAGE=${TARGETD_IMAGE:-localhost/targetd:test}

missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap >/dev/null
fi

# The machine's own Debian mirror (deb822 sources first, then the one-line format).
mirror() {
    local uri
    uri=$(grep -hm1 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hm1 '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if ! podman image exists "$DEBIAN_IMAGE"; then
    tarball=$cache/debian-bookworm-minbase.tar
    if [[ ! -s $tarball ]]; then
        mkdir -p "$cache"
        root=$(mktemp -d "$cache/rootfs.XXXXXX")
        trap 'rm -rf "$root"' EXIT
        echo "build-images: debootstrap bookworm from $(mirror)" >&2
        debootstrap --variant=minbase bookworm "$root" "$(mirror)" >&2
        tar -C "$root" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$root"
        trap - EXIT
    fi
    podman import "$tarball" "$DEBIAN_IMAGE" >&2
fi

if ! podman image exists "$CI_BASE"; then
    ctx=$(mktemp -d)
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
    podman build --network=host --build-arg "DEBIAN=$DEBIAN_IMAGE" \
        -f "$here/Containerfile.ci-base" -t "$CI_BASE" "$ctx" >&2
    rm -rf "$ctx"
fi

# Docker format: OCI images drop HEALTHCHECK.
podman build --network=host --format docker --build-arg "BASE=$CI_BASE" -t "$IMAGE" . >&2
echo "$IMAGE"
