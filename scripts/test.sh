#!/usr/bin/env bash
# The test command: install what the tests need, lint and type-check, then run pytest over the default tiers
# (unit tests, integration tests, the libiscsi conformance tier, the QEMU guest tier, the
# container tier that builds and runs the Dockerfile with podman). The slow
# tier is opt-in: scripts/test.sh -m slow. Other arguments go to pytest.
# Python runs from .venv/ (Debian's /usr/bin/python3 with system site packages, made by
# install-test-deps.sh, so Ceph's rbd and rados bindings import); PYTHON=... overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
else
    PY=$PWD/.venv/bin/python
    # Tools and daemons the tests start by name (targetd, targetctl) come from the venv too.
    export VIRTUAL_ENV=$PWD/.venv PATH=$PWD/.venv/bin:$PATH
fi
# Lint findings fail the run, but pytest still runs so one CI pass reports both.
echo "== ruff check" >&2
lint=0
$PY -m ruff check . || lint=$?

echo "== mypy" >&2
types=0
$PY -m mypy || types=$?

echo "== pytest" >&2
# A later -m on the command line replaces this default selection.
status=0
# The 40 slowest tests end the log: where CI time goes, read from any run.
$PY -m pytest -m "not slow" --durations=40 "$@" || status=$?
if ((status == 5)); then
    # Exit code 5 is "no tests collected": a suite that runs nothing must not pass.
    echo "test.sh: pytest collected no tests" >&2
    status=1
fi
if ((lint != 0 && status == 0)); then
    echo "test.sh: tests passed but ruff check failed" >&2
    status=1
fi
if ((types != 0 && status == 0)); then
    echo "test.sh: tests passed but mypy failed" >&2
    status=1
fi
exit "$status"
