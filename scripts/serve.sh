#!/usr/bin/env bash
# Runs `targetd serve` from the repository root, so the default configuration keeps its LUN
# images in ./var/targetd. Arguments go to `targetd serve` (--config FILE, --listen HOST:PORT,
# --state-dir DIR).
#
# targetd runs from the checkout's own venv, .venv/, with the checkout installed editable
# (scripts/checkout-python.sh): the code that runs is this working tree's, after a `git pull`
# too, and nothing is installed into the system's Python. .venv/bin/targetctl and
# .venv/bin/targetd-copy are the same checkout's tools. PYTHON=/path/to/python uses that
# interpreter instead of the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/checkout-python.sh
checkout_python
install_checkout
exec "$PY" -m targetd serve "$@"
