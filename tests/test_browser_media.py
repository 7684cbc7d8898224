"""The app in a real browser, as a user would -- music and video (players, per-dimension votes by key,
guidance, training). Its own app process (tests/browser_kit.py), beside tests/test_browser.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.browser_kit import (
    act,
    choose,
    fill,
    generate,
    radio,
    shot,
    store_of,
    switch_compare,
    tab,
    text,
    train_and_wait,
    wait_text,
    wait_value,
)

pytestmark = pytest.mark.slow

if os.environ.get("PALATE_SKIP_BROWSER") == "1":
    pytest.skip("PALATE_SKIP_BROWSER=1", allow_module_level=True)


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
    fill(page, "setting-video-guide_min_noise", "0.5")
    page.locator("#setting-video-guide_visual input[type=number]").fill("20")
    page.locator("#setting-video-guide_visual input[type=number]").press("Enter")
    status = generate(page, n=2, seed=0, prompt=VIDEO_PROMPT)
    assert "Done 2 of 2" in status, status
    with store_of(app) as s:
        guided = s.list_generations(modality="video")[-1]
        assert guided.params["guide"]["weights"] == {"visual": 20.0} and guided.params["guide"]["reward"] == "my-eyes"
        assert guided.params["guide"]["min_noise"] == 0.5 and 0 < guided.params["guide_steps"] < 20
    wait_text(page, "cand-video-1", "guided visual 20 (noise >= 0.5)")
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
