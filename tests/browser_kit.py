"""What the browser tests share: the app served on a temporary data directory, chromium, and helpers that
act as a user would (fill, click, press, wait for the status line) and read the store.

The fixtures (``app``, ``browser``, ``page``; tests/conftest.py loads this module as a plugin) are
module-scoped: each browser test module (tests/test_browser*.py) gets one app process and one page, its tests run in order on them, and different modules run in parallel on pytest-xdist
workers. Needs /usr/bin/chromium (`apt-get install chromium`; scripts/test.sh installs it when it can).
Without it these tests fail with that message; PALATE_SKIP_BROWSER=1 skips them.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from storage import Store
from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
IMAGE_PROMPT = "two small red circles on a blue background"
TEXT_PROMPT = "What is 12 + 4 * 7 - 15?"

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(data_dir: Path, command: list[str] | None = None):
    """The app (``python -m app``, or ``command``) serving ``data_dir`` on a free port, until the block ends."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), "
                    "or set PALATE_SKIP_BROWSER=1 to skip the browser tests")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PALATE_DATA_DIR", None)
    log = open(data_dir.parent / "app.log", "w")
    t0 = time.time()
    proc = subprocess.Popen([*(command or [sys.executable, "-m", "app"]), "--data-dir", str(data_dir), "--port",
                             str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 600:
                    raise RuntimeError(f"the app did not start: {(data_dir.parent / 'app.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield {"url": url, "data_dir": data_dir, "t0": t0, "proc": proc, "log": data_dir.parent / "app.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for run_dir in (data_dir / "runs").glob("run-*"):  # no trainer outlives the test
            subprocess.run(["pkill", "-f", str(run_dir)], check=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("browser") / "data") as a:
        yield a


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(app, browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(300_000)  # clicks and waits on a loaded machine: slow is a pass
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(app["url"])
    pg.wait_for_selector("#generate-btn")
    app["startup_s"] = time.time() - app["t0"]
    pg.errors = errors
    yield pg
    pg.close()


# -- helpers ------------------------------------------------------------------------------


def file_status(app, path: str) -> int:
    try:
        return urllib.request.urlopen(app["url"] + f"gradio_api/file={path}", timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code


def store_of(app) -> Store:
    return Store.open(app["data_dir"])


# An element's text without Gradio's progress overlay ("0.3s", "processing | 1.2s")
TEXT_JS = """(id) => { const e = document.getElementById(id); if (!e) return null;
  const c = e.cloneNode(true); c.querySelectorAll('[data-testid=status-tracker]').forEach(n => n.remove());
  document.body.appendChild(c); const t = c.innerText; c.remove(); return t.trim(); }"""


def text(page, elem_id: str) -> str:
    return page.evaluate(TEXT_JS, elem_id)


def value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def wait_value(page, elem_id: str, expected: str, timeout: float = 300) -> str:
    """Wait until a field shows ``expected`` (updates from the server arrive later on a loaded machine)."""
    page.wait_for_function("([id, want]) => { const e = document.querySelector(`#${id} textarea, #${id} input`);"
                           " return e && e.value === want; }", arg=[elem_id, expected], timeout=timeout * 1000)
    return value(page, elem_id)


def fill(page, elem_id: str, v: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(v)


def wait_text(page, elem_id: str, needle: str, timeout: float = 600) -> str:
    page.wait_for_function(f"([id, needle]) => {{ const t = ({TEXT_JS})(id); return t && t.includes(needle); }}",
                           arg=[elem_id, needle], timeout=timeout * 1000)
    return text(page, elem_id)


def wait_change(page, elem_id: str, before: str, timeout: float = 300) -> str:
    page.wait_for_function(f"([id, before]) => {{ const t = ({TEXT_JS})(id); return t !== null && t !== before; }}",
                           arg=[elem_id, before], timeout=timeout * 1000)
    return text(page, elem_id)


def act(page, elem_id: str, do) -> str:
    """Do something that updates the status line, and wait for the update."""
    before = text(page, elem_id)
    do()
    return wait_change(page, elem_id, before)


def choose(page, elem_id: str, option: str | None = None) -> None:
    """Pick an option of a Gradio dropdown (the first one when ``option`` is None)."""
    page.click(f"#{elem_id} input")
    opt = page.get_by_role("option").first if option is None else page.get_by_role("option", name=option, exact=True)
    opt.click()
    page.keyboard.press("Escape")
    time.sleep(0.4)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    time.sleep(0.5)


def radio(page, elem_id: str, label: str) -> None:
    page.click(f"#{elem_id} label:has-text('{label}')")
    time.sleep(0.4)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def judgments(app, context: str = "collect") -> list[dict]:
    with store_of(app) as s:
        return s.query("SELECT j.id, j.kind, j.choice FROM judgments j WHERE j.context = ? ORDER BY j.id", (context,))


def generate(page, *, n: int, seed: int | None, prompt: str, timeout: float = 900) -> str:
    fill(page, "prompt", prompt)
    fill(page, "n", str(n))
    fill(page, "seed", "" if seed is None else str(seed))
    before = text(page, "gen-status")  # (the tests never expect the same message twice in a row)
    page.click("#generate-btn")
    page.wait_for_function(f"(before) => {{ const t = ({TEXT_JS})('gen-status'); return t !== before && "
                           "/Done|Error/.test(t); }", arg=before, timeout=timeout * 1000)
    return text(page, "gen-status")


def train_and_wait(page, app, *, steps: int, queue_second: bool = False, timeout: float = 1500) -> list[int]:
    """Start a run (and optionally a second one while it runs); wait for all to finish."""
    fill(page, "train-steps", str(steps))
    msg = act(page, "train-msg", lambda: page.click("#train-start"))
    assert re.search(r"Run \d+ \(", msg), msg
    ids = [int(re.search(r"Run (\d+)", msg).group(1))]
    if queue_second:
        msg2 = act(page, "train-msg", lambda: page.click("#train-start"))
        assert f"queued behind run {ids[0]}" in msg2, msg2  # not lost: waits its turn
        ids.append(int(re.search(r"Run (\d+)", msg2).group(1)))
        with store_of(app) as s:
            assert s.get_run(ids[1]).status == "queued"
    seen_steps: set[int] = set()
    deadline = time.time() + timeout
    while True:
        with store_of(app) as s:
            runs = [s.get_run(i) for i in ids]
        prog = text(page, "run-progress-box")
        m = re.search(r"step (\d+) of", prog)
        if m:
            seen_steps.add(int(m.group(1)))
        if all(r.status in ("completed", "failed", "cancelled") for r in runs):
            break
        assert time.time() < deadline, f"runs {ids} did not finish: {[r.status for r in runs]}"
        time.sleep(0.5)
    assert [r.status for r in runs] == ["completed"] * len(ids), [(r.status, r.error) for r in runs]
    wait_text(page, "run-progress-box", "completed", 30)
    return ids


def switch_compare(page, modality: str) -> None:
    """Pick the Compare tab's modality and wait until its change has cleared the last comparison (else the
    clearing can land after the next start, on a loaded machine, and wipe it)."""
    radio(page, "compare-modality", modality)
    page.wait_for_function(f"() => ({TEXT_JS})('compare-msg') === ''", timeout=300_000)


def plot_points(page, elem_id: str) -> int:
    """Points on a Vega line plot (the line's path commands)."""
    d = page.locator(f"#{elem_id} .mark-line path").first.get_attribute("d") or ""
    return len(re.findall(r"[ML]", d))


# -- the tests, in the order a user goes ------------------------------------------------------
