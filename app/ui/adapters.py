"""Adapters: the trained adapters, their validation samples (start and end of the run, same seeds),
export in the formats of their modality (loaded back and checked), and removal from the list."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from app import services
from modalities import registry
from modalities.spec import View

from .common import cell_html, display_of, err, html_table


class AdaptersTab:
    def __init__(self, ui):
        self.ui = ui
        self.store = ui.store

    def table(self):
        try:
            rows = []
            for a in self.store.list_adapters():
                rows.append({"id": a.id, "name": a.name, "modality": a.modality, "base model": a.base_model,
                             "method": a.method, "run": a.run_id, "examples": a.metadata.get("examples"),
                             "steps": a.metadata.get("steps"), "created": a.created_at[:19], "path": a.path})
            cols = ["id", "name", "modality", "base model", "method", "run", "examples", "steps", "created", "path"]
            return pd.DataFrame(rows, columns=cols), gr.update(choices=[str(r["id"]) for r in rows], value=None)
        except Exception as e:
            gr.Warning(str(e))
            return pd.DataFrame(), gr.update()

    def detail(self, adapter_id):
        hidden = gr.update(value=None, visible=False)
        try:
            if not adapter_id:
                return gr.update(choices=[], value=None), gr.update(value=[], visible=False), hidden, hidden, ""
            a = self.store.get_adapter(int(adapter_id))
            formats = services.export_formats(a.modality)
            samples = services.validation_samples(self.store, a.run_id) if a.run_id is not None else []
            info = (f"Adapter {a.id} `{a.name}`: {a.method} on `{a.base_model}`, run {a.run_id}, "
                    f"{a.metadata.get('examples', '?')} training examples, {a.metadata.get('steps', '?')} steps. "
                    f"Validation samples: {len(samples)} (start and end, same seeds).")
            display = registry.spec(a.modality).display if a.modality in registry.with_spec() else None
            imgs = [(str(self.store.media_file(g)), f"{stage} · {g.prompt[:40]} · seed {g.seed}")
                    for g, stage in samples if display_of(g) == View.IMAGE]
            texts = [{"stage": stage, "prompt": g.prompt, "seed": g.seed,
                      "answer": self.store.media_bytes(g).decode(errors="replace")}
                     for g, stage in samples if display_of(g) == View.TEXT]
            others = [[stage, g.prompt, str(g.seed), cell_html(self.store, g)] for g, stage in samples
                      if display_of(g) not in (View.IMAGE, View.TEXT)]
            return (gr.Dropdown(choices=formats, value=formats[0]), gr.update(value=imgs, visible=bool(imgs)),
                    gr.update(value=pd.DataFrame(texts), visible=bool(texts)),
                    gr.update(value=html_table(["stage", "prompt", "seed", "sample"], others, "validation-html-table"),
                              visible=bool(others)), info + ("" if display else " (its modality is not registered)"))
        except Exception as e:
            return gr.update(), gr.update(), gr.update(), gr.update(), err(e)

    def export(self, adapter_id, fmt):
        try:
            if not adapter_id:
                raise ValueError("choose an adapter")
            path, diff = services.export_adapter(self.store, int(adapter_id), fmt)
            download = services.zip_folder(path)
            check = f"; loaded back: same output as the trained adapter (max difference {diff:.1e})" if diff is not None \
                else ""
            return gr.update(value=str(download), visible=True), f"Exported to `{path}`{check}."
        except Exception as e:
            return gr.update(value=None), err(e)

    def delete(self, adapter_id):
        try:
            if not adapter_id:
                raise ValueError("choose an adapter")
            self.store.delete_adapter(int(adapter_id))
            return f"Adapter {adapter_id} removed from the list (its files stay in the run folder)."
        except Exception as e:
            return err(e)

    def build(self, tab) -> None:
        with gr.Row():
            a_refresh = gr.Button("Refresh", elem_id="adapters-refresh")
            a_id = gr.Dropdown([], label="Adapter", elem_id="adapter-select")
            a_fmt = gr.Dropdown([], label="Export format", elem_id="adapter-format")
            a_export = gr.Button("Export", variant="primary", elem_id="adapter-export")
            a_delete = gr.Button("Delete", variant="stop", elem_id="adapter-delete")
        a_msg = gr.Markdown("", elem_id="adapter-msg")
        a_file = gr.File(label="Download", visible=False, interactive=False, elem_id="adapter-file")
        a_table = gr.Dataframe(interactive=False, elem_id="adapters-table")
        a_info = gr.Markdown("", elem_id="adapter-info")
        a_gallery = gr.Gallery(label="Validation samples (start, end)", visible=False, columns=4, height=320,
                               object_fit="contain", elem_id="validation-gallery")
        a_texts = gr.Dataframe(visible=False, interactive=False, wrap=True, elem_id="validation-table")
        a_html = gr.HTML(visible=False, elem_id="validation-html")
        a_refresh.click(self.table, None, [a_table, a_id])
        tab.select(self.table, None, [a_table, a_id])
        a_id.change(self.detail, a_id, [a_fmt, a_gallery, a_texts, a_html, a_info])
        a_export.click(self.export, [a_id, a_fmt], [a_file, a_msg])
        a_delete.click(self.delete, a_id, a_msg).then(self.table, None, [a_table, a_id])
