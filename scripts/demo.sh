#!/usr/bin/env bash
# Sets everything up, then runs the demo: a real mount on this machine, ordinary tools on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
