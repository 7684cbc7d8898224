"""The app in a real browser: Debian's chromium driven by playwright, as a user would -- images and text.

One app process on a temporary data directory for the module (tests/browser_kit.py); the tests run in
order (generate and judge, train, compare, export -- images, then text) and check the store after each
step. Screenshots of every tab go to ``test-artifacts/``. Music and video: tests/test_browser_media.py (a
module of its own, so an xdist worker runs it beside this one).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.browser_kit import (
    ARTIFACTS,
    IMAGE_PROMPT,
    TEXT_JS,
    TEXT_PROMPT,
    act,
    choose,
    file_status,
    fill,
    generate,
    judgments,
    plot_points,
    radio,
    shot,
    store_of,
    switch_compare,
    tab,
    text,
    train_and_wait,
    value,
    wait_change,
    wait_text,
    wait_value,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

if os.environ.get("PALATE_SKIP_BROWSER") == "1":
    pytest.skip("PALATE_SKIP_BROWSER=1", allow_module_level=True)


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
    # a reward model on the summary of the clean sample only (Advanced: a few numbers, for few votes)
    if not page.locator("#reward-summary").is_visible():
        page.locator("button:has-text('Advanced'):visible").first.click()
    page.click("#reward-summary input")
    fill(page, "reward-name", "my-summary")
    page.click("#reward-train")
    status = wait_text(page, "reward-status", "my-summary@v1")
    with store_of(app) as s:
        assert s.get_reward_model("my-summary").backbone == "own-summary", status
    page.click("#reward-summary input")
    fill(page, "reward-name", "my-taste")
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
