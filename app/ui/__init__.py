"""The Palate web app (Gradio Blocks): generate, judge, train, compare, export.

One module per tab (``generate``, ``data``, ``train``, ``rewards``, ``compare``, ``adapters``); each only wires
widgets to the services in ``app`` (``generation``, ``services``, ``runs``) and never touches model
code. Modality choices, settings, candidate players, views, methods and export formats come from the
registries, so a new modality shows up with no edit here. Every handler turns an error into a readable
message on the page and the server keeps serving.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import gradio as gr

from app.generation import default_model
from app.runs import RunQueue
from modalities import registry
from storage import Store

from .adapters import AdaptersTab
from .compare import CompareTab
from .data import DataTab
from .generate import GenerateTab
from .rewards import RewardsTab
from .train import TrainTab

KEYS_JS = """
<script>
(() => {
  const visible = (el) => el && el.offsetParent !== null && !el.disabled;
  const click = (id) => {
    const root = document.getElementById(id);
    if (!root) return false;
    const el = root.tagName === 'BUTTON' ? root : root.querySelector('button');
    if (!visible(el)) return false;
    el.click();
    return true;
  };
  // audio candidates: the players' own play/pause buttons (one plays at a time), and "A then B"
  const playButton = (id) => {
    const root = document.getElementById(id);
    return visible(root) ? root.querySelector('button.play-pause-button') : null;
  };
  const playing = (b) => !!b && b.getAttribute('aria-label') === 'Pause';
  const stopAll = (keep) => document.querySelectorAll('button.play-pause-button').forEach((b) => {
    if (b !== keep && playing(b)) b.click();
  });
  const toggle = (id) => {
    const b = playButton(id);
    if (!b) return false;
    stopAll(b);
    b.click();
    return true;
  };
  let chain = null;
  // A, then B when A ends. A player ignores play until its audio has loaded, so each is pressed again
  // every two seconds until it plays (up to 30 s).
  window.palatePlayBoth = (a, b) => {
    const first = playButton(a), second = playButton(b);
    if (!first || !second) return false;
    if (chain) clearInterval(chain);
    stopAll(null);
    let current = first, started = false, waited = 0;
    const end = () => { clearInterval(chain); chain = null; };
    first.click();
    chain = setInterval(() => {
      waited += 150;
      if (playing(current)) { started = true; return; }
      if (started) {
        if (current === second) { end(); return; }
        current = second; started = false; waited = 0;
        second.click();
        return;
      }
      if (waited >= 30000) end();
      else if (waited % 2100 === 0) current.click();
    }, 150);
    return true;
  };
  const pair = () => (visible(document.getElementById('blind-audio-left'))
    ? ['blind-audio-left', 'blind-audio-right'] : ['ab-audio-a', 'ab-audio-b']);
  // video candidates: every player loops, muted; the players of one view (the candidates, the A/B pair,
  // the blind pair) start together, play and pause together, and are kept in step
  const videoGroups = [['ab-video-a', 'ab-video-b'], ['blind-video-left', 'blind-video-right'],
    [1, 2, 3, 4, 5, 6, 7, 8].map((i) => 'cand-video-' + i)];
  const videosOf = (ids) => ids.map((id) => document.getElementById(id)).filter(visible)
    .map((root) => root.querySelector('video')).filter(Boolean);
  const attach = (v, ids) => {
    v.loop = true;
    v.muted = true;
    if (v.dataset.palate === v.currentSrc) return false;
    v.dataset.palate = v.currentSrc;
    if (!v.dataset.palateEvents) {
      v.dataset.palateEvents = '1';
      v.addEventListener('play', () => videosOf(ids).forEach((o) => {
        if (o !== v && o.paused) { o.currentTime = v.currentTime; o.play().catch(() => {}); }
      }));
      v.addEventListener('pause', () => videosOf(ids).forEach((o) => { if (o !== v && !o.paused) o.pause(); }));
    }
    return true;
  };
  setInterval(() => {
    for (const ids of videoGroups) {
      const vids = videosOf(ids);
      let fresh = false;
      vids.forEach((v) => { if (attach(v, ids)) fresh = true; });
      if (!vids.length) continue;
      if (fresh) vids.forEach((v) => { v.currentTime = 0; v.play().catch(() => {}); });
      const lead = vids[0];
      if (!lead.paused) vids.slice(1).forEach((v) => {
        if (Math.abs(v.currentTime - lead.currentTime) > 0.15) v.currentTime = lead.currentTime;
      });
    }
  }, 250);
  window.palateToggleVideos = () => {
    for (const ids of videoGroups) {
      const vids = videosOf(ids);
      if (vids.length < 1) continue;
      if (vids.some((v) => !v.paused)) vids.forEach((v) => v.pause());
      else vids.forEach((v) => { v.currentTime = vids[0].currentTime; v.play().catch(() => {}); });
      return true;
    }
    return false;
  };
  // per-dimension votes: digits 1-9 press the visible dimension rows' buttons (row 1: A, B, tie = 1, 2, 3; ...)
  const dimensionButton = (k) => {
    const buttons = [...document.querySelectorAll('[id^="ab-dim-"]')]
      .filter((el) => /-(a|b|tie)$/.test(el.id))
      .map((el) => (el.tagName === 'BUTTON' ? el : el.querySelector('button'))).filter(visible);
    const b = buttons[k - 1];
    if (!b) return false;
    b.click();
    return true;
  };
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    const typing = t && ((t.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'range'].includes(t.type))
      || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable);
    if (typing) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    let done = false;
    if (e.shiftKey && /^Digit[1-8]$/.test(e.code)) done = toggle('cand-audio-' + e.code.slice(5));
    else if (k === 'q') done = toggle(pair()[0]);
    else if (k === 'w') done = toggle(pair()[1]);
    else if (k === 'p') done = window.palatePlayBoth(...pair()) || window.palateToggleVideos();
    else if (/^[1-9]$/.test(k)) done = click('choose-' + k) || dimensionButton(Number(k));
    else if (k === 'Enter') done = click('rank-save');
    else if (k === 'a') done = click('ab-a');
    else if (k === 'b') done = click('ab-b');
    else if (k === 't') done = click('ab-tie');
    else if (k === 'x') done = click('ab-bad');
    else if (k === 's') done = click('ab-skip');
    else if (k === 'u') done = click('undo-btn');
    else if (k === 'ArrowLeft') done = click('blind-left');
    else if (k === 'ArrowRight') done = click('blind-right');
    else if (k === 'ArrowDown') done = click('blind-tie');
    if (done) e.preventDefault();
  });
})();
</script>
"""

CSS = """
.cand-col { flex: 0 0 calc(25% - 12px) !important; }
#compare-gallery img, #validation-gallery img { image-rendering: pixelated; }
.cand-img img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.cand-video video { image-rendering: pixelated; width: 100%; height: 220px; object-fit: contain; background: #111; }
.cand-text textarea, .ab-text textarea { font-family: ui-monospace, monospace; font-size: 13px; }
.cell-text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; max-width: 420px; }
.compare-html-table td, .validation-html-table td { vertical-align: top; padding: 4px 8px; }
#run-progress .bar { height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; }
#run-progress .fill { height: 100%; background: #2563eb; }
"""




class PalateUI:
    def __init__(self, data_dir: str | Path | None, *, preload: bool = True):
        self.store = Store.open(data_dir)
        self.data_dir = self.store.data_dir
        self.queue = RunQueue(self.data_dir)
        self.loading: dict[str, str] = {}  # model -> "loading" | "ready" | error message
        self.preload = preload

    # -- start-up ------------------------------------------------------------------
    def start_background(self) -> None:
        self.queue.start()
        if self.preload:  # the default models of the modalities that ask for it, in the background
            for m in registry.with_spec():
                if registry.spec(m).preload and registry.spec(m).default_model:
                    threading.Thread(target=self._preload, args=(m, default_model(m)), daemon=True).start()

    def _preload(self, modality: str, model: str) -> None:
        from app.generation import device_lock, get_adapter

        self.loading[model] = "loading"
        try:
            with device_lock(None):  # as a generation does: never while a run takes the GPU
                get_adapter(self.store, modality, model)
            self.loading[model] = "ready"
        except Exception as e:  # shown in the page; generation will say it again
            self.loading[model] = f"failed: {e}"

    def status_line(self) -> str:
        parts = [f"data: `{self.data_dir}`"]
        for model, state in self.loading.items():
            parts.append(f"{model}: {'loading…' if state == 'loading' else state}")
        run = self.queue.running_run()
        if run is not None:
            parts.append(f"training: run {run}")
        return " · ".join(parts)

    # -- the page ---------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="Palate") as demo:
            gr.Markdown("# Palate\nGenerate candidates, judge them, train on your judgments, compare, export.")
            top = gr.Markdown(self.status_line(), elem_id="top-status")
            with gr.Tabs():
                with gr.Tab("Generate & rank", id="generate"):
                    GenerateTab(self).build()
                with gr.Tab("Data", id="data") as data_tab:
                    DataTab(self).build(data_tab)
                with gr.Tab("Train", id="train"):
                    TrainTab(self).build()
                with gr.Tab("Rewards", id="rewards") as rewards_tab:
                    RewardsTab(self).build(rewards_tab)
                with gr.Tab("Compare", id="compare") as compare_tab:
                    CompareTab(self).build(compare_tab)
                with gr.Tab("Adapters", id="adapters") as adapters_tab:
                    AdaptersTab(self).build(adapters_tab)
            gr.Timer(2.0).tick(self.status_line, outputs=top, show_progress="hidden")
        return demo


# ---------------------------------------------------------------------------
# launch
# ---------------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_auth(auth: str | None, token: str | None = None):
    """Gradio's ``auth``: (user, password), or a check that accepts any user name with the token."""
    token = token or os.environ.get("PALATE_TOKEN")
    auth = auth or os.environ.get("PALATE_AUTH")
    if token and auth:
        raise ValueError("give --auth or --token, not both")
    if token:
        if len(token) < 12:
            raise ValueError("--token must be at least 12 characters")
        import hmac

        return lambda _user, password: hmac.compare_digest(str(password), token)
    if not auth:
        return None
    if ":" not in auth:
        raise ValueError("--auth takes USER:PASSWORD")
    user, password = auth.split(":", 1)
    if not user or not password:
        raise ValueError("--auth takes USER:PASSWORD, both non-empty")
    return user, password


def launch(*, data_dir: str | None, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
           token: str | None = None, share: bool = False, preload: bool = True) -> None:
    credentials = parse_auth(auth, token)
    if (host not in LOOPBACK or share) and credentials is None:
        raise ValueError(f"serving beyond this machine ({'--share' if share else f'--host {host}'}) needs "
                         "--auth USER:PASSWORD or --token TOKEN (or PALATE_AUTH / PALATE_TOKEN): anyone who reaches "
                         "the port could read and delete your data")
    t0 = time.time()
    ui = PalateUI(data_dir, preload=preload)
    # uploads and Gradio's copies live under the data directory: nothing outside it is served
    os.environ.setdefault("GRADIO_TEMP_DIR", str(ui.data_dir / "cache" / "gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = ui.build()
    ui.start_background()
    for note in ui.queue.notes:
        print(f"[palate] {note}", flush=True)
    demo.queue(default_concurrency_limit=1)
    print(f"[palate] data directory: {ui.data_dir}", flush=True)
    # the file route serves candidates and exports; never the database or the run folders
    allowed = [str(ui.data_dir / "media"), str(ui.data_dir / "exports")]
    blocked = [str(ui.data_dir / n) for n in ("palate.db", "palate.db-wal", "palate.db-shm", "runs")]
    demo.launch(server_name=host, server_port=port, auth=credentials, share=share, allowed_paths=allowed,
                blocked_paths=blocked,
                prevent_thread_lock=True, quiet=True, head=KEYS_JS, css=CSS, show_error=True)
    print(f"[palate] serving on http://{host}:{port} (ready {time.time() - t0:.1f} s after start; Ctrl-C stops)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[palate] stopping; a training run in progress goes on and is picked up at the next start",
              flush=True)
    finally:
        ui.queue.stop()
        demo.close()
