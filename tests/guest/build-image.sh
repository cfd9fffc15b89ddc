#!/usr/bin/env bash
# Builds the guest tier's Linux image: a Debian cloud kernel and an initramfs holding busybox,
# dash, open-iscsi, sg3_utils, mt-st, mtx, e2fsprogs (mke2fs, e2fsck, resize2fs...) and Bacula's btape and mtx-changer, copied
# from the host's installed packages (scripts/install-test-deps.sh installs them) together
# with the shared libraries they load; and targetd-copy (hostcopy/) with Debian's python3 and
# the part of its standard library the tool loads.
#
#   tests/guest/build-image.sh [OUT_DIR]     (default: .cache/guest)
#
# Writes OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz and prints OUT_DIR. The result is cached:
# a second run with the same inputs (this script, init, the kernel and tool versions) only
# checks a stamp. The kernel package is fetched with `apt-get download` and unpacked, never
# installed, so the host's /boot and module tree are left alone.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=$(mkdir -p "${1:-$HERE/../../.cache/guest}" && cd "${1:-$HERE/../../.cache/guest}" && pwd)

KERNEL_META=linux-image-cloud-amd64
# The guest kernel's SCSI and iSCSI stack and its network card are modules; ext4 and crc32c
# are built in. Dependencies are added from each module's own depends= field.
MODULES=(scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp sd_mod sg st virtio_pci virtio_net)
# dm-multipath over two gateways, with multipath-tools' default path selector. The cloud
# kernel is built without SCSI device handlers (CONFIG_SCSI_DH), so there is no scsi_dh_alua.
MODULES+=(dm-mod dm-multipath dm-service-time)
# Real tools that must win over busybox applets of the same name.
TOOLS=(/sbin/iscsid /sbin/iscsiadm /sbin/iscsistart /bin/mt-st /sbin/mke2fs /sbin/e2fsck
    /sbin/resize2fs /sbin/tune2fs /sbin/dumpe2fs /usr/sbin/mtx /usr/sbin/tapeinfo /usr/sbin/btape)
# multipath-tools and dmsetup, and the plugins multipath.conf names (path checker tur,
# prioritizer alua) from /lib/multipath, where libmultipath loads them.
# multipath-tools only sees paths udev has initialized, and waits for udev to confirm each
# map it loads: udevd (udevadm under that name) runs in the guest with the rules that
# name a SCSI disk (scsi_id) and a multipath map, and answer device-mapper's cookies.
TOOLS+=(/sbin/multipath /sbin/multipathd /sbin/dmsetup /bin/udevadm)
MULTIPATH_PLUGINS=(/lib/multipath/libchecktur.so /lib/multipath/libprioalua.so
    /lib/multipath/libprioconst.so)
UDEV_FILES=(/lib/udev/scsi_id /lib/udev/rules.d/55-dm.rules /lib/udev/rules.d/56-dm-mpath.rules
    /lib/udev/rules.d/60-multipath.rules /lib/udev/rules.d/60-persistent-storage.rules
    /lib/udev/rules.d/95-dm-notify.rules)
# Bacula's changer script (a /bin/sh script run by btape; busybox gives it awk, sed, grep)
# and its settings, at the paths the script and btape expect.
BACULA_FILES=(/etc/bacula/scripts/mtx-changer /etc/bacula/scripts/mtx-changer.conf)
SG_TOOLS=(/usr/bin/sg_* /usr/bin/sginfo)
# targetd-copy runs on Debian's Python (not whatever python3 runs the tests): its binary, and
# of its standard library only the modules the tool loads (found by loading it, below).
GUEST_PYTHON=/usr/bin/python3.11
TOOL_FILES=("$REPO"/hostcopy/*.py "$REPO"/scsi/__init__.py "$REPO"/scsi/sense.py)

for tool in busybox dash cpio gzip "$GUEST_PYTHON"; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is missing;" \
        "run scripts/install-test-deps.sh" >&2; exit 1; }
done
# busybox must be the static one: the initramfs has no library for it to load.
BUSYBOX=/bin/busybox
ldd "$BUSYBOX" >/dev/null 2>&1 && { echo "build-image: $BUSYBOX is not static;" \
    "install busybox-static" >&2; exit 1; }

kernel_package() {
    apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'
}
kernel_pkg=$(kernel_package)
if [[ -z $kernel_pkg ]]; then
    # A machine whose package lists were never fetched (or were cleaned) knows no kernel yet.
    apt-get update -qq >&2
    kernel_pkg=$(kernel_package)
fi
[[ -n $kernel_pkg ]] || { echo "build-image: apt knows no $KERNEL_META" >&2; exit 1; }
kernel_version=$(apt-cache show "$kernel_pkg" | awk '/^Version:/{print $2; exit}')

# Two test runs in one tree (two engineers, or a loop) build one at a time.
exec 9>"$OUT/.lock"
flock 9

# Everything that changes the image goes into the stamp.
stamp=$({
    cat "$0" "$HERE/init"
    echo "$kernel_pkg $kernel_version"
    dpkg-query -W busybox-static dash open-iscsi sg3-utils mt-st mtx e2fsprogs python3.11-minimal \
        libpython3.11-stdlib bacula-sd bacula-common multipath-tools dmsetup udev
    cat "${TOOL_FILES[@]}"
} | sha256sum | cut -d' ' -f1)
if [[ -f $OUT/stamp && $(cat "$OUT/stamp") == "$stamp" && -f $OUT/vmlinuz &&
    -f $OUT/initramfs.cpio.gz ]]; then
    echo "$OUT"
    exit 0
fi

mkdir -p "$OUT/deb"
deb=$(ls "$OUT/deb/${kernel_pkg}_"*.deb 2>/dev/null | head -n1 || true)
if [[ -z $deb || $(dpkg-deb -f "$deb" Version 2>/dev/null) != "$kernel_version" ]]; then
    rm -f "$OUT/deb/"*.deb
    # apt drops privileges to _apt for downloads; a root-owned cache dir would only earn a warning.
    (cd "$OUT/deb" && apt-get download -q "$kernel_pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    deb=$(ls "$OUT/deb/${kernel_pkg}_"*.deb 2>/dev/null | head -n1 || true)
    [[ -n $deb ]] || { echo "build-image: apt-get download $kernel_pkg failed" >&2; exit 1; }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kernel=$work/kernel
root=$work/root
dpkg-deb -x "$deb" "$kernel"
kver=$(ls "$kernel/lib/modules")
cp "$kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/iscsi,proc,sys,dev,tmp,mnt,run/lock,var/lock,lib/modules}
mkdir -p "$root"/var/lib/iscsi "$root"/etc/iscsi/{nodes,send_targets,ifaces}

# Modules in load order: dependencies first.
declare -A loaded=()
order=()
add_module() {
    local name=$1 file deps dep
    [[ -n ${loaded[$name]:-} ]] && return
    loaded[$name]=1
    file=$(find "$kernel/lib/modules/$kver" -name "$name.ko" -print -quit)
    [[ -n $file ]] || { echo "build-image: module $name not in $kernel_pkg" >&2; exit 1; }
    deps=$(grep -a -o 'depends=[a-z0-9_,-]*' "$file" | head -n1 | cut -d= -f2)
    for dep in ${deps//,/ }; do add_module "$dep"; done
    cp "$file" "$root/lib/modules/"
    order+=("$name")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/lib/modules/load-order"

# Busybox applets go in /bin and /sbin; the real tools go in /usr/bin and /usr/sbin, which come
# first in PATH. /bin/sh is dash: busybox's shell would run its own mt or mkfs applets even
# when PATH names the real ones.
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [[ $applet == busybox || $applet == sh ]] && continue
    ln -sf busybox "$root/bin/$applet"
done

copy_with_libs() {
    local bin=$1 dest=$2 lib
    cp -L "$bin" "$dest"
    # ldd prints "name => /path (addr)" and the loader as "/lib64/ld-linux-x86-64.so.2 (addr)".
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*'); do
        [[ -e $root$lib ]] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
copy_with_libs /bin/dash "$root/bin/sh"
for tool in "${TOOLS[@]}"; do
    case $tool in
        /sbin/* | /usr/sbin/*) copy_with_libs "$tool" "$root/usr/sbin/" ;;
        *) copy_with_libs "$tool" "$root/usr/bin/" ;;
    esac
done
for tool in "${SG_TOOLS[@]}"; do copy_with_libs "$tool" "$root/usr/bin/"; done
mkdir -p "$root/lib/multipath" "$root/etc/multipath"
for plugin in "${MULTIPATH_PLUGINS[@]}"; do copy_with_libs "$plugin" "$root/lib/multipath/"; done
# The udev rules run them as /sbin/NAME.
for tool in multipath multipathd dmsetup; do ln -sf "/usr/sbin/$tool" "$root/sbin/$tool"; done
mkdir -p "$root/lib/udev/rules.d" "$root/lib/systemd"
for f in "${UDEV_FILES[@]}"; do copy_with_libs "$f" "$root$f"; done
ln -s /usr/bin/udevadm "$root/lib/systemd/systemd-udevd"
# btape finds its own libraries (/usr/lib/bacula) by its RUNPATH: copy_with_libs put them
# there. mtx-changer keeps its temporary files in /var/lib/bacula.
mkdir -p "$root/etc/bacula/scripts" "$root/var/lib/bacula" "$root/run/bacula"
for f in "${BACULA_FILES[@]}"; do cp "$f" "$root$f"; done
ln -s mt-st "$root/usr/bin/mt"
for fs in ext2 ext3 ext4; do ln -s mke2fs "$root/usr/sbin/mkfs.$fs"; done
ln -s e2fsck "$root/usr/sbin/fsck.ext4"
cp /etc/mke2fs.conf "$root/etc/"

# open-iscsi: the host's defaults, made quicker to give up on a dead target so a failing test
# ends in seconds instead of minutes. A restarted target is waited for (replacement_timeout).
sed -e 's/^node.startup = .*/node.startup = manual/' \
    -e 's/^node.conn\[0\].timeo.login_timeout = .*/node.conn[0].timeo.login_timeout = 5/' \
    -e 's/^node.session.initial_login_retry_max = .*/node.session.initial_login_retry_max = 2/' \
    -e 's/^node.session.timeo.replacement_timeout = .*/node.session.timeo.replacement_timeout = 60/' \
    /etc/iscsi/iscsid.conf >"$root/etc/iscsi/iscsid.conf"
echo "InitiatorName=iqn.2026-11.org.targetd:guest" >"$root/etc/iscsi/initiatorname.iscsi"
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

# targetd-copy: the package and the one module of scsi/ it imports (tests/test_layering.py
# keeps it that way), under /usr/lib/targetd-copy, and a wrapper on PATH.
pylib=$("$GUEST_PYTHON" -S -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
copy_with_libs "$GUEST_PYTHON" "$root/usr/bin/"
tooldir=$root/usr/lib/targetd-copy
mkdir -p "$tooldir/hostcopy" "$tooldir/scsi"
cp "$REPO"/hostcopy/*.py "$tooldir/hostcopy/"
cp "$REPO"/scsi/__init__.py "$REPO"/scsi/sense.py "$tooldir/scsi/"
# The standard library files the tool loads: every module in sys.modules once every module
# the tool names in an import statement (a function's own imports too: verify loads hashlib
# only when it runs) is imported and the tool has printed its help (argparse's formatter
# imports more on use), plus os.py, the landmark by which Python finds its library.
stdlib_files=$(cd "$tooldir" && "$GUEST_PYTHON" -S -E -c '
import ast, contextlib, importlib, io, pathlib, sys
sys.path.insert(0, ".")
for source in sorted(pathlib.Path("hostcopy").glob("*.py")):
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            importlib.import_module(name)
import hostcopy.cli
for argv in (["--help"], ["backup", "--help"], ["nonsense"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.suppress(SystemExit):
            hostcopy.cli.main(argv)
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if f and f.startswith(sys.argv[1] + "/"):
        print(f)
' "$pylib")
for f in $stdlib_files "$pylib/os.py"; do
    mkdir -p "$root$(dirname "$f")"
    case $f in
        *.so) copy_with_libs "$f" "$root$(dirname "$f")/" ;;
        *) cp "$f" "$root$f" ;;
    esac
done
# Bytecode for all of it: under TCG, compiling argparse, dataclasses and the rest from
# source takes the guest seconds per run. Unchecked-hash .pyc files hold whatever mtime the
# initramfs gives the sources.
"$GUEST_PYTHON" -S -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$root" -p / \
    "$root$pylib" "$tooldir" >/dev/null
cat >"$root/usr/bin/targetd-copy" <<WRAPPER
#!/bin/sh
exec ${GUEST_PYTHON} -S -E -c 'import sys; sys.path[:0] = ["/usr/lib/targetd-copy"]
from hostcopy.cli import main
sys.exit(main())' "\$@"
WRAPPER
chmod 755 "$root/usr/bin/targetd-copy"

cp "$HERE/init" "$root/init"
chmod 755 "$root/init"

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 >"$work/initramfs.cpio.gz"
mv "$work/vmlinuz" "$OUT/vmlinuz"
mv "$work/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
echo "$stamp" >"$OUT/stamp"
echo "$OUT"
