#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (real FUSE mounts; needs root or sudo for set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
