#!/usr/bin/env bash
# Create or refresh the project-local virtual environment in .venv from the lock.
#
# Installs exactly requirements/app.lock (no argument) or requirements/dev.lock
# ("dev": the app plus the test extras): every package at its locked version,
# checked against the locked sha256 hashes, nothing resolved on the day -- so a
# fresh clone gets what CI tested. scripts/update_lock.sh moves the lock forward.
#
# Idempotent and fast when nothing changed: the install step runs only when the
# lock (or this script, or pyproject.toml) differs from what the last successful
# install recorded in .venv/.palate-install-stamp.
#
# torch is installed first and pinned (it is not in the lock): an unpinned torch
# would fetch a multi-GB CUDA build. The lock holds torch's own dependencies.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PALATE_VENV:-$ROOT/.venv}"
TORCH_SPEC="${PALATE_TORCH_SPEC:-torch==2.13.0}"
# Optional index for torch alone, e.g. https://download.pytorch.org/whl/cpu for the
# CPU-only build on a Linux machine without a GPU (plain PyPI serves the CUDA build).
TORCH_INDEX_URL="${PALATE_TORCH_INDEX_URL:-}"
EXTRAS="${1:-}"   # "" for the app, "dev" for the test suite
case "$EXTRAS" in
  "") LOCK="$ROOT/requirements/app.lock" ;;
  dev) LOCK="$ROOT/requirements/dev.lock" ;;
  *) echo "error: unknown extras '$EXTRAS' (use nothing for the app, or dev)" >&2; exit 2 ;;
esac
if [ ! -f "$LOCK" ]; then
  echo "error: $LOCK is missing; restore it from git (git checkout -- requirements/) or run scripts/update_lock.sh" >&2
  exit 1
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3.10+ or set PYTHON=/path/to/python" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: Palate needs Python 3.11 or newer; $("$PYTHON" --version) found (set PYTHON=...)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[palate] creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp_file="$VENV/.palate-install-stamp"
stamp_of() {  # stamp_of LOCK EXTRAS
  (cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh" "$1"; echo "extras=$2 torch=$TORCH_SPEC") | sha256sum | cut -d' ' -f1
}
want_stamp="$(stamp_of "$LOCK" "$EXTRAS")"
have_stamp="$(cat "$stamp_file" 2>/dev/null || true)"
# A dev install also satisfies the app; an app-only install does not satisfy the tests.
dev_stamp="$(stamp_of "$ROOT/requirements/dev.lock" dev)"

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
# The lock, exactly: pinned versions, hashes checked, no resolution (--no-deps), then Palate
# itself as an editable install (its build backend, setuptools, comes from the lock too).
pip_install --require-hashes --no-deps -r "$LOCK"
pip_install --no-deps --no-build-isolation -e "$ROOT"
if ! "$PY" -m pip check >/dev/null 2>&1; then
  "$PY" -m pip check >&2 || true
  echo "error: the installed packages do not fit together (above); was $LOCK edited by hand?" >&2
  exit 1
fi
echo "$want_stamp" > "$stamp_file"
echo "[palate] environment ready" >&2
