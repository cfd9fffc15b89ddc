#!/usr/bin/env bash
# Installs everything the test suite and the benchmarks need on a Debian 12 machine:
# the real clients (libiscsi's tools, QEMU's block tools, sg3_utils), tgt as the comparison
# peer, and the Python packages. Idempotent: a second run installs nothing new.
#
# The Python packages go into a virtual environment, .venv/ in the repository, made from
# Debian's own /usr/bin/python3 with --system-site-packages: Ceph's Python bindings (python3-rbd,
# python3-rados) exist only as Debian packages built for that interpreter, with no PyPI wheel,
# so neither a pyenv Python nor an isolated venv can import them. PYTHON=/path/to/python uses
# that interpreter instead of the venv (it then needs rbd and rados importable for the Ceph
# tier).
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and libc6-dev build cython-iscsi; --no-install-recommends would leave libc6-dev out.
DEB_PACKAGES=(libiscsi-bin libiscsi-dev sg3-utils tgt qemu-utils qemu-block-extra pkg-config
    gcc libc6-dev)
# The guest tier (tests/guest/): QEMU, and the packages whose binaries build-image.sh copies
# into the guest's initramfs. The guest's kernel is fetched there with apt-get download.
DEB_PACKAGES+=(qemu-system-x86 busybox-static dash open-iscsi sg3-utils mt-st mtx e2fsprogs cpio)
# Bacula's storage daemon package: its btape and mtx-changer run in the guest against the
# tape library (tests/guest/library.sh); the daemon itself is never run here.
DEB_PACKAGES+=(bacula-sd)
# dm-multipath's tools (multipath, multipathd, their checker and prioritizer plugins) and
# dmsetup run in the guest over two gateways (tests/ceph/test_rbd_guest_multipath.py), with
# udev's daemon and rules, which multipath-tools relies on.
DEB_PACKAGES+=(multipath-tools dmsetup udev)
# The container tier (tests/container/) builds the Dockerfile with podman (runc, since crun
# fails on this kernel's hybrid cgroups) on a debootstrap-made base; systemd-analyze checks
# the unit file.
DEB_PACKAGES+=(podman runc debootstrap systemd)
# The venv (python3-venv) and cython-iscsi's build against Debian's Python (python3-dev).
DEB_PACKAGES+=(python3-venv python3-dev)
# The Ceph tier (tests/ceph/, docs/rbd.md): a one-monitor, one-OSD cluster the fixture starts
# on loopback, the rbd/ceph command-line tools, librbd's Python bindings, and tgt's bs_rbd
# (tgt-rbd) as the benchmark peer in bench/compare_rbd.py.
DEB_PACKAGES+=(ceph-mon ceph-osd ceph-common python3-rbd python3-rados tgt-rbd)
# systemd-analyze verify checks that the unit's ExecReload binary (/bin/kill) exists; a minimal
# Debian has no procps.
DEB_PACKAGES+=(procps)
# The power-cut and fault-injection tier (tests/powercut/) mounts a FUSE file system written
# with pyfuse3: fuse3 gives fusermount3, python3-pyfuse3 the binding for Debian's Python (the
# venv sees it); another interpreter gets it from PyPI, built against libfuse3-dev.
DEB_PACKAGES+=(fuse3 python3-pyfuse3 libfuse3-dev)
# LUN files are tested on xfs and btrfs too (loop-mounted images; ext4 comes with e2fsprogs).
DEB_PACKAGES+=(xfsprogs btrfs-progs)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# tgt's package starts tgtd as a system service on 0.0.0.0:3260; the project starts its own
# tgtd on loopback when a benchmark needs it, so the packaged one is not left running.
# bacula-sd's package does the same with its storage daemon (port 9103).
for unit in tgt bacula-sd; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$unit" 2>/dev/null; then
        systemctl stop "$unit" || true
    fi
done
# open-iscsi's package starts iscsid (and a boot-time login service); only the guest runs an
# initiator, so the host's is stopped too; so is multipathd, which multipath-tools starts.
if command -v systemctl >/dev/null 2>&1; then
    for unit in iscsid.socket iscsid open-iscsi multipathd.socket multipathd; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then
            systemctl stop "$unit" || true
        fi
    done
fi

# The checkout's own venv (or PYTHON=...), with the checkout installed editable.
source scripts/checkout-python.sh
checkout_python
install_checkout test,bench
# cython-iscsi 1.0 must be built against Cython < 3, or pyscsi fails at import.
if ! $PY -c "import iscsi; iscsi.ISCSI_SESSION_NORMAL" 2>/dev/null; then
    $PY -m pip install -q --disable-pip-version-check 'Cython<3' pkgconfig 'setuptools_scm[toml]' wheel
    $PY -m pip install -q --disable-pip-version-check --no-build-isolation cython-iscsi==1.0
fi
# pyfuse3 for an interpreter that cannot see Debian's python3-pyfuse3 (PYTHON=...).
if ! $PY -c "import pyfuse3" 2>/dev/null; then
    $PY -m pip install -q --disable-pip-version-check pyfuse3
fi
