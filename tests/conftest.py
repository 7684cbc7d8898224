"""Shared fixtures: temporary stores and tiny media, no model weights."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never reach a model hub (there is no network where CI runs).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker and the apps and
# trainers it starts compute on one thread: two workers already fill two cores, and more
# threads than cores only add waiting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
# The browser tests' fixtures (app, browser, page) and helpers, for every tests/test_browser*.py module
pytest_plugins = ["tests.browser_kit"]
# Timeouts that only catch a hang: a loaded machine (CI with 2 cores, other jobs) is slow, and slow
# is a pass. Every subprocess and wait in the tests uses a multiple of this.
SLOW = 1800


def png_bytes(color: tuple[int, int, int], size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path):
    from storage import Store

    s = Store.open(data_dir)
    yield s
    s.close()


def add_images(store, prompt: str, n: int, *, model: str = "tiny", offset: int = 0):
    """``n`` distinct PNG candidates for ``prompt``."""
    return [
        store.add_generation(
            prompt=prompt, modality="image", model=model, media=png_bytes(((offset + i) * 7 % 256, i * 31 % 256, 5)),
            seed=offset + i, params={"steps": 4},
        )
        for i in range(n)
    ]


def run_cli(*args: str, data_dir: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PALATE_DATA_DIR", None)
    cmd = [sys.executable, "-m", "app", *args]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SLOW)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A directory nobody can write to, root included, or skip.

    Tries chmod (enough for a normal user), then ``chattr +i`` (stops root too).
    """
    d = tmp_path / "readonly"
    d.mkdir()
    probe = d / "probe"
    d.chmod(0o555)
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError:
        yield d
        d.chmod(0o755)
        return
    d.chmod(0o755)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only directory here (root without chattr +i)")
    try:
        yield d
    finally:
        subprocess.run([chattr, "-i", str(d)], capture_output=True)
