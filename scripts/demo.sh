#!/usr/bin/env bash
# The main demo: prepare this host (scripts/setup.sh: packages, CRIU, sysctl, .venv — see its
# header for what it changes), then show what pymigrate finds here (`pymigrate check`).
# Later steps (run -> checkpoint -> migrate) clean up what they create.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

echo "==> scripts/setup.sh"
scripts/setup.sh

echo "==> pymigrate check"
"$REPO/.venv/bin/pymigrate" check
