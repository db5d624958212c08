#!/usr/bin/env bash
# Run the whole test suite (installs what it needs into .venv first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
cd "$ROOT"
ruff check src tests benchmarks scripts
python -m pytest -q "$@"
