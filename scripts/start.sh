#!/usr/bin/env bash
# Set up (idempotently) and start Palate on the built-in defaults.
# Arguments are passed to `python -m app`; with none, it opens the web app on
# http://127.0.0.1:7860 (e.g. `bash scripts/start.sh --port 8000`, or a CLI
# command such as `bash scripts/start.sh stats`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "${PALATE_VENV:-$ROOT/.venv}/bin/python" -m app "$@"
