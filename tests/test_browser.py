"""The app in a real browser: Debian's chromium driven by playwright, as a user would.

One app process on a temporary data directory for the whole module; the tests run in
order (generate and judge, train, compare, export -- images, then text) and check the
store after each step. Screenshots of every tab go to ``test-artifacts/``.

Needs /usr/bin/chromium (`apt-get install chromium`; scripts/test.sh installs it when it
can). Without it these tests fail with that message; PALATE_SKIP_BROWSER=1 skips them.
"""
from __future__ import annotations

import contextlib
import json
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

pytestmark = pytest.mark.slow

if os.environ.get("PALATE_SKIP_BROWSER") == "1":
    pytest.skip("PALATE_SKIP_BROWSER=1", allow_module_level=True)


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


def test_page_is_usable_at_once_and_serves_only_the_data_dir(app, page):
    assert page.title() == "Palate"
    assert str(app["data_dir"]) in text(page, "top-status")
    assert value(page, "model") == "shapes-diffusion"
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "startup.json").write_text(json.dumps({"seconds_to_usable_page": round(app["startup_s"], 2)}))
    # Gradio's file route serves nothing outside the data directory, nor its database and run folders
    for path in ("/etc/passwd", str(ROOT / "README.md"), str(app["data_dir"] / "palate.db"),
                 str(app["data_dir"] / "runs")):
        assert file_status(app, path) in (403, 404), path
    shot(page, "0-start")


def test_image_generate_pick_best_ab_rank_undo(app, page):
    # bad input first: nothing generated, a readable message, the page keeps working
    assert "write a prompt first" in generate(page, n=4, seed=1, prompt="")
    assert "N must be between 2 and 8" in generate(page, n=9, seed=1, prompt=IMAGE_PROMPT)
    assert "N must be between 2 and 8" in generate(page, n=1, seed=1, prompt=IMAGE_PROMPT)
    fill(page, "n", "4")
    fill(page, "seed", "abc")
    before = text(page, "gen-status")
    page.click("#generate-btn")
    assert "seed must be a whole number" in wait_change(page, "gen-status", before)
    with store_of(app) as s:
        assert s.list_generations() == []

    status = generate(page, n=5, seed=100, prompt=IMAGE_PROMPT)
    assert "Done 5 of 5" in status, status
    with store_of(app) as s:
        gens = s.list_generations()
        assert sorted(g.seed for g in gens) == [100, 101, 102, 103, 104]
        assert all(g.model == "shapes-diffusion" and g.mime == "image/png" for g in gens)
        assert file_status(app, str(s.media_file(gens[0]))) == 200  # candidates are served
    assert page.locator("#cand-img-5 img").count() == 1 and page.locator("#cand-img-6").is_hidden()
    shot(page, "1-generate-image")

    # best of N: a click, then the keyboard
    msg = act(page, "gen-status", lambda: page.click("#choose-2"))
    assert "#2 is the best of 5" in msg
    msg = act(page, "gen-status", lambda: page.keyboard.press("4"))
    assert "#4 is the best of 5" in msg
    rows = judgments(app)
    assert [r["kind"] for r in rows] == ["ranking", "ranking"]
    assert "2 judgments collected for" in text(page, "counter")

    # A/B: 10 pairs over 5 candidates; clicks and shortcuts
    radio(page, "judge-mode", "A/B")
    assert "Pair 1 of 10" in text(page, "ab-label")
    for elem in ("ab-a", "ab-b", "ab-tie", "ab-bad"):
        act(page, "gen-status", lambda e=elem: page.click(f"#{e}"))
    for key in ("a", "b", "a", "b"):
        act(page, "gen-status", lambda k=key: page.keyboard.press(k))
    assert "Pair 9 of 10" in text(page, "ab-label")
    pairwise = [r for r in judgments(app) if r["kind"] == "pairwise"]
    assert [r["choice"] for r in pairwise] == ["a", "b", "tie", "both_bad", "a", "b", "a", "b"]
    # skip stores nothing; undo (u) takes back the skip, then the last vote
    act(page, "gen-status", lambda: page.keyboard.press("s"))
    assert len(judgments(app)) == 10 and "Pair 10 of 10" in text(page, "ab-label")
    act(page, "gen-status", lambda: page.keyboard.press("u"))
    assert "Pair 9 of 10" in text(page, "ab-label")
    msg = act(page, "gen-status", lambda: page.keyboard.press("u"))
    assert "deleted" in msg and len(judgments(app)) == 9 and "Pair 8 of 10" in text(page, "ab-label")
    for key in ("b", "a", "a"):  # pairs 8, 9, 10
        act(page, "gen-status", lambda k=key: page.keyboard.press(k))
    assert "All 10 pairs judged" in text(page, "ab-label")
    pairwise = [r for r in judgments(app) if r["kind"] == "pairwise"]
    assert len(pairwise) == 10
    assert "12 judgments collected for" in text(page, "counter")
    shot(page, "2-judge-ab")

    # full ranking by clicking in order (clicks and digits), Enter saves a partial one
    radio(page, "judge-mode", "Rank")
    page.click("#choose-3")
    wait_text(page, "rank-order", "#3")
    page.keyboard.press("1")
    wait_text(page, "rank-order", "#3 > #1")
    msg = act(page, "gen-status", lambda: page.keyboard.press("Enter"))
    assert "2 ranked, 3 unranked" in msg
    with store_of(app) as s:
        j = s.get_judgment(s.last_judgment_id())
        assert j.kind == "ranking" and sorted(r for r in j.ranks if r is not None) == [1, 2]
        ids = [g.id for g in sorted(s.list_generations(), key=lambda g: g.seed)]
        assert j.generation_ids[:2] == (ids[2], ids[0])
        assert s.stats()[0]["training_pairs"] >= 8
    radio(page, "judge-mode", "Best of N")


def test_reward_model_from_the_rewards_tab(app, page):
    tab(page, "Rewards")
    before = text(page, "reward-status")
    page.click("#reward-train")
    assert "name the reward model first" in wait_change(page, "reward-status", before)
    fill(page, "reward-name", "my-taste")
    page.click("#reward-train")
    status = wait_text(page, "reward-status", "held-out pair accuracy")
    assert "my-taste@v1" in status and "5-fold" in status, status
    table = text(page, "reward-table")
    assert "my-taste@v1" in table and "taste-saturated" in table
    with store_of(app) as s:
        rec = s.get_reward_model("my-taste")
        assert rec.base_model == "shapes-diffusion" and rec.metrics["votes"] >= 8
        assert (app["data_dir"] / rec.path).is_file()
        # it trained as a run of the queue (the Train tab lists it, with cancel and resume)
        (run,) = [r for r in s.list_runs() if r.method == "reward-model"]
        assert run.status == "completed" and run.last_metrics["reward_model"] == "my-taste@v1"
        assert run.step == run.total_steps == 6
    # synthetic labels: the reward model ranks fresh candidates as an AI annotator
    choose(page, "label-reward", "taste-saturated")
    fill(page, "label-prompts", IMAGE_PROMPT)
    fill(page, "label-k", "3")
    page.click("#label-go")
    status = wait_text(page, "label-status", "Stored")
    assert "1 rankings" in status and "reward:taste-saturated" in status, status
    with store_of(app) as s:
        rows = s.query("SELECT j.context, a.kind FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
                       "WHERE a.name = 'reward:taste-saturated'")
        assert rows == [{"context": "reward-label", "kind": "ai"}]
    # soft labels for iREPO: a vote on each pair, its strength the learned model's preference probability
    page.click("#label-soft input")
    choose(page, "label-reward", "my-taste@v1")
    page.click("#label-go")
    status = wait_text(page, "label-status", "soft votes")
    assert "3 soft votes" in status and "reward:my-taste@v1" in status, status
    with store_of(app) as s:
        soft = s.query("SELECT strength, context FROM pairwise_votes WHERE annotator = 'reward:my-taste@v1'")
        assert len(soft) == 3 and {r["context"] for r in soft} == {"reward-label"}
        assert all(0.0 < r["strength"] < 1.0 for r in soft), soft  # probabilities, not hard votes
    page.click("#label-soft input")
    shot(page, "2b-rewards")

    # in A/B: the reward model's scores beside each pair, and the least sure pair first
    tab(page, "Generate & rank")
    assert "Done 3 of 3" in generate(page, n=3, seed=500, prompt=IMAGE_PROMPT)
    radio(page, "judge-mode", "A/B")
    choose(page, "ab-reward", "my-taste@v1")
    wait_text(page, "ab-label", "my-taste@v1: scores A")
    page.click("#ab-active input")
    label = wait_text(page, "ab-label", "least sure pair first")
    assert "P(A better)" in label, label
    shot(page, "2c-ab-active")
    # per-dimension votes: the pair stays while its dimensions are judged; the overall buttons move on
    page.click("#ab-per-dim input")
    page.wait_for_selector("#ab-dim-style-a", state="visible")
    assert page.locator("#ab-dim-quality-b").is_visible()
    act(page, "gen-status", lambda: page.click("#ab-dim-style-a"))
    assert "Stored: style" in text(page, "gen-status")
    act(page, "gen-status", lambda: page.click("#ab-dim-quality-b"))
    assert text(page, "ab-label") == label  # still the same pair
    act(page, "gen-status", lambda: page.click("#ab-a"))
    assert text(page, "ab-label") != label  # the overall vote moved on
    with store_of(app) as s:
        last = s.query("SELECT dimension, choice FROM judgments ORDER BY id DESC LIMIT 3")
        assert last == [{"dimension": "overall", "choice": "a"}, {"dimension": "quality", "choice": "b"},
                        {"dimension": "style", "choice": "a"}], last
    shot(page, "2d-ab-dimensions")
    page.click("#ab-per-dim input")
    page.wait_for_selector("#ab-dim-style-a", state="hidden")
    choose(page, "ab-reward", "(none)")
    wait_text(page, "gen-status", "No reward-model hint")
    page.click("#ab-active input")
    radio(page, "judge-mode", "Best of N")


def test_image_train_queue_and_live_plot(app, page):
    tab(page, "Train")
    assert value(page, "train-method") == "diffusion-dpo"
    choose(page, "train-preset", "MaPO · 100 steps")  # a preset sets method, steps, lr, beta, rank
    wait_value(page, "train-method", "mapo")
    wait_value(page, "train-beta", "0.1")
    assert [value(page, f"train-{k}") for k in ("method", "steps", "lr", "beta", "rank")] == \
        ["mapo", "100", "0.00025", "0.1", "8"]
    choose(page, "train-preset", "Diffusion-DPO · 100 steps")
    wait_value(page, "train-method", "diffusion-dpo")
    wait_value(page, "train-beta", "2000")
    assert value(page, "train-method") == "diffusion-dpo" and value(page, "train-beta") == "2000"
    ids = train_and_wait(page, app, steps=6, queue_second=True)
    assert plot_points(page, "loss-plot") == 6  # one point per step of the run shown (the latest)
    assert plot_points(page, "acc-plot") == 6
    assert "done: 6 steps" in value(page, "run-log")
    with store_of(app) as s:
        adapters = s.list_adapters()
        assert [a.run_id for a in adapters] == ids
        assert all(s.get_run(i).step == 6 for i in ids)
    shot(page, "3-train")


def test_spo_from_the_train_tab(app, page):
    """An online method: SPO needs no votes of its own, but a reward model and prompts; its options are the
    method's keyword arguments."""
    tab(page, "Train")
    choose(page, "train-method", "spo")
    page.wait_for_selector("#train-reward-model", state="visible")
    wait_value(page, "train-beta", "10")
    msg = act(page, "train-msg", lambda: page.click("#train-start"))
    assert "needs a reward model" in msg, msg
    choose(page, "train-reward-model", "taste-saturated")
    fill(page, "train-prompts", "a red circle on a white background\ntwo blue squares")
    accordion = page.locator("#train-method-options")
    if not accordion.is_visible():
        page.locator("button:has-text('Advanced'):visible").first.click()
    fill(page, "train-method-options", "sample_steps=4, shared_steps=1, pool=2, threshold=0.05")
    ids = train_and_wait(page, app, steps=2)
    with store_of(app) as s:
        run = s.get_run(ids[0])
        assert run.method == "spo" and run.config["reward_model"] == "taste-saturated"
        assert run.config["loss_kwargs"] == {"sample_steps": 4.0, "shared_steps": 1.0, "pool": 2.0, "threshold": 0.05}
    recs = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["sample_forwards"] > 0 for r in recs)
    fill(page, "train-method-options", "")
    shot(page, "3b-train-spo")
    choose(page, "train-method", "diffusion-dpo")
    page.wait_for_selector("#train-reward-model", state="hidden")


def test_image_blind_compare_win_rate(app, page):
    with store_of(app) as s:
        pairs_before = s.stats(modality="image")[0]["training_pairs"]
        adapter = s.list_adapters()[-1]
    tab(page, "Compare")
    fill(page, "compare-prompts", IMAGE_PROMPT + "\none large green square on a white background")
    fill(page, "compare-seeds", "2")
    msg = act(page, "compare-msg", lambda: page.click("#blind-start"))
    assert "4 blind comparisons" in msg, msg
    assert "Comparison 1 of 4" in text(page, "blind-label")
    # nothing on the page tells base from tuned (no generation ids on the sides)
    assert [text(page, f"blind-img-{side}").split("\n")[0] for side in ("left", "right")] == ["Left", "Right"]
    shot(page, "4-compare-blind")
    act(page, "blind-label", lambda: page.click("#blind-left"))
    for key in ("ArrowRight", "ArrowDown", "ArrowLeft"):
        act(page, "blind-label", lambda k=key: page.keyboard.press(k))
    result = text(page, "blind-label")
    assert "win rate" in result and "over 4 blind choices" in result and "95% CI" in result
    blind = judgments(app, "compare")
    assert len(blind) == 4
    with store_of(app) as s:
        # base and tuned on the same seeds; the tuned ones carry the adapter
        gens = s.list_generations()
        tuned = [g for g in gens if g.adapter_id == adapter.id]
        assert sorted(g.seed for g in tuned) == [0, 0, 1, 1]
        # blind choices are evaluations, never training data
        assert s.stats(modality="image")[0]["training_pairs"] == pairs_before
    # side by side: base and one adapter
    choose(page, "compare-adapters")
    msg = act(page, "compare-msg", lambda: page.click("#compare-btn"))
    assert "Same prompts and seeds" in msg, msg
    page.wait_for_selector("#compare-gallery img")
    assert page.locator("#compare-gallery img").count() >= 8  # 2 prompts x 2 seeds x (base + adapter)
    shot(page, "5-compare-side-by-side")


def test_adapters_export_and_delete(app, page):
    tab(page, "Adapters")
    wait_text(page, "adapters-table", "-diffusion-dpo", 30)  # run 1 trained the reward model
    choose(page, "adapter-select", "1")
    wait_text(page, "adapter-info", "Adapter 1")
    for fmt in ("diffusers", "kohya"):
        choose(page, "adapter-format", fmt)
        msg = act(page, "adapter-msg", lambda: page.click("#adapter-export"))
        assert "Exported to" in msg and "max difference" in msg, msg
    exports = sorted((app["data_dir"] / "exports").iterdir())
    assert any(p.suffix == ".safetensors" and "kohya" in p.name for p in exports)
    assert any(p.is_dir() and "diffusers" in p.name for p in exports)
    shot(page, "6-adapters")
    choose(page, "adapter-select", "2")
    wait_text(page, "adapter-info", "Adapter 2")
    with store_of(app) as s:
        before = [a.id for a in s.list_adapters()]
    msg = act(page, "adapter-msg", lambda: page.click("#adapter-delete"))
    assert "removed" in msg
    wait_text(page, "adapter-info", "", 10)
    page.wait_for_function("() => document.querySelector('#adapter-select input').value === ''", timeout=600_000)
    with store_of(app) as s:
        assert [a.id for a in s.list_adapters()] == [i for i in before if i != 2] and 1 in before


def test_data_tab_stats_delete_export_import(app, page, tmp_path):
    tab(page, "Data")
    wait_text(page, "stats-table", "shapes-diffusion", 30)
    wait_text(page, "prompts-table", IMAGE_PROMPT, 10)
    before = len(judgments(app))
    last = judgments(app)[-1]["id"]
    fill(page, "delete-id", str(last))
    msg = act(page, "delete-msg", lambda: page.click("#delete-btn"))
    assert f"Deleted judgment {last}" in msg
    assert len(judgments(app)) == before - 1
    msg = act(page, "export-data-msg", lambda: page.click("#export-data-btn"))
    m = re.search(r"Wrote (\d+) rows to (/\S+\.parquet)", msg)
    assert m and int(m.group(1)) > 0 and Path(m.group(2)).is_file(), msg
    # import it into the same store: every vote is already there, so nothing new
    page.set_input_files("#import-file input[type=file]", m.group(2))
    time.sleep(1)
    msg = act(page, "import-msg", lambda: page.click("#import-btn"))
    assert "Imported 0 judgment(s)" in msg and "skipped (already in the store)" in msg, msg
    shot(page, "7-data")


def test_text_generate_judge_train_compare_export(app, page):
    tab(page, "Generate & rank")
    radio(page, "modality", "text")
    assert wait_value(page, "model", "arith-reasoner") == "arith-reasoner"
    status = generate(page, n=4, seed=0, prompt=TEXT_PROMPT)
    assert "Done 4 of 4" in status, status
    answer = value(page, "cand-text-1")
    assert "Answer:" in answer
    with store_of(app) as s:
        texts = s.list_generations(modality="text")
        assert len(texts) == 4 and all(g.mime.startswith("text/") for g in texts)
        assert s.media_bytes(texts[0]).decode() in (answer, answer.strip())
    radio(page, "judge-mode", "A/B")
    page.click("#ab-a")
    wait_text(page, "gen-status", "Stored")
    for key in ("b", "a", "b", "a", "b"):
        act(page, "gen-status", lambda k=key: page.keyboard.press(k))
    assert "All 6 pairs judged" in text(page, "ab-label")
    assert "6 judgments collected for" in text(page, "counter")
    shot(page, "8-generate-text")
    radio(page, "judge-mode", "Best of N")

    tab(page, "Train")
    radio(page, "train-modality", "text")
    assert wait_value(page, "train-method", "simpo") == "simpo"
    ids = train_and_wait(page, app, steps=8)
    assert plot_points(page, "loss-plot") == 8
    with store_of(app) as s:
        text_adapter = [a for a in s.list_adapters() if a.run_id == ids[0]][0]
        assert text_adapter.modality == "text"
    shot(page, "9-train-text")

    tab(page, "Compare")
    switch_compare(page, "text")
    fill(page, "compare-prompts", TEXT_PROMPT)
    fill(page, "compare-seeds", "2")
    msg = act(page, "compare-msg", lambda: page.click("#blind-start"))
    assert "2 blind comparisons" in msg, msg
    assert "Answer:" in value(page, "blind-text-left")
    act(page, "blind-label", lambda: page.keyboard.press("ArrowLeft"))
    act(page, "blind-label", lambda: page.click("#blind-right"))
    assert "over 2 blind choices" in text(page, "blind-label")
    shot(page, "10-compare-text")

    tab(page, "Adapters")
    choose(page, "adapter-select", str(text_adapter.id))
    wait_text(page, "adapter-info", f"Adapter {text_adapter.id}")
    page.wait_for_function("() => document.querySelector('#adapter-format input').value === 'peft'", timeout=600_000)
    msg = act(page, "adapter-msg", lambda: page.click("#adapter-export"))
    assert "Exported to" in msg, msg
    out = Path(re.search(r"Exported to (/[^\s;]+?)\.?(?:;|$)", msg).group(1))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()


def test_bad_model_and_closing_the_browser_mid_generation(app, page, browser):
    tab(page, "Generate & rank")
    radio(page, "modality", "image")
    fill(page, "model", "nobody/does-not-exist")
    status = generate(page, n=2, seed=0, prompt=IMAGE_PROMPT)
    assert "Error" in status and "nobody/does-not-exist" in status, status
    fill(page, "model", "shapes-diffusion")

    # a second tab starts 8 long text answers and is closed after the first arrives
    other = browser.new_page()
    other.set_default_timeout(300_000)
    other.goto(app["url"])
    other.wait_for_selector("#generate-btn")
    other.click("#modality label:has-text('text')")
    time.sleep(0.4)
    other.locator("#prompt textarea").fill("What is 30 - 4 * 5 + 17?")
    other.locator("#n input").fill("8")
    other.click("#generate-btn")
    other.wait_for_function(f"() => /Generating… [1-7] of 8/.test(({TEXT_JS})('gen-status'))", timeout=600_000)
    other.close()
    time.sleep(3)
    # the app keeps serving, and what was generated is stored whole
    page.reload()
    page.wait_for_selector("#generate-btn")
    with store_of(app) as s:
        gens = [g for g in s.list_generations(modality="text") if g.prompt == "What is 30 - 4 * 5 + 17?"]
        assert 1 <= len(gens) <= 8
        for g in gens:
            assert "Answer" in s.media_bytes(g).decode() or g.params.get("finish_reason") == "length"
    status = generate(page, n=2, seed=5, prompt=IMAGE_PROMPT)
    assert "Done 2 of 2" in status
    assert not page.errors, page.errors


MUSIC_PROMPT = "a slow sad melody in A minor on a harp, descending"
PLAYING_JS = "(id) => { const b = document.querySelector('#' + id + ' button.play-pause-button'); " \
             "return !!b && b.getAttribute('aria-label') === 'Pause'; }"


def press_until_playing(page, key: str, slot: str, tries: int = 30) -> None:
    """Press ``key`` until the player in ``slot`` plays (a player ignores play until its audio has loaded)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # keys act outside text fields
    for _ in range(tries):
        page.keyboard.press(key)
        try:
            page.wait_for_function(PLAYING_JS, arg=slot, timeout=4_000)
            return
        except PlaywrightTimeout:
            if page.evaluate(PLAYING_JS, slot):
                return
    raise AssertionError(f"{key} never started {slot}")


def test_music_generate_listen_judge_train_compare_export(app, page):
    """The music loop on the built-in melody model: waveform players, play/stop keys and "A then B", A/B
    votes by key, MusicRL from the Train tab, a blind comparison by ear, a PEFT export."""
    tab(page, "Generate & rank")
    radio(page, "modality", "music")
    assert wait_value(page, "model", "melody-lm") == "melody-lm"
    status = generate(page, n=4, seed=0, prompt=MUSIC_PROMPT)
    assert "Done 4 of 4" in status, status
    page.wait_for_selector("#cand-audio-4 button.play-pause-button")
    with store_of(app) as s:
        clips = s.list_generations(modality="music")
        assert len(clips) == 4 and all(g.mime == "audio/wav" for g in clips)
    # one key plays a candidate and stops it; starting another stops the first
    press_until_playing(page, "Shift+Digit1", "cand-audio-1")
    press_until_playing(page, "Shift+Digit2", "cand-audio-2")
    assert not page.evaluate(PLAYING_JS, "cand-audio-1")
    page.keyboard.press("Shift+Digit2")
    page.wait_for_function(f"() => !({PLAYING_JS})('cand-audio-2')", timeout=60_000)
    shot(page, "11-generate-music")

    radio(page, "judge-mode", "A/B")
    page.wait_for_selector("#ab-play-both", state="visible")
    page.wait_for_selector("#ab-audio-b button.play-pause-button")
    press_until_playing(page, "p", "ab-audio-a")  # A, then B when A ends
    page.wait_for_function(PLAYING_JS, arg="ab-audio-b", timeout=120_000)
    page.keyboard.press("w")  # stop B
    for key in ("a", "b", "a"):
        act(page, "gen-status", lambda k=key: page.keyboard.press(k))
    assert "3 judgments collected for" in text(page, "counter")
    radio(page, "judge-mode", "Best of N")

    tab(page, "Train")
    radio(page, "train-modality", "music")
    choose(page, "train-method", "musicrl")
    page.wait_for_selector("#train-reward-model", state="visible")
    choose(page, "train-reward-model", "taste-legato")
    accordion = page.locator("#train-method-options")
    if not accordion.is_visible():
        page.locator("button:has-text('Advanced'):visible").first.click()
    fill(page, "train-method-options", "samples=2")
    ids = train_and_wait(page, app, steps=2)
    fill(page, "train-method-options", "")
    with store_of(app) as s:
        run = s.get_run(ids[0])
        assert run.method == "musicrl" and run.config["reward_model"] == "taste-legato"
        music_adapter = [a for a in s.list_adapters() if a.run_id == ids[0]][0]
        assert music_adapter.modality == "music"
    recs = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["samples"] == 2 * r["prompts"] for r in recs)
    shot(page, "12-train-music")

    tab(page, "Compare")
    switch_compare(page, "music")
    fill(page, "compare-prompts", MUSIC_PROMPT)
    fill(page, "compare-seeds", "2")
    msg = act(page, "compare-msg", lambda: page.click("#blind-start"))
    assert "2 blind comparisons" in msg, msg
    page.wait_for_selector("#blind-play-both", state="visible")
    page.wait_for_selector("#blind-audio-right button.play-pause-button")
    press_until_playing(page, "q", "blind-audio-left")
    page.keyboard.press("q")
    act(page, "blind-label", lambda: page.keyboard.press("ArrowLeft"))
    act(page, "blind-label", lambda: page.click("#blind-right"))
    assert "over 2 blind choices" in text(page, "blind-label")
    shot(page, "13-compare-music")

    tab(page, "Adapters")
    choose(page, "adapter-select", str(music_adapter.id))
    wait_text(page, "adapter-info", f"Adapter {music_adapter.id}")
    page.wait_for_function("() => document.querySelector('#adapter-format input').value === 'peft'", timeout=600_000)
    msg = act(page, "adapter-msg", lambda: page.click("#adapter-export"))
    assert "Exported to" in msg, msg

    # a melody file goes up through the settings' upload and reaches the model, which says whose setting it is
    tab(page, "Generate & rank")
    page.get_by_text("Settings (empty = the model's default)").click()
    tune = Path(app["data_dir"]).parent / "tune.wav"
    with store_of(app) as s:
        tune.write_bytes(s.media_bytes(clips[0]))
    page.set_input_files("#setting-music-melody input[type=file]", str(tune))
    page.wait_for_selector("#setting-music-melody button.play-pause-button", timeout=60_000)
    status = generate(page, n=2, seed=0, prompt=MUSIC_PROMPT)
    assert "no melody setting (it is MusicGen-Melody's)" in status, status
    assert not page.errors, page.errors


VIDEO_PROMPT = "a red circle moving quickly to the left on a white background"
VIDEOS_JS = """(ids) => ids.map((id) => { const r = document.getElementById(id);
  const v = r && r.querySelector('video'); return v ? {playing: !v.paused && v.readyState > 2, muted: v.muted,
  loop: v.loop, t: v.currentTime} : null; })"""


def videos_in_step(page, ids: list[str], timeout: float = 120) -> list[dict]:
    """Wait until the players of ``ids`` all play, muted and looping, within 0.3 s of each other."""
    page.wait_for_function(f"""(ids) => {{ const s = ({VIDEOS_JS})(ids);
      return s.every((x) => x && x.playing && x.muted && x.loop)
        && Math.max(...s.map((x) => x.t)) - Math.min(...s.map((x) => x.t)) < 0.3; }}""", arg=ids, timeout=timeout * 1000)
    return page.evaluate(VIDEOS_JS, ids)


def test_video_generate_watch_judge_per_dimension_guide_train(app, page):
    """The video loop on the built-in model: MP4 players that loop muted and in step, A/B votes per
    dimension by key, Flow-NRG guidance from the Generate tab's sliders, Flow-DPO from the Train tab."""
    tab(page, "Generate & rank")
    radio(page, "modality", "video")
    assert wait_value(page, "model", "moving-shapes-video") == "moving-shapes-video"
    if not page.locator("#setting-video-steps").is_visible():  # (an earlier test may have opened the settings)
        page.get_by_text("Settings (empty = the model's default)").click()
    fill(page, "setting-video-steps", "6")
    status = generate(page, n=4, seed=0, prompt=VIDEO_PROMPT)
    assert "Done 4 of 4" in status, status
    with store_of(app) as s:
        clips = s.list_generations(modality="video")
        assert len(clips) == 4 and all(g.mime == "video/mp4" for g in clips)
    videos_in_step(page, [f"cand-video-{i}" for i in range(1, 5)])
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.keyboard.press("p")  # pauses them together
    page.wait_for_function(f"() => ({VIDEOS_JS})(['cand-video-1', 'cand-video-2']).every((x) => x && !x.playing)",
                           timeout=60_000)
    shot(page, "14-generate-video")

    radio(page, "judge-mode", "A/B")
    videos_in_step(page, ["ab-video-a", "ab-video-b"])
    page.click("#ab-per-dim label")
    page.wait_for_selector("#ab-dim-visual", state="visible")
    assert not page.locator("#ab-dim-prompt").is_visible()  # video's dimensions only
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    for key in ("1", "5", "9"):  # visual: A, motion: B, text: tie
        act(page, "gen-status", lambda k=key: page.keyboard.press(k))
    act(page, "gen-status", lambda: page.keyboard.press("a"))  # overall: A, next pair
    with store_of(app) as s:
        rows = s.query("SELECT dimension, choice FROM judgments WHERE kind = 'pairwise' AND dimension != 'overall' "
                       "OR id IN (SELECT max(id) FROM judgments) ORDER BY id")
    dims = [(r["dimension"], r["choice"]) for r in rows][-4:]
    assert [d for d, _ in dims] == ["visual", "motion", "text", "overall"], dims
    shot(page, "15-judge-video")
    page.click("#ab-per-dim label")
    for key in ("b", "a", "a"):  # more overall votes: the Train tab's default batch takes 4 pairs
        act(page, "gen-status", lambda k=key: page.keyboard.press(k))
    radio(page, "judge-mode", "Best of N")

    # Flow-NRG: a noise-aware reward model of these votes guides sampling from the settings' sliders
    from alignment.rewards import service
    from modalities.protocol import ModelRef
    from modalities.video.adapter import VideoAdapter

    with store_of(app) as s:
        service.train(s, VideoAdapter.load(ModelRef("moving-shapes-video"), device="cpu"), modality="video",
                      name="my-eyes", folds=2, noise_aware=True)
    fill(page, "setting-video-guide_reward", "my-eyes")
    page.locator("#setting-video-guide_visual input[type=number]").fill("20")
    page.locator("#setting-video-guide_visual input[type=number]").press("Enter")
    status = generate(page, n=2, seed=0, prompt=VIDEO_PROMPT)
    assert "Done 2 of 2" in status, status
    with store_of(app) as s:
        guided = s.list_generations(modality="video")[-1]
        assert guided.params["guide"]["weights"] == {"visual": 20.0} and guided.params["guide"]["reward"] == "my-eyes"
    wait_text(page, "cand-video-1", "guided visual 20")
    page.locator("#setting-video-guide_visual input[type=number]").fill("0")
    page.locator("#setting-video-guide_visual input[type=number]").press("Enter")

    tab(page, "Train")
    radio(page, "train-modality", "video")
    choose(page, "train-method", "flow-dpo")
    ids = train_and_wait(page, app, steps=2)
    with store_of(app) as s:
        adapter = [a for a in s.list_adapters() if a.run_id == ids[0]][0]
        assert adapter.modality == "video" and adapter.method == "flow-dpo"
    shot(page, "16-train-video")
    assert not page.errors, page.errors
