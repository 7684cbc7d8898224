"""Compare: the base model and one or two adapters on the same prompts and seeds, side by side, and a
blind mode whose choices give the tuned model's win rate. Views follow the modality's display kind:
images in a gallery, text answers in a table, anything else as an HTML table of players."""
from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from app import services
from app.generation import default_model
from modalities import registry
from modalities.spec import View

from .common import candidate_slot, cell_html, err, html_table, modality_choices, plays_audio, render


class CompareTab:
    def __init__(self, ui):
        self.ui = ui
        self.store = ui.store

    def adapter_choices(self, modality=None) -> list[tuple[str, str]]:
        out = []
        for a in self.store.list_adapters(modality=modality or None):
            out.append((f"{a.id}: {a.name} ({a.method}, {a.metadata.get('examples', '?')} examples)", str(a.id)))
        return out

    def _model(self, modality: str, model: str, adapter_ids: list[int]) -> str:
        """The base model to compare on: the one typed, else the adapters' own base."""
        bases = {self.store.get_adapter(a).base_model for a in adapter_ids}
        model = (model or "").strip()
        if not model:
            if len(bases) > 1:
                raise ValueError(f"the adapters were trained on different base models ({', '.join(sorted(bases))})")
            model = bases.pop() if bases else default_model(modality)
        elif bases and bases != {model}:
            raise ValueError(f"adapter base model {', '.join(sorted(bases))} is not {model!r}: compare an adapter on "
                             "the model it was trained on")
        return model

    def compare(self, modality, model, adapter_ids, prompts, n_seeds):
        hidden = gr.update(visible=False)
        try:
            ids = [int(a) for a in (adapter_ids or [])]
            plist = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
            n = int(n_seeds or 0)
            if not 1 <= n <= 8:
                raise ValueError("seeds per prompt must be between 1 and 8")
            model = self._model(modality, model, ids)
            rows = services.compare_generate(self.store, modality=modality, model=model, adapter_ids=ids,
                                             prompts=plist, seeds=list(range(n)))
        except Exception as e:
            return err(e), gr.update(value=[], visible=False), hidden, hidden
        names = {a.id: a.name for a in self.store.list_adapters()}
        msg = f"Same prompts and seeds: base, then {', '.join(names[i] for i in ids)} (left to right)."
        display = registry.spec(modality).display
        if display == View.IMAGE:
            items = []
            for r in rows:
                items.append((str(self.store.media_file(r["base"])), f"base · seed {r['seed']} · {r['prompt'][:40]}"))
                for aid, g in r["adapters"].items():
                    items.append((str(self.store.media_file(g)), f"{names[aid]} · seed {r['seed']}"))
            return msg, gr.update(value=items, visible=True, columns=1 + len(ids)), hidden, hidden
        if display == View.TEXT:
            table = []
            for r in rows:
                row = {"prompt": r["prompt"], "seed": r["seed"],
                       "base": self.store.media_bytes(r["base"]).decode(errors="replace")}
                for aid, g in r["adapters"].items():
                    row[names[aid]] = self.store.media_bytes(g).decode(errors="replace")
                table.append(row)
            return msg, gr.update(visible=False), gr.update(value=pd.DataFrame(table), visible=True), hidden
        header = ["prompt", "seed", "base"] + [names[i] for i in ids]
        cells = [[r["prompt"], str(r["seed"]), cell_html(self.store, r["base"])]
                 + [cell_html(self.store, g) for g in r["adapters"].values()] for r in rows]
        return (msg, gr.update(visible=False), hidden,
                gr.update(value=html_table(header, cells, "compare-html-table"), visible=True))

    def blind_start(self, modality, model, adapter_id, prompts, n_seeds):
        try:
            if not adapter_id:
                raise ValueError("choose the adapter to judge blind")
            plist = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
            n = int(n_seeds or 0)
            if not 1 <= n <= 8:
                raise ValueError("seeds per prompt must be between 1 and 8")
            aid = int(adapter_id)
            model = self._model(modality, model, [aid])
            rows = services.compare_generate(self.store, modality=modality, model=model, adapter_ids=[aid],
                                             prompts=plist, seeds=list(range(n)))
            trials = services.blind_trials(rows, aid)
            bs = {"trials": [t.__dict__ for t in trials], "k": 0, "adapter_id": aid}
        except Exception as e:
            return [err(e), {}] + self.blind_view({})
        return [f"{len(trials)} blind comparisons: which is better? The sides are shuffled.", bs] + self.blind_view(bs)

    def blind_view(self, bs: dict) -> list[Any]:
        trials, k = bs.get("trials", []), bs.get("k", 0)
        if not trials or k >= len(trials):
            tally = self.win_rate_text(bs.get("adapter_id")) if bs.get("adapter_id") else ""
            return [gr.update(value=tally)] + render(self.store, None) + render(self.store, None)
        t = trials[k]
        left, right = self.store.get_generations([t["left"], t["right"]])
        label = f"Comparison {k + 1} of {len(trials)} — prompt: *{t['prompt']}*"
        # no ids on the blind sides: the base candidates are generated first and would give it away
        return [gr.update(value=label)] + render(self.store, left, "Left") + render(self.store, right, "Right")

    def win_rate_text(self, adapter_id) -> str:
        w = services.win_rate(self.store, int(adapter_id))
        if not w["n"]:
            return "No blind choices for this adapter yet."
        lo, hi = w["ci95"]
        return (f"**Tuned model's win rate: {w['win_rate']:.0%}** (95% CI {lo:.0%}–{hi:.0%}) over {w['n']} blind "
                f"choices: {w['wins']} wins, {w['ties']} ties, {w['losses']} losses (ties count half).")

    def blind_choose(self, choice, bs):
        bs = dict(bs or {})
        try:
            trials, k = bs.get("trials", []), bs.get("k", 0)
            if not trials or k >= len(trials):
                raise ValueError("start a blind comparison first")
            services.blind_vote(self.store, services.Trial(**trials[k]), choice)
            bs["k"] = k + 1
            msg = f"Recorded ({choice})." + (" That was the last one." if bs["k"] >= len(trials) else "")
        except Exception as e:
            return [err(e), bs] + self.blind_view(bs)
        return [msg, bs] + self.blind_view(bs)

    def build(self, tab) -> None:
        mods = modality_choices()
        with gr.Row():
            c_mod = gr.Radio(mods, value=mods[0], label="Modality", elem_id="compare-modality")
            c_model = gr.Textbox(label="Base model (empty: the adapter's own)")
            c_refresh = gr.Button("Refresh adapters", size="sm", elem_id="compare-refresh")
        c_prompts = gr.Textbox(label="Prompts (one per line)", lines=3, elem_id="compare-prompts")
        c_seeds = gr.Number(value=2, precision=0, label="Seeds per prompt (0, 1, ...)", elem_id="compare-seeds")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Side by side")
                c_adapters = gr.Dropdown([], multiselect=True, max_choices=2, label="Adapters (one or two)",
                                         elem_id="compare-adapters")
                c_btn = gr.Button("Compare", elem_id="compare-btn")
            with gr.Column():
                gr.Markdown("### Blind (your choices are stored as blind-comparison judgments, never trained on)")
                b_adapter = gr.Dropdown([], label="Adapter", elem_id="blind-adapter")
                b_btn = gr.Button("Start blind comparison", elem_id="blind-start")
        c_msg = gr.Markdown("", elem_id="compare-msg")
        c_gallery = gr.Gallery(visible=False, height=360, object_fit="contain", elem_id="compare-gallery")
        c_table = gr.Dataframe(visible=False, interactive=False, wrap=True, elem_id="compare-table")
        c_html = gr.HTML(visible=False, elem_id="compare-html")
        bs = gr.State({})
        b_label = gr.Markdown("", elem_id="blind-label")
        with gr.Row():
            with gr.Column():
                b_left = candidate_slot("blind", "left", "ab-text")
            with gr.Column():
                b_right = candidate_slot("blind", "right", "ab-text")
        with gr.Row():
            bl = gr.Button("Left is better (←)", elem_id="blind-left")
            bt = gr.Button("Tie (↓)", elem_id="blind-tie")
            br = gr.Button("Right is better (→)", elem_id="blind-right")
            b_play = gr.Button("▶ left then right (p)", elem_id="blind-play-both", visible=plays_audio(mods[0]))
            b_play.click(None, None, None, js="() => { window.palatePlayBoth('blind-audio-left', 'blind-audio-right'); }")

        def refresh(m):
            ch = self.adapter_choices(m)
            return gr.update(choices=ch, value=[]), gr.update(choices=ch, value=ch[-1][1] if ch else None)

        c_mod.change(refresh, c_mod, [c_adapters, b_adapter])
        c_mod.change(lambda m: gr.update(visible=plays_audio(m)), c_mod, b_play)
        c_mod.change(lambda: [gr.update(value=[], visible=False), gr.update(value=None, visible=False),
                              gr.update(value="", visible=False), "", {}, ""]
                     + render(self.store, None) + render(self.store, None), None,
                     [c_gallery, c_table, c_html, c_msg, bs, b_label] + b_left + b_right)
        c_refresh.click(refresh, c_mod, [c_adapters, b_adapter])
        tab.select(refresh, c_mod, [c_adapters, b_adapter])
        c_btn.click(self.compare, [c_mod, c_model, c_adapters, c_prompts, c_seeds], [c_msg, c_gallery, c_table, c_html])
        b_outs = [c_msg, bs, b_label] + b_left + b_right
        b_btn.click(self.blind_start, [c_mod, c_model, b_adapter, c_prompts, c_seeds], b_outs)
        for btn, choice in ((bl, "left"), (bt, "tie"), (br, "right")):
            btn.click(lambda s, c=choice: self.blind_choose(c, s), bs, b_outs, show_progress="hidden")
