#!/usr/bin/env bash
# Set up (idempotently) and start Palate on the built-in defaults.
# Arguments are passed to `python -m app`; with none, it shows the commands
# (the web UI is not part of this version yet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "${PALATE_VENV:-$ROOT/.venv}/bin/python" -m app "$@"
