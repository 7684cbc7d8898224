"""Data: the stored prompts, candidates and judgments, stats, deleting, and dataset import/export."""
from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from app import services

from .common import err, modality_choices, opt_box, opt_int

ALL = "all"


class DataTab:
    def __init__(self, ui):
        self.ui = ui
        self.store = ui.store

    def modality_filter(self) -> list[str]:
        """The registered modalities and any other the store holds (an imported one, say)."""
        return [ALL] + list(dict.fromkeys(modality_choices() + self.store.modalities_seen()))

    def tables(self, modality, model, text):
        try:
            return self._tables(modality, model, text)
        except Exception as e:
            return pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), err(e)

    def _tables(self, modality, model, text):
        modality = None if modality in (None, "", ALL) else modality
        stats = self.store.stats(modality=modality, model=model or None)
        srows = [{"modality": s["modality"], "model": s["model"], "prompts": s["prompts"],
                  "candidates": s["generations"], "votes": s["pairwise_votes"],
                  "decisive": s["choices"]["a"] + s["choices"]["b"], "ties": s["choices"]["tie"],
                  "both bad": s["choices"]["both-bad"], "rankings": s["rankings"],
                  "training pairs": s["training_pairs"],
                  "agreement": "-" if s["agreement"] is None else
                  f"{s['agreement']:.0%} of {s['pairs_judged_twice_or_more']}"} for s in stats]
        gens = services.browse(self.store, modality=modality, model=model or None, text=text or "")
        judg = services.judgments(self.store, modality=modality, model=model or None, text=text or "")
        prom = services.prompts(self.store, modality=modality, model=model or None, text=text or "")
        return (pd.DataFrame(srows), pd.DataFrame(gens), pd.DataFrame(judg), pd.DataFrame(prom),
                f"{len(prom)} prompt(s), {len(gens)} candidate(s), {len(judg)} judgment(s) shown (newest first, at "
                "most 200 each)")

    def delete(self, what, item_id, modality, model, text):
        try:
            item_id = opt_int(item_id)
            if item_id is None:
                raise ValueError("enter the id to delete")
            if what == "judgment":
                self.store.delete_judgment(item_id)
                msg = f"Deleted judgment {item_id}."
            else:
                n = self.store.delete_generation(item_id)
                msg = f"Deleted candidate {item_id} and the {n} judgment(s) that involved it."
        except Exception as e:
            return (*self.tables(modality, model, text)[:4], err(e))
        return (*self.tables(modality, model, text)[:4], msg)

    def import_file(self, file, fmt):
        from modalities import registry
        from storage.exchange import import_dataset

        try:
            if not file:
                raise ValueError("choose a file to import first")
            path = file if isinstance(file, str) else file.name
            r = import_dataset(self.store, path, fmt=fmt, modalities=registry.media_families())
            skipped = "".join(f", {n} skipped ({why})" for why, n in r.skipped.items())
            return (f"Imported {r.judgments} judgment(s) and {r.generations_created} new candidate(s) from "
                    f"{r.rows} rows ({r.format}){skipped}.")
        except Exception as e:
            return err(e)

    def export_file(self, fmt, modality, prompt_style="auto"):
        try:
            out_dir = self.ui.data_dir / "exports"
            out_dir.mkdir(parents=True, exist_ok=True)
            ext = "jsonl" if fmt == "trl-jsonl" else "parquet"
            out = out_dir / f"palate-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}.{ext}"
            mod = None if modality in (None, "", ALL) else modality
            r = services.export_dataset(self.store, out, fmt=fmt, modality=mod, prompt_style=prompt_style or "auto")
            style = f" (prompts {r.prompt_style})" if r.prompt_style else ""
            skipped = "".join(f"; left out {n} {why}" for why, n in r.skipped.items())
            return gr.update(value=str(r.path), visible=True), f"Wrote {r.rows} rows to `{r.path}`{style}{skipped}."
        except Exception as e:
            return gr.update(value=None), err(e)

    def build(self, tab) -> None:
        with gr.Row():
            f_mod = gr.Dropdown(self.modality_filter(), value=ALL, label="Modality", elem_id="data-modality")
            f_model = gr.Textbox(label="Model (exact; empty: all)")
            f_text = gr.Textbox(label="Prompt contains")
            refresh = gr.Button("Refresh", elem_id="data-refresh")
        info = gr.Markdown("", elem_id="data-info")
        gr.Markdown("### Stats per modality and model")
        stats = gr.Dataframe(interactive=False, elem_id="stats-table")
        with gr.Tabs():
            with gr.Tab("Prompts"):
                proms = gr.Dataframe(interactive=False, elem_id="prompts-table")
            with gr.Tab("Candidates"):
                gens = gr.Dataframe(interactive=False, elem_id="gens-table")
            with gr.Tab("Judgments"):
                judg = gr.Dataframe(interactive=False, elem_id="judgments-table")
        with gr.Row():
            what = gr.Radio(["judgment", "candidate"], value="judgment", label="Delete a")
            del_id = opt_box("id", elem_id="delete-id")
            del_btn = gr.Button("Delete", variant="stop", elem_id="delete-btn")
        del_msg = gr.Markdown("", elem_id="delete-msg")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Import a dataset")
                up = gr.File(label="Pick-a-Pic-style Parquet or TRL-style JSONL/Parquet",
                             file_types=[".parquet", ".jsonl"], elem_id="import-file")
                imp_fmt = gr.Dropdown(["auto", "pickapic", "trl-jsonl", "trl-parquet"], value="auto", label="Format")
                imp_btn = gr.Button("Import", elem_id="import-btn")
                imp_msg = gr.Markdown("", elem_id="import-msg")
            with gr.Column():
                gr.Markdown("### Export a dataset")
                exp_fmt = gr.Dropdown(["pickapic", "trl-jsonl", "trl-parquet"], value="pickapic", label="Format")
                exp_style = gr.Dropdown(
                    ["auto", "conversational", "templated"], value="auto", label="TRL prompts",
                    info="conversational: chat messages, TRL applies the model's template; templated: the prompt "
                         "as the model saw it; auto: conversational when the models have chat templates")
                exp_btn = gr.Button("Export", elem_id="export-data-btn")
                exp_file = gr.File(label="Download", visible=False, interactive=False)
                exp_msg = gr.Markdown("", elem_id="export-data-msg")
        ins = [f_mod, f_model, f_text]
        outs = [stats, gens, judg, proms, info]
        refresh.click(self.tables, ins, outs)
        tab.select(self.tables, ins, outs)
        tab.select(lambda m: gr.update(choices=self.modality_filter(), value=m), f_mod, f_mod)
        del_btn.click(self.delete, [what, del_id] + ins, [stats, gens, judg, proms, del_msg])
        imp_btn.click(self.import_file, [up, imp_fmt], imp_msg).then(self.tables, ins, outs)
        exp_btn.click(self.export_file, [exp_fmt, f_mod, exp_style], [exp_file, exp_msg])
