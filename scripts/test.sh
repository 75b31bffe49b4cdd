#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (real FUSE mounts; needs root or sudo for set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers (pytest-xdist): most tests wait on daemons and the network, so two at once halve the
# suite's time on two cores. KACHERYFS_TEST_WORKERS=0 runs everything in this one process.
exec .venv/bin/python -m pytest -n "${KACHERYFS_TEST_WORKERS:-2}" --dist worksteal "$@"
