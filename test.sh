#!/usr/bin/env bash
# Install what the tests need and run the whole suite (this is what CI runs).
# Extra arguments go to pytest, e.g. ./test.sh -k posix -x
set -euo pipefail
cd "$(dirname "$0")"
CACHEFS_EXTRAS="[test]" ./install.sh --deps-only
exec "${PYTHON:-python3}" -m pytest -q -ra --durations=15 "$@"
