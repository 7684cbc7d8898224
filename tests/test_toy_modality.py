"""A modality is one folder plus a registry line: the toy colour-strip modality (``tests/toy_modality.py``,
registered by ``tests/toy_app.py`` through ``modalities.registry.register``) works from the CLI and the
web app with no edit anywhere outside ``tests/`` -- its settings flags and rows, its own HTML
renderer, judging, training with the methods of its score family, comparing and exporting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from storage import Store
from tests.conftest import ROOT, SLOW

TOY = "toy_strips"


def toy_cli(*args: str, data_dir) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PALATE_DATA_DIR"}
    return subprocess.run([sys.executable, "tests/toy_app.py", *args, "--data-dir", str(data_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=SLOW)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_spec_is_read_by_the_registry_and_absent_without_the_line():
    from modalities import registry

    assert TOY not in registry.available()  # nothing in Palate knows it
    registry.register("tests.toy_modality:SPEC")
    try:
        spec = registry.spec(TOY)
        assert spec.display == "html" and [s.name for s in spec.settings] == ["steps", "spread"]
        assert registry.get(TOY).__name__ == "StripAdapter" and registry.source(TOY) == "tests.toy_modality:SPEC"
        from alignment.methods import methods_for

        assert methods_for(spec.score_kinds) == ["mapo", "rankdpo", "flow-dpo", "flow-rwr", "sft"]
    finally:
        registry.unregister(TOY)


def test_cli_generates_judges_trains_and_exports(tmp_path):
    d = tmp_path / "data"
    help_text = ok(toy_cli("generate", "--help", data_dir=d))
    assert "Colour strips (toy) (toy_strips)" in help_text and "--spread" in help_text  # its own flags
    rows = json.loads(ok(toy_cli("generate", "--modality", TOY, "--prompt", "warm to cool", "-n", "3", "--seed", "0",
                                 "--steps", "6", "--spread", "0.5", "--json", data_dir=d)))
    assert [r["params"] for r in rows] == [{"steps": 6, "spread": 0.5}] * 3
    values = json.loads((d / rows[0]["path"].split(str(d) + "/")[-1]).read_text())
    assert len(values) == 8 and all(0 <= v <= 1 for v in values)
    bad = toy_cli("generate", "--modality", TOY, "--prompt", "x", "--spread", "9", data_dir=d)
    assert bad.returncode == 2 and "spread must be between 0.1 and 3" in bad.stderr
    other = toy_cli("generate", "--modality", TOY, "--prompt", "x", "--temperature", "0.5", data_dir=d)
    assert other.returncode == 2 and "--temperature do not apply to toy_strips models" in other.stderr
    ok(toy_cli("vote", "--ranking", *(str(r["id"]) for r in rows), data_dir=d))
    more = json.loads(ok(toy_cli("generate", "--modality", TOY, "--prompt", "bright", "-n", "3", "--seed", "5",
                                 "--json", data_dir=d)))
    ok(toy_cli("vote", "--ranking", *(str(r["id"]) for r in reversed(more)), data_dir=d))
    # the methods of its score family train; others are refused before anything is written
    for method in ("flow-dpo", "rankdpo"):
        ok(toy_cli("train", "--modality", TOY, "--method", method, "--steps", "2", "--batch-size", "2", "--lr", "0.05",
                   data_dir=d))
    wrong = toy_cli("train", "--modality", TOY, "--method", "simpo", data_dir=d)
    assert wrong.returncode == 2 and "not a method for toy_strips models" in wrong.stderr
    with Store.open(d) as s:
        runs = s.list_runs()
        assert [r.status for r in runs] == ["completed"] * 2 and all(r.modality == TOY for r in runs)
        adapter = s.list_adapters()[0]
    # export: its own format, loaded back with plain peft; the adapter really changes the model
    out = json.loads(ok(toy_cli("export", "adapter", str(adapter.id), str(tmp_path / "x"), "--json", data_dir=d)))
    assert out["format"] == "peft" and out["max_difference"] <= 1e-5
    import torch

    from modalities.protocol import ModelRef
    from tests.toy_modality import StripAdapter

    x, cond, t = torch.randn(2, 8), torch.rand(2, 8), torch.rand(2, 1)
    base = StripAdapter.load(ModelRef("toy-strips")).model(x, cond, t)
    tuned = StripAdapter.load(ModelRef("toy-strips", adapter=adapter.path)).model(x, cond, t)
    assert not torch.allclose(base, tuned)
    # and the dataset export carries it like any media modality (its own MIME type)
    exported = ok(toy_cli("export", "dataset", str(tmp_path / "t.parquet"), "--modality", TOY, data_dir=d))
    assert "wrote 6 rows" in exported


@pytest.mark.slow
def test_the_web_app_shows_and_trains_it(tmp_path):
    """The browser drives the toy modality: its settings row, its renderer, A/B votes, a training run,
    the side-by-side compare and the export, all built from its spec."""
    from tests.browser_kit import (FLAGS, CHROMIUM, act, choose, fill, generate, radio, serving, shot, tab,
                                    text, train_and_wait, wait_text, wait_value)

    if os.environ.get("PALATE_SKIP_BROWSER") == "1":
        pytest.skip("PALATE_SKIP_BROWSER=1")
    from playwright.sync_api import sync_playwright

    with serving(tmp_path / "data", [sys.executable, "tests/toy_app.py"]) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(app["url"])
        page.wait_for_selector("#generate-btn")
        radio(page, "modality", TOY)
        assert wait_value(page, "model", "toy-strips") == "toy-strips"
        page.get_by_text("Settings (empty = the model's default)").click()
        page.wait_for_selector(f"#setting-{TOY}-spread", state="visible")
        assert page.locator("#setting-image-steps").is_hidden()
        # (once in three runs the "5" typed at once after the accordion opened never reached the server: the
        # caption said the default 8 steps; give the opened fields a moment, and leave the field as a user would)
        page.wait_for_timeout(1000)
        fill(page, f"setting-{TOY}-steps", "5")
        page.keyboard.press("Tab")
        assert wait_value(page, f"setting-{TOY}-steps", "5") == "5"
        status = generate(page, n=3, seed=0, prompt="warm to cool")
        assert "Done 3 of 3" in status, status
        assert page.locator("#cand-html-1 .toy-strip .toy-cell").count() == 8  # its own renderer
        assert "5 steps" in text(page, "cand-html-1")  # and its caption
        with Store.open(app["data_dir"]) as s:
            assert {g.params["steps"] for g in s.list_generations(modality=TOY)} == {5}
        radio(page, "judge-mode", "A/B")
        for key in ("a", "b", "a"):
            act(page, "gen-status", lambda k=key: page.keyboard.press(k))
        assert "All 3 pairs judged" in text(page, "ab-label")
        radio(page, "judge-mode", "Best of N")
        assert "Done 3 of 3" in generate(page, n=3, seed=10, prompt="bright")
        radio(page, "judge-mode", "A/B")
        for key in ("b", "b", "a"):
            act(page, "gen-status", lambda k=key: page.keyboard.press(k))
        shot(page, "toy-1-generate")

        tab(page, "Train")
        radio(page, "train-modality", TOY)
        assert wait_value(page, "train-method", "mapo") == "mapo"  # the first method of its score family
        choose(page, "train-method", "flow-dpo")
        fill(page, "train-lr", "0.05")
        ids = train_and_wait(page, app, steps=3)
        with Store.open(app["data_dir"]) as s:
            adapter = [a for a in s.list_adapters() if a.run_id == ids[0]][0]
            assert adapter.modality == TOY
        shot(page, "toy-2-train")

        tab(page, "Compare")
        radio(page, "compare-modality", TOY)
        time.sleep(1)
        fill(page, "compare-prompts", "warm to cool")
        fill(page, "compare-seeds", "2")
        choose(page, "compare-adapters")
        msg = act(page, "compare-msg", lambda: page.click("#compare-btn"))
        assert "Same prompts and seeds" in msg, msg
        page.wait_for_selector("#compare-html .toy-strip")
        assert page.locator("#compare-html .toy-strip").count() == 4  # 2 seeds x (base + adapter)
        shot(page, "toy-3-compare")

        tab(page, "Adapters")
        choose(page, "adapter-select", str(adapter.id))
        wait_text(page, "adapter-info", f"Adapter {adapter.id}")
        assert wait_value(page, "adapter-format", "peft") == "peft"
        msg = act(page, "adapter-msg", lambda: page.click("#adapter-export"))
        assert "Exported to" in msg and "max difference" in msg, msg
        assert page.locator("#validation-html .toy-strip").count() >= 2  # validation samples, its renderer
        browser.close()
