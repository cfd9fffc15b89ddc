#!/usr/bin/env bash
# The test command: install what the tests need, lint, then run pytest over the default tiers
# (unit tests beside the code, integration tests in tests/). Slow and conformance tiers are
# opt-in: scripts/test.sh -m slow, scripts/test.sh -m conformance. Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

PY=${PYTHON:-python3}
echo "== ruff check" >&2
$PY -m ruff check .

echo "== pytest" >&2
# A later -m on the command line replaces this default selection.
status=0
$PY -m pytest -m "not slow and not conformance" "$@" || status=$?
if ((status == 5)); then
    # Exit code 5 is "no tests collected": a suite that runs nothing must not pass.
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
