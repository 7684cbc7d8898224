#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite. Arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" dev
# The browser tests drive Debian's chromium. Install it when it is missing and we may
# (root or passwordless sudo, apt-get present); otherwise those tests say what to do.
if [ ! -x /usr/bin/chromium ] && [ "${PALATE_SKIP_BROWSER:-}" != "1" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="skip"; fi
  fi
  if [ "$SUDO" != "skip" ]; then
    echo "[palate] installing Debian's chromium for the browser tests (once)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "[palate] could not install chromium; the browser tests will fail (PALATE_SKIP_BROWSER=1 skips them)" >&2
  fi
fi
cd "$ROOT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
set +e
# One worker per core, at most 4 (pytest-xdist; tests/conftest.py gives each one thread; a worker
# peaks at 2-3 GB), a module's tests on one worker so they share its fixtures.
# PALATE_TEST_WORKERS=N sets the number; 0 runs in this process (for --pdb, -x).
CORES="$(nproc 2>/dev/null || echo 2)"
WORKERS="${PALATE_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}"
"${PALATE_VENV:-$ROOT/.venv}/bin/python" -m pytest -n "$WORKERS" --dist loadscope --durations=30 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
