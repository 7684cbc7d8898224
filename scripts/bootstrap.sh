#!/usr/bin/env bash
# Create or refresh the project-local virtual environment in .venv.
#
# Idempotent and fast when nothing changed: the install step runs only when
# pyproject.toml (or this script) differs from what the last successful install
# recorded in .venv/.palate-install-stamp.
#
# torch is installed first and pinned: an unpinned torch (or one pulled in by a
# dependency) would fetch a multi-GB CUDA build. With torch==2.13.x already in
# the venv, the other packages' torch requirements are satisfied and pip leaves
# it alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PALATE_VENV:-$ROOT/.venv}"
TORCH_SPEC="${PALATE_TORCH_SPEC:-torch==2.13.0}"
# Optional index for torch alone, e.g. https://download.pytorch.org/whl/cpu for the
# CPU-only build on a Linux machine without a GPU (plain PyPI serves the CUDA build).
TORCH_INDEX_URL="${PALATE_TORCH_INDEX_URL:-}"
EXTRAS="${1:-}"   # "" for the app, "dev" for the test suite

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3.10+ or set PYTHON=/path/to/python" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "error: Palate needs Python 3.10 or newer; $("$PYTHON" --version) found (set PYTHON=...)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[palate] creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp_file="$VENV/.palate-install-stamp"
want_stamp="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh"; echo "extras=$EXTRAS torch=$TORCH_SPEC") | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$stamp_file" 2>/dev/null || true)"
# A dev install also satisfies the app; an app-only install does not satisfy the tests.
dev_stamp="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh"; echo "extras=dev torch=$TORCH_SPEC") | sha256sum | cut -d' ' -f1)"

if [ "$have_stamp" = "$want_stamp" ] || [ "$have_stamp" = "$dev_stamp" ]; then
  exit 0
fi

# pip's own notices about unused index locations are noise here; errors still show.
pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

echo "[palate] installing dependencies into $VENV (first run takes a few minutes)" >&2
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.") else 1)' 2>/dev/null; then
  if [ -n "$TORCH_INDEX_URL" ]; then
    pip_install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
  else
    pip_install "$TORCH_SPEC"
  fi
fi
target="$ROOT"
if [ -n "$EXTRAS" ]; then target="$ROOT[$EXTRAS]"; fi
pip_install -e "$target"
echo "$want_stamp" > "$stamp_file"
echo "[palate] environment ready" >&2
