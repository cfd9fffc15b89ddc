#!/usr/bin/env bash
# Installs targetd with pip and runs `targetd serve` from the repository root, so the default
# configuration keeps its LUN images in ./var/targetd. Arguments go to `targetd serve`
# (--config FILE, --listen HOST:PORT, --state-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# Debian 12's system Python is "externally managed" (PEP 668): pip refuses to install into it
# unless told to. Harmless where Python is not externally managed.
export PIP_BREAK_SYSTEM_PACKAGES=1
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore .
exec $PY -m targetd serve "$@"
