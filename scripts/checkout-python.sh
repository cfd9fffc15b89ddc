# Sourced by scripts/serve.sh and scripts/install-test-deps.sh (from the repository root):
# sets PY to the Python that runs this checkout's code, with the checkout installed in it
# EDITABLE, so what runs is always the code in this working tree, never a copy of it made at
# some earlier commit.
#
# By default that is the checkout's own virtual environment, .venv/, made from Debian's
# /usr/bin/python3 with --system-site-packages (Ceph's python3-rbd and python3-rados exist
# only for that interpreter; the test tier needs them). Nothing goes into the system's or
# the user's interpreter. PYTHON=/path/to/python uses that interpreter instead, with the
# checkout installed editable into it.
#
# Earlier versions of serve.sh did `pip install .` (a copy, not editable) into `python3`:
# `targetd`, `targetctl` and `import targetd` outside the repository then ran that copy,
# whatever the checkout held later. A copy made from THIS checkout is removed; a copy made
# elsewhere (a deployment, docs/operations.md) is left alone, with a warning.

CHECKOUT_VENV=.venv
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# Prints where the interpreter $1's installed targetd was copied from ("" when none is, or
# when it is an editable install).
_installed_copy_of() {
    "$1" -I - <<'EOF' 2>/dev/null || true
import json
from importlib import metadata

try:
    dist = metadata.distribution("targetd")
except metadata.PackageNotFoundError:
    raise SystemExit(0)
info = json.loads(dist.read_text("direct_url.json") or "{}")
if not info.get("dir_info", {}).get("editable"):
    print(info.get("url", "unknown").removeprefix("file://"))
EOF
}

remove_stale_copies() {
    local here py source
    here=$(pwd -P)
    for py in python3 /usr/bin/python3 ${PYTHON:+"$PYTHON"}; do
        command -v "$py" >/dev/null 2>&1 || continue
        source=$(_installed_copy_of "$py")
        [[ -n $source ]] || continue
        if [[ $source == "$here" ]]; then
            echo "removing the copy of this checkout an earlier serve.sh installed into $py" >&2
            "$py" -m pip uninstall -q -y targetd
        else
            echo "note: $py has a copy of targetd installed from $source (not editable):" \
                "outside this checkout, \`targetd\` and \`import targetd\` run that copy" >&2
        fi
    done
}

_venv_is_usable() {
    [[ -x $CHECKOUT_VENV/bin/python ]] &&
        grep -qx 'include-system-site-packages = true' "$CHECKOUT_VENV/pyvenv.cfg" &&
        grep -qx 'home = /usr/bin' "$CHECKOUT_VENV/pyvenv.cfg"
}

# Sets PY; makes .venv first where it is missing (or was made otherwise).
checkout_python() {
    remove_stale_copies
    if [[ -n ${PYTHON:-} ]]; then
        PY=$PYTHON
    else
        if ! _venv_is_usable; then
            rm -rf "$CHECKOUT_VENV"
            # Debian ships venv's pip (ensurepip) in a package of its own.
            if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
                apt-get install -y -q python3-venv >/dev/null ||
                    { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
            fi
            /usr/bin/python3 -m venv --system-site-packages "$CHECKOUT_VENV"
        fi
        PY=$PWD/$CHECKOUT_VENV/bin/python
    fi
}

# Installs the checkout editable into $PY, with the extras named ("test,bench"), if any.
# editable_mode=compat puts the checkout itself on sys.path from a .pth file, so it comes
# before the system's site-packages that the venv sees: a copy of targetd installed there
# cannot shadow it (setuptools' default finder for an editable install is asked only after
# every sys.path entry).
install_checkout() {
    local spec=.
    [[ -z ${1:-} ]] || spec=".[$1]"
    "$PY" -m pip install -q -e "$spec" --config-settings editable_mode=compat
}
