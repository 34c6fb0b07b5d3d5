#!/usr/bin/env bash
# Run the whole test suite: host setup (scripts/setup.sh: packages, CRIU, sysctl, .venv), then unit
# tests, then integration tests. Changes on the host only what setup.sh changes; the tests clean up
# after themselves. Extra arguments go to both pytest runs (e.g. -x, -k name, -q).
# Exit status is non-zero if either run fails; pytest's 5 ("no tests collected") counts as failure.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

echo "==> scripts/setup.sh"
scripts/setup.sh

PYTEST=("$REPO/.venv/bin/pytest")
rc_unit=0
rc_integration=0
rc_lint=0

# lint (ruff: pyproject.toml [tool.ruff]) and types (mypy: mypy.ini); both count as unit failures
echo "==> lint: ruff check; types: mypy runtime migrate"
"$REPO/.venv/bin/ruff" check --quiet runtime migrate scripts tests || rc_lint=$?
if [[ -f "$REPO/mypy.ini" ]]; then
    "$REPO/.venv/bin/mypy" --no-error-summary runtime migrate || rc_lint=$?
fi

# the archive/tar fuzz test (tests/unit/test_archive_fuzz.py) runs 300 inputs per reader by
# default; the full run gives it 5,000 each (10,000 in all, 3-6 min)
# tests/realworld/test_harness.py: the real-server suite's own parts (no root, seconds)
echo "==> unit tests: pytest tests/unit tests/realworld/test_harness.py $*"
PYMIGRATE_FUZZ_EXAMPLES=${PYMIGRATE_FUZZ_EXAMPLES:-5000} "${PYTEST[@]}" tests/unit tests/realworld/test_harness.py "$@" || rc_unit=$?

# tests/realworld: the real-server suite (~6 min; a cached Debian image, built on first use: 1.5-4 min)
echo "==> integration tests: pytest -m integration tests/integration tests/realworld $*"
# --durations: the slowest tests in the log, to watch CI's 45-minute budget
"${PYTEST[@]}" -m integration --durations=25 tests/integration tests/realworld "$@" || rc_integration=$?

describe() {
    case $1 in
        0) echo "passed" ;;
        5) echo "FAILED (no tests collected)" ;;
        *) echo "FAILED (pytest exit $1)" ;;
    esac
}
echo "==> lint and types: $(describe "$rc_lint"); unit: $(describe "$rc_unit"); integration: $(describe "$rc_integration")"
if [[ $rc_lint -ne 0 || $rc_unit -ne 0 || $rc_integration -ne 0 ]]; then
    exit 1
fi
