"""Rewards: reward models learned from your votes (and the programmatic ones a modality offers).

Training is a run of the queue (``alignment.rewards.run``: the Train tab lists it, cancels and resumes
it): it reads the model's own features of every judged candidate (or a pretrained encoder's) and fits
a small head per dimension with Bradley-Terry with ties (``alignment.rewards``); this tab follows it."""
from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from alignment.rewards import service
from app.generation import default_model, generate_candidates, get_adapter

from .common import err, modality_choices, opt_box, opt_float, opt_int


class RewardsTab:
    def __init__(self, ui):
        self.ui = ui
        self.store = ui.store

    def table(self, modality):
        try:
            rows = service.offered(self.store, modality)
        except Exception as e:  # noqa: BLE001 - shown on the page
            return pd.DataFrame({"error": [str(e)]})
        return pd.DataFrame([{"name": r["name"], "kind": r["kind"], "dimensions": ", ".join(r["dimensions"]),
                              "about": r["about"]} for r in rows], columns=["name", "kind", "dimensions", "about"])

    def train(self, modality, model, name, folds, noise, hidden, epochs, backbone="", noise_aware=False, summary=False):
        """Queue the reward model's training as a run (the Train tab lists it, with cancel and resume) and
        follow it here until it ends."""
        try:
            settings = {"modality": modality, "model": (model or "").strip() or None, "name": (name or "").strip(),
                        "folds": opt_int(folds, "folds") or 5, "noise_level": opt_float(noise, "noise level"),
                        "hidden": opt_int(hidden, "hidden units") if str(hidden or "").strip() else 64,
                        "epochs": opt_int(epochs, "steps") or 300, "backbone": (backbone or "").strip() or None,
                        "noise_aware": bool(noise_aware), "summary": bool(summary)}
            run = self.ui.queue.submit_reward(settings)
        except Exception as e:  # noqa: BLE001 - shown on the page
            yield err(e), self.table(modality)
            return
        shown = None
        while True:
            run = self.store.get_run(run.id)
            if run.status == "completed":
                break
            if run.status in ("failed", "cancelled"):
                yield err(ValueError(f"run {run.id} {run.status}: {run.error}")), self.table(modality)
                return
            m = run.last_metrics or {}
            line = (f"Run {run.id} ({run.status}): step {run.step or 0} of {run.total_steps or '?'}"
                    + (f", {m['phase']}" if m.get("phase") else "") + " — cancel or resume it in the Train tab.")
            if line != shown:
                shown = line
                yield line, gr.update()
            time.sleep(0.5)
        m = run.last_metrics
        name, _, version = m["reward_model"].partition("@v")
        record = self.store.get_reward_model(name, int(version))
        m = record.metrics
        acc = m["heldout_accuracy"]
        summary = (f"**{record.label}** trained on {m['votes']} votes ({m['ties']} ties) over {m['candidates']} "
                   f"candidates: held-out pair accuracy **{'n/a' if acc is None else f'{acc:.1%}'}** "
                   f"({m['folds']}-fold over distinct pairs, {m['heldout_votes']} decided votes); "
                   f"{m['train_accuracy']:.1%} on its training votes. File: `{record.path}` (run {run.id}).")
        if len(record.dimensions) > 1:
            from app.rewards import per_dimension_text

            summary += f" Per dimension: {per_dimension_text(m)}."
        yield summary, self.table(modality)

    def names(self, modality) -> list[str]:
        try:
            return [r["name"] for r in service.offered(self.store, modality)]
        except Exception:  # noqa: BLE001 - an empty list; the table shows the error
            return []

    def label(self, modality, model, reward_name, prompts_text, k, seed, soft=False, variations="",
              progress=gr.Progress()):
        try:
            if not reward_name:
                raise ValueError("choose a reward model to label with")
            model = (model or "").strip() or default_model(modality)
            k = opt_int(k, "candidates per prompt") or 4
            if not 2 <= k <= 8:
                raise ValueError(f"candidates per prompt must be between 2 and 8, got {k}")
            first = opt_int(seed, "first seed") or 0
            prompts = [p for p in (prompts_text or "").splitlines() if p.strip()] or \
                self.store.judged_prompts(modality, model)
            n_var = opt_int(variations, "variations per prompt") or 0
            if not 0 <= n_var <= 20:
                raise ValueError(f"variations per prompt must be between 0 and 20, got {n_var}")
            prompts = service.prompts_with_variations(modality, prompts, n_var, first)
            adapter, lock = get_adapter(self.store, modality, model)
            reward = service.load(self.store, reward_name, modality, adapter)
            counter = iter(range(10**9))

            def generate(prompt: str):
                return generate_candidates(self.store, modality=modality, prompt=prompt, n=k, model=model,
                                           seed=first + next(counter) * k)

            done = service.label(self.store, reward, generate, prompts, lock=lock, soft=bool(soft),
                                 progress=lambda m: progress(0.0, desc=m))
            if soft:
                return (f"Stored **{len(done['judgments'])} soft votes** (every pair of {k} new candidates for "
                        f"{done['prompts']} prompts), judged by `{done['annotator']}` (an AI annotator; context "
                        f"`{done['context']}`): each vote's strength is the reward model's preference probability, "
                        f"the soft labels iREPO trains on.")
            return (f"Stored **{len(done['judgments'])} rankings** of {k} new candidates each, judged by "
                    f"`{done['annotator']}` (an AI annotator; context `{done['context']}`). They train like your own "
                    f"rankings (listwise methods use them whole); `--contexts collect` on the CLI leaves them out.")
        except Exception as e:  # noqa: BLE001 - shown on the page
            return err(e)

    def build(self, tab) -> None:
        mods = modality_choices()
        gr.Markdown("A reward model learns your taste from your votes: it reads the model's own features of each "
                    "judged candidate (a denoiser's at a noise level, a language model's hidden states) and fits "
                    "a small head with Bradley-Terry with ties. Its held-out pair accuracy tells how well it "
                    "predicts votes it has not seen.")
        with gr.Row():
            modality = gr.Dropdown(mods, value=mods[0], label="Modality", elem_id="reward-modality")
            model = gr.Textbox(value="", label="Model (whose candidates and features)",
                               placeholder=default_model(mods[0]), elem_id="reward-model")
            name = gr.Textbox(value="", label="Name", placeholder="my-taste", elem_id="reward-name")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                folds = opt_box("Folds (held-out accuracy)", placeholder="5", elem_id="reward-folds")
                noise = opt_box("Noise level (denoisers, 0..1)", placeholder="0.5", elem_id="reward-noise")
                hidden = opt_box("Hidden units (0: linear)", placeholder="64", elem_id="reward-hidden")
                epochs = opt_box("Steps", placeholder="300", elem_id="reward-epochs")
                noise_aware = gr.Checkbox(False, label="Noise-aware (scores noisy samples: SPO's step-aware model)",
                                          elem_id="reward-noise-aware")
                summary = gr.Checkbox(False, label="Summary features only (the clean sample's statistics; video: where "
                                      "things are and how they move) -- for a few dozen votes", elem_id="reward-summary")
            backbone = gr.Textbox(value="", label="Backbone: a pretrained encoder (CLIP or PickScore, SigLIP, CLAP: hub "
                                  "id or local folder); empty: the model's own features", elem_id="reward-backbone")
        go = gr.Button("Train reward model", variant="primary", elem_id="reward-train")
        status = gr.Markdown("", elem_id="reward-status")
        table = gr.Dataframe(value=self.table(mods[0]), interactive=False, wrap=True, elem_id="reward-table")
        gr.Markdown("### Label with a reward model\nGenerates K candidates for each prompt with the model above, "
                    "ranks them with the reward model (or an ensemble, `a+b`) and stores each ranking as the reward "
                    "model's judgment: synthetic rankings for listwise methods, next to your own votes.")
        with gr.Row():
            lab_reward = gr.Dropdown(self.names(mods[0]), label="Reward model", allow_custom_value=True,
                                     elem_id="label-reward")
            lab_k = opt_box("Candidates per prompt", placeholder="4", elem_id="label-k")
            lab_seed = opt_box("First seed", placeholder="0", elem_id="label-seed")
            lab_var = opt_box("Variations per prompt", placeholder="0", elem_id="label-variations")
            lab_soft = gr.Checkbox(False, label="Soft pairwise votes (preference probabilities, for iREPO) "
                                   "instead of rankings", elem_id="label-soft")
        lab_prompts = gr.Textbox(value="", lines=4, label="Prompts, one per line (empty: the prompts you judged)",
                                 elem_id="label-prompts")
        lab_go = gr.Button("Generate and label", elem_id="label-go")
        lab_status = gr.Markdown("", elem_id="label-status")

        def refresh(m):
            return self.table(m), gr.update(choices=self.names(m))

        go.click(self.train, [modality, model, name, folds, noise, hidden, epochs, backbone, noise_aware, summary],
                 [status, table]).then(
            refresh, modality, [table, lab_reward])
        lab_go.click(self.label, [modality, model, lab_reward, lab_prompts, lab_k, lab_seed, lab_soft, lab_var],
                     lab_status)
        modality.change(lambda m: (gr.update(placeholder=default_model(m)), *refresh(m)), modality,
                        [model, table, lab_reward])
        tab.select(refresh, modality, [table, lab_reward])
