"""The Palate web app (Gradio Blocks): generate, judge, train, compare, export.

The page only wires widgets to the services in ``app`` (``generation``,
``services``, ``runs``); it never touches model code. Every handler turns an
error into a readable message on the page and the server keeps serving.
"""
from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app import services
from app.generation import DEFAULT_MODELS, default_model, generate_candidates
from app.runs import RunQueue, log_tail, progress, read_metrics
from storage import Generation, Store

MAX_N = 8
MODES = ("Best of N", "A/B", "Rank")
IMAGE_METHODS = ["diffusion-dpo", "mapo", "rankdpo", "flow-dpo", "flow-rwr"]
TEXT_METHODS = ["simpo", "dpo", "ipo", "hinge", "conservative-dpo", "irepo"]
# Starting points per method (measured ones are in the README): lr, beta
METHOD_DEFAULTS = {
    "diffusion-dpo": (5e-4, 2000.0), "rankdpo": (5e-4, 2000.0), "mapo": (2.5e-4, 0.1),
    "flow-dpo": (5e-4, 2000.0), "flow-rwr": (5e-4, 1.0),
    "simpo": (1e-4, 2.0), "dpo": (3e-4, 0.5), "ipo": (1e-4, 0.1), "hinge": (1e-4, 0.1),
    "conservative-dpo": (3e-4, 0.5), "irepo": (3e-4, 0.5),
}
# Presets: method, steps, learning rate, beta, LoRA rank (the README's measured starting points)
PRESETS = {
    "image": {
        "Diffusion-DPO · 100 steps": ("diffusion-dpo", 100, 5e-4, 2000.0, 8),
        "Diffusion-DPO · quick, 20 steps": ("diffusion-dpo", 20, 5e-4, 2000.0, 8),
        "RankDPO · 100 steps": ("rankdpo", 100, 5e-4, 2000.0, 8),
        "MaPO · 100 steps": ("mapo", 100, 2.5e-4, 0.1, 8),
        "Diffusion-DPO · long, 300 steps, rank 16": ("diffusion-dpo", 300, 2.5e-4, 2000.0, 16),
    },
    "text": {
        "SimPO · 100 steps": ("simpo", 100, 1e-4, 2.0, 8),
        "SimPO · quick, 20 steps": ("simpo", 20, 1e-4, 2.0, 8),
        "DPO · 100 steps": ("dpo", 100, 3e-4, 0.5, 8),
        "IPO · 100 steps": ("ipo", 100, 1e-4, 0.1, 8),
        "iREPO · 100 steps (needs repeated votes)": ("irepo", 100, 3e-4, 0.5, 8),
    },
}

SHORTCUTS = """
**Keyboard** (outside text fields): **1-8** pick that candidate (Best of N) or add it to the ranking (Rank) ·
**Enter** save the ranking · A/B: **a** / **b** better, **t** tie, **x** both bad, **s** skip ·
**u** undo the last judgment · Compare, blind: **←** left, **→** right, **↓** tie.
"""

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
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    const typing = t && ((t.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'range'].includes(t.type))
      || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable);
    if (typing) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    let done = false;
    if (/^[1-8]$/.test(k)) done = click('choose-' + k);
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
.cand-text textarea, .ab-text textarea { font-family: ui-monospace, monospace; font-size: 13px; }
#run-progress .bar { height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; }
#run-progress .fill { height: 100%; background: #2563eb; }
"""


def _err(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    return f"**Error:** {msg}"


def _opt_int(v: Any, name: str = "value") -> int | None:
    if v is None or str(v).strip() == "":
        return None
    try:
        f = float(str(v).strip())
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {v!r}") from None
    if f != int(f):
        raise ValueError(f"{name} must be a whole number, got {v!r}")
    return int(f)


def _opt_float(v: Any, name: str = "value") -> float | None:
    if v is None or str(v).strip() == "":
        return None
    try:
        return float(str(v).strip())
    except ValueError:
        raise ValueError(f"{name} must be a number, got {v!r}") from None


def _opt(label: str, **kw: Any) -> gr.Textbox:
    """An optional number: empty means the default."""
    return gr.Textbox(value="", label=label, placeholder=kw.pop("placeholder", "default"), max_lines=1, **kw)


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
        if self.preload:
            threading.Thread(target=self._preload, args=("image", DEFAULT_MODELS["image"]), daemon=True).start()

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

    # -- rendering -------------------------------------------------------------------
    def render(self, gen: Generation | None, label: str | None = None) -> list[Any]:
        """Updates for one candidate slot (image, text, audio, video): the modality picks the player."""
        hide = gr.update(visible=False, value=None)
        if gen is None:
            return [hide, hide, hide, hide]
        path = str(self.store.media_file(gen))
        label = label or f"#{gen.id} · seed {gen.seed}"
        if gen.mime.startswith("image/"):
            return [gr.update(visible=True, value=path, label=label), hide, hide, hide]
        if gen.mime.startswith("text/"):
            text = self.store.media_bytes(gen).decode("utf-8", errors="replace")
            tokens = gen.params.get("response_tokens")
            label += f" · {tokens} tokens" if tokens is not None and not label.startswith(("Left", "Right")) else ""
            return [hide, gr.update(visible=True, value=text, label=label), hide, hide]
        if gen.mime.startswith("audio/"):
            return [hide, hide, gr.update(visible=True, value=path, label=label), hide]
        if gen.mime.startswith("video/"):
            return [hide, hide, hide, gr.update(visible=True, value=path, label=label)]
        return [hide, gr.update(visible=True, value=f"({gen.mime}: {path})", label=label), hide, hide]

    def slots(self, gens: list[Generation | None]) -> list[Any]:
        out = []
        for i in range(MAX_N):
            g = gens[i] if i < len(gens) else None
            out.append(gr.update(visible=g is not None))
            out.extend(self.render(g))
        return out

    # -- generate & judge ------------------------------------------------------------
    def counter(self, sess: dict) -> str:
        if not sess.get("model"):
            return ""
        n = services.judgment_count(self.store, sess["modality"], sess["model"])
        return f"**{n}** judgment{'s' if n != 1 else ''} collected for `{sess['model']}`"

    def ab_view(self, sess: dict) -> list[Any]:
        pairs, k = sess.get("pairs", []), sess.get("pair_idx", 0)
        if not pairs:
            return [gr.update(value="")] + self.render(None) + self.render(None)
        if k >= len(pairs):
            return ([gr.update(value=f"All {len(pairs)} pairs judged: generate new candidates for more.")]
                    + self.render(None) + self.render(None))
        i, j = pairs[k]
        gens = sess["gens"]
        return ([gr.update(value=f"Pair {k + 1} of {len(pairs)}: #{i + 1} (A) vs #{j + 1} (B)")]
                + self.render(gens[i]) + self.render(gens[j]))

    def rank_view(self, sess: dict) -> str:
        order = sess.get("order", [])
        if not sess.get("ids"):
            return ""
        idx = {gid: n + 1 for n, gid in enumerate(sess["ids"])}
        if not order:
            return "Ranking: click candidates (or press 1-8) best first; **Save ranking** (Enter) stores it."
        return "Ranking so far: " + " > ".join(f"#{idx[g]}" for g in order)

    def generate(self, modality, model, prompt, negative, n, seed, steps, guidance, width, height, temperature, top_p,
                 max_tokens, sess):
        """Generator: candidates appear as they finish (each is stored the moment it exists)."""
        sess = dict(sess or {})

        def emit(status, gens):
            return [status, self.counter(sess), sess] + self.slots(gens) + self.ab_view(sess) + [self.rank_view(sess)]

        try:
            prompt = (prompt or "").strip()
            if not prompt:
                raise ValueError("write a prompt first")
            n = _opt_int(n, "N") or 0
            if not 2 <= n <= MAX_N:
                raise ValueError(f"N must be between 2 and {MAX_N}, got {n}")
            model = (model or "").strip() or default_model(modality)
            if modality == "image":
                params = {k: v for k, v in (("steps", _opt_int(steps)), ("guidance", _opt_float(guidance)),
                                             ("width", _opt_int(width)), ("height", _opt_int(height)))
                          if v is not None}
            else:
                params = {k: v for k, v in (("temperature", _opt_float(temperature)), ("top_p", _opt_float(top_p)),
                                             ("max_tokens", _opt_int(max_tokens))) if v is not None}
            base_seed = _opt_int(seed, "seed")
            if base_seed is None:
                base_seed = random.randrange(2**31 - MAX_N)
        except Exception as e:
            yield emit(_err(e), sess.get("gens", []))
            return
        sess = {"modality": modality, "model": model, "prompt": prompt, "ids": [], "gens": [], "pairs": [],
                "pair_idx": 0, "order": [], "history": []}
        gens: list[Generation] = []
        state = self.loading.get(model)
        first = f"Loading `{model}` and generating…" if state != "ready" else "Generating…"
        yield emit(f"{first} 0 of {n}", gens)
        for i in range(n):
            try:
                g = generate_candidates(self.store, modality=modality, model=model, prompt=prompt, n=1,
                                        seeds=[base_seed + i], negative_prompt=(negative or None) if modality == "image"
                                        else None, params=params)[0]
            except Exception as e:
                self.loading.pop(model, None) if self.loading.get(model) == "loading" else None
                sess["ids"] = [x.id for x in gens]
                sess["gens"] = gens
                sess["pairs"] = services.pair_schedule(len(gens)) if len(gens) >= 2 else []
                yield emit(_err(e) + (f" ({len(gens)} candidate(s) were stored)" if gens else ""), gens)
                return
            self.loading[model] = "ready"
            gens.append(g)
            sess["ids"], sess["gens"] = [x.id for x in gens], gens
            done = i + 1 == n
            if done:
                sess["pairs"] = services.pair_schedule(n)
            yield emit(f"{'Done' if done else 'Generating…'} {i + 1} of {n} (seeds {base_seed}–{base_seed + n - 1})", gens)

    def choose(self, i: int, mode: str, sess: dict):
        sess = dict(sess or {})
        try:
            ids = sess.get("ids") or []
            if i >= len(ids):
                raise ValueError(f"there is no candidate #{i + 1}")
            if len(ids) < 2:
                raise ValueError("generate at least two candidates first")
            if mode == "Best of N":
                jid = services.pick_best(self.store, ids, ids[i])
                sess["history"] = sess.get("history", []) + [{"jid": jid}]
                msg = f"Stored: #{i + 1} is the best of {len(ids)} (judgment {jid})."
            elif mode == "Rank":
                order = list(sess.get("order", []))
                if ids[i] in order:
                    raise ValueError(f"#{i + 1} is already ranked; Reset to start over")
                order.append(ids[i])
                sess["order"] = order
                msg = f"#{i + 1} ranked {len(order)}."
                if len(order) == len(ids):
                    jid = services.rank(self.store, order, ids)
                    sess["history"] = sess.get("history", []) + [{"jid": jid, "order": order}]
                    sess["order"] = []
                    msg = f"Stored the ranking of all {len(ids)} (judgment {jid})."
            else:
                raise ValueError("in A/B mode use the A, B, tie, both bad and skip buttons")
        except Exception as e:
            return _err(e), self.counter(sess), sess, self.rank_view(sess)
        return msg, self.counter(sess), sess, self.rank_view(sess)

    def save_ranking(self, sess: dict):
        sess = dict(sess or {})
        try:
            order = sess.get("order", [])
            jid = services.rank(self.store, order, sess.get("ids", []))
            sess["history"] = sess.get("history", []) + [{"jid": jid, "order": order}]
            sess["order"] = []
            msg = f"Stored the ranking (judgment {jid}): {len(order)} ranked, {len(sess['ids']) - len(order)} unranked."
        except Exception as e:
            return _err(e), self.counter(sess), sess, self.rank_view(sess)
        return msg, self.counter(sess), sess, self.rank_view(sess)

    def reset_ranking(self, sess: dict):
        sess = dict(sess or {})
        sess["order"] = []
        return "Ranking cleared.", self.counter(sess), sess, self.rank_view(sess)

    def ab(self, choice: str, sess: dict):
        sess = dict(sess or {})
        try:
            pairs, k = sess.get("pairs", []), sess.get("pair_idx", 0)
            if not pairs:
                raise ValueError("generate candidates first")
            if k >= len(pairs):
                raise ValueError("every pair of these candidates is judged; generate new ones")
            i, j = pairs[k]
            if choice == "skip":
                msg = f"Skipped pair {k + 1}."
                sess["history"] = sess.get("history", []) + [{"jid": None, "pair_idx": k}]
            else:
                jid = services.vote(self.store, sess["ids"][i], sess["ids"][j], choice)
                sess["history"] = sess.get("history", []) + [{"jid": jid, "pair_idx": k}]
                said = {"a": f"#{i + 1} better", "b": f"#{j + 1} better", "tie": "tie", "both-bad": "both bad"}[choice]
                msg = f"Stored: {said} (judgment {jid})."
            sess["pair_idx"] = k + 1
        except Exception as e:
            return [_err(e), self.counter(sess), sess] + self.ab_view(sess)
        return [msg, self.counter(sess), sess] + self.ab_view(sess)

    def undo(self, sess: dict):
        sess = dict(sess or {})
        try:
            history = list(sess.get("history", []))
            if history:
                last = history.pop()
                sess["history"] = history  # popped first: an entry that fails (deleted meanwhile) is not retried
                if last.get("jid") is not None:
                    services.undo(self.store, last["jid"])
                if "pair_idx" in last:
                    sess["pair_idx"] = last["pair_idx"]
                msg = f"Undone: judgment {last['jid']} deleted." if last.get("jid") else "Undone: skip."
                sess["history"] = history
            else:
                jid = services.undo(self.store)
                msg = f"Undone: judgment {jid} deleted."
        except Exception as e:
            return [_err(e), self.counter(sess), sess] + self.ab_view(sess) + [self.rank_view(sess)]
        return [msg, self.counter(sess), sess] + self.ab_view(sess) + [self.rank_view(sess)]

    # -- data -----------------------------------------------------------------------
    def data_tables(self, modality, model, text):
        try:
            return self._data_tables(modality, model, text)
        except Exception as e:
            return pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), _err(e)

    def _data_tables(self, modality, model, text):
        modality = modality if modality in ("image", "text", "audio", "video") else None
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
            item_id = _opt_int(item_id)
            if item_id is None:
                raise ValueError("enter the id to delete")
            if what == "judgment":
                self.store.delete_judgment(item_id)
                msg = f"Deleted judgment {item_id}."
            else:
                n = self.store.delete_generation(item_id)
                msg = f"Deleted candidate {item_id} and the {n} judgment(s) that involved it."
        except Exception as e:
            return (*self.data_tables(modality, model, text)[:4], _err(e))
        return (*self.data_tables(modality, model, text)[:4], msg)

    def import_file(self, file, fmt):
        from storage.exchange import import_dataset

        try:
            if not file:
                raise ValueError("choose a file to import first")
            path = file if isinstance(file, str) else file.name
            r = import_dataset(self.store, path, fmt=fmt)
            skipped = "".join(f", {n} skipped ({why})" for why, n in r.skipped.items())
            return (f"Imported {r.judgments} judgment(s) and {r.generations_created} new candidate(s) from "
                    f"{r.rows} rows ({r.format}){skipped}.")
        except Exception as e:
            return _err(e)

    def export_file(self, fmt, modality, prompt_style="auto"):
        try:
            out_dir = self.data_dir / "exports"
            out_dir.mkdir(parents=True, exist_ok=True)
            ext = "jsonl" if fmt == "trl-jsonl" else "parquet"
            out = out_dir / f"palate-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}.{ext}"
            mod = modality if modality in ("image", "text", "audio", "video") else None
            r = services.export_dataset(self.store, out, fmt=fmt, modality=mod, prompt_style=prompt_style or "auto")
            style = f" (prompts {r.prompt_style})" if r.prompt_style else ""
            skipped = "".join(f"; left out {n} {why}" for why, n in r.skipped.items())
            return gr.update(value=str(r.path), visible=True), f"Wrote {r.rows} rows to `{r.path}`{style}{skipped}."
        except Exception as e:
            return gr.update(value=None), _err(e)

    # -- train ----------------------------------------------------------------------
    def submit_run(self, modality, method, steps, lr, beta, rank, batch, accum, seed, derivation, model, init, valcount,
                   nll=None, score_reduction="auto", nll_per_token=False):
        try:
            settings = {"steps": _opt_int(steps), "lr": _opt_float(lr), "beta": _opt_float(beta),
                        "lora_rank": _opt_int(rank), "batch_size": _opt_int(batch), "grad_accum": _opt_int(accum),
                        "seed": _opt_int(seed), "derivation": derivation or None,
                        "model": (model or "").strip() or None, "init_adapter": (str(init).strip() or None) if init
                        else None, "validation_count": _opt_int(valcount)}
            nll = _opt_float(nll, "NLL weight")
            if nll:
                settings["loss_kwargs"] = {"nll": nll}
                if nll_per_token:
                    settings["nll_reduction"] = "token"
            if score_reduction and score_reduction != "auto":
                settings["score_reduction"] = score_reduction
            if settings["lora_rank"] is not None:
                settings["lora_alpha"] = float(settings["lora_rank"])
            model_name = settings["model"] or default_model(modality)
            pairs = self.store.preference_pairs(modality=modality, model=model_name)
            if not pairs:
                raise ValueError(f"no training pairs for `{model_name}` yet: judge some candidates first")
            run = self.queue.submit(modality=modality, method=method, settings=settings)
            ahead = [r.id for r in self.store.list_runs() if r.id < run.id and r.status in ("queued", "running")]
            where = (f"queued behind run {ahead[0]}" + (f" and {len(ahead) - 1} more" if len(ahead) > 1 else "")
                     if ahead else "starting")
            return f"Run {run.id} ({method}, {len(pairs)} pairs): {where}.", gr.update(value=run.id)
        except Exception as e:
            return _err(e), gr.update()

    def runs_table(self):
        rows = []
        for r in reversed(self.store.list_runs()):
            p = progress(r)
            rows.append({"id": r.id, "status": r.status, "method": r.method, "model": r.base_model,
                         "step": f"{p['step']}/{p['total'] or '?'}", "created": r.created_at[:19],
                         "error": (r.error or "")[:120]})
        return pd.DataFrame(rows, columns=["id", "status", "method", "model", "step", "created", "error"])

    def run_view(self, run_id):
        try:
            return self._run_view(run_id)
        except Exception as e:
            return (gr.update(), f"<div id='run-progress'>{_err(e)}</div>", gr.update(), gr.update(), gr.update(),
                    gr.update(), gr.update())

    def _run_view(self, run_id):
        empty = pd.DataFrame({"step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64")})
        runs = self.store.list_runs()
        ids = [r.id for r in runs]
        choices = gr.update(choices=[str(i) for i in reversed(ids)])
        rid = _opt_int(run_id, "run") if run_id not in (None, "") else (ids[-1] if ids else None)
        if rid is None or rid not in ids:
            return choices, "No run yet.", empty, empty, empty, "", self.runs_table()
        run = self.store.get_run(rid)
        p = progress(run)
        eta = f", about {int(p['eta'] // 60)} min {int(p['eta'] % 60)} s left" if p["eta"] is not None else ""
        pct = int(100 * p["fraction"])
        status = run.status + (f" — {run.error}" if run.error and run.status in ("failed", "cancelled") else "")
        html = (f"<div id='run-progress'><b>Run {rid}</b> · {run.method} on <code>{run.base_model}</code> · "
                f"<span class='run-status'>{status}</span><br>step {p['step']} of {p['total'] or '?'} ({pct}%{eta})"
                f"<div class='bar'><div class='fill' style='width:{pct}%'></div></div></div>")
        recs = read_metrics(run.run_dir)
        plots = []
        for key in ("loss", "reward_accuracy", "margin"):
            df = pd.DataFrame([{"step": r["step"], "value": r[key]} for r in recs if key in r])
            plots.append(df if len(df) else empty)
        return (choices, html, *plots, log_tail(run.run_dir, 15), self.runs_table())

    def _shown_run(self, run_id) -> int:
        """The run the page shows: the one chosen, else the latest."""
        rid = _opt_int(run_id, "run")
        if rid is None:
            runs = self.store.list_runs()
            if not runs:
                raise ValueError("there is no run yet")
            rid = runs[-1].id
        return rid

    def cancel_run(self, run_id):
        try:
            return self.queue.cancel(self._shown_run(run_id))
        except Exception as e:
            return _err(e)

    def resume_run(self, run_id):
        try:
            return self.queue.resume(self._shown_run(run_id))
        except Exception as e:
            return _err(e)

    # -- compare --------------------------------------------------------------------
    def adapter_choices(self, modality=None) -> list[tuple[str, str]]:
        out = []
        for a in self.store.list_adapters(modality=modality if modality in ("image", "text") else None):
            out.append((f"{a.id}: {a.name} ({a.method}, {a.metadata.get('examples', '?')} examples)", str(a.id)))
        return out

    def _compare_model(self, modality: str, model: str, adapter_ids: list[int]) -> str:
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
        try:
            ids = [int(a) for a in (adapter_ids or [])]
            plist = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
            n = int(n_seeds or 0)
            if not 1 <= n <= 8:
                raise ValueError("seeds per prompt must be between 1 and 8")
            model = self._compare_model(modality, model, ids)
            rows = services.compare_generate(self.store, modality=modality, model=model, adapter_ids=ids,
                                             prompts=plist, seeds=list(range(n)))
        except Exception as e:
            return _err(e), gr.update(value=[], visible=False), gr.update(visible=False)
        names = {a.id: a.name for a in self.store.list_adapters()}
        if modality == "image":
            items = []
            for r in rows:
                items.append((str(self.store.media_file(r["base"])), f"base · seed {r['seed']} · {r['prompt'][:40]}"))
                for aid, g in r["adapters"].items():
                    items.append((str(self.store.media_file(g)), f"{names[aid]} · seed {r['seed']}"))
            return (f"Same prompts and seeds: base, then {', '.join(names[i] for i in ids)} (left to right).",
                    gr.update(value=items, visible=True, columns=1 + len(ids)), gr.update(visible=False))
        table = []
        for r in rows:
            row = {"prompt": r["prompt"], "seed": r["seed"],
                   "base": self.store.media_bytes(r["base"]).decode(errors="replace")}
            for aid, g in r["adapters"].items():
                row[names[aid]] = self.store.media_bytes(g).decode(errors="replace")
            table.append(row)
        return ("Same prompts and seeds, side by side.", gr.update(visible=False),
                gr.update(value=pd.DataFrame(table), visible=True))

    def blind_start(self, modality, model, adapter_id, prompts, n_seeds):
        try:
            if not adapter_id:
                raise ValueError("choose the adapter to judge blind")
            plist = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
            n = int(n_seeds or 0)
            if not 1 <= n <= 8:
                raise ValueError("seeds per prompt must be between 1 and 8")
            aid = int(adapter_id)
            model = self._compare_model(modality, model, [aid])
            rows = services.compare_generate(self.store, modality=modality, model=model, adapter_ids=[aid],
                                             prompts=plist, seeds=list(range(n)))
            trials = services.blind_trials(rows, aid)
            bs = {"trials": [t.__dict__ for t in trials], "k": 0, "adapter_id": aid}
        except Exception as e:
            return [_err(e), {}] + self.blind_view({})
        return [f"{len(trials)} blind comparisons: which is better? The sides are shuffled.", bs] + self.blind_view(bs)

    def blind_view(self, bs: dict) -> list[Any]:
        trials, k = bs.get("trials", []), bs.get("k", 0)
        if not trials or k >= len(trials):
            tally = self.win_rate_text(bs.get("adapter_id")) if bs.get("adapter_id") else ""
            return [gr.update(value=tally)] + self.render(None) + self.render(None)
        t = trials[k]
        left, right = self.store.get_generations([t["left"], t["right"]])
        label = f"Comparison {k + 1} of {len(trials)} — prompt: *{t['prompt']}*"
        # no ids on the blind sides: the base candidates are generated first and would give it away
        return [gr.update(value=label)] + self.render(left, "Left") + self.render(right, "Right")

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
            t = trials[k]
            services.blind_vote(self.store, services.Trial(**t), choice)
            bs["k"] = k + 1
            msg = f"Recorded ({choice})." + (" That was the last one." if bs["k"] >= len(trials) else "")
        except Exception as e:
            return [_err(e), bs] + self.blind_view(bs)
        return [msg, bs] + self.blind_view(bs)

    # -- adapters -------------------------------------------------------------------
    def adapters_table(self):
        try:
            return self._adapters_table()
        except Exception as e:
            gr.Warning(str(e))
            return pd.DataFrame(), gr.update()

    def _adapters_table(self):
        rows = []
        for a in self.store.list_adapters():
            rows.append({"id": a.id, "name": a.name, "modality": a.modality, "base model": a.base_model,
                         "method": a.method, "run": a.run_id, "examples": a.metadata.get("examples"),
                         "steps": a.metadata.get("steps"), "created": a.created_at[:19], "path": a.path})
        cols = ["id", "name", "modality", "base model", "method", "run", "examples", "steps", "created", "path"]
        return pd.DataFrame(rows, columns=cols), gr.update(choices=[str(r["id"]) for r in rows], value=None)

    def adapter_detail(self, adapter_id):
        try:
            if not adapter_id:
                return (gr.update(choices=[], value=None), gr.update(value=[], visible=False),
                        gr.update(value=None, visible=False), "")
            a = self.store.get_adapter(int(adapter_id))
            formats = services.export_formats(a.modality)
            samples = services.validation_samples(self.store, a.run_id) if a.run_id is not None else []
            imgs = [(str(self.store.media_file(g)), f"{stage} · {g.prompt[:40]} · seed {g.seed}")
                    for g, stage in samples if g.mime.startswith("image/")]
            texts = [{"stage": stage, "prompt": g.prompt, "seed": g.seed,
                      "answer": self.store.media_bytes(g).decode(errors="replace")}
                     for g, stage in samples if g.mime.startswith("text/")]
            info = (f"Adapter {a.id} `{a.name}`: {a.method} on `{a.base_model}`, run {a.run_id}, "
                    f"{a.metadata.get('examples', '?')} training examples, {a.metadata.get('steps', '?')} steps. "
                    f"Validation samples: {len(samples)} (start and end, same seeds).")
            return (gr.Dropdown(choices=formats, value=formats[0]), gr.update(value=imgs, visible=bool(imgs)),
                    gr.update(value=pd.DataFrame(texts), visible=bool(texts)), info)
        except Exception as e:
            return gr.update(), gr.update(), gr.update(), _err(e)

    def export_adapter(self, adapter_id, fmt):
        try:
            if not adapter_id:
                raise ValueError("choose an adapter")
            path, diff = services.export_adapter(self.store, int(adapter_id), fmt)
            download = services.zip_folder(path)
            check = f"; loaded back: same output as the trained adapter (max difference {diff:.1e})" if diff is not None \
                else ""
            return gr.update(value=str(download), visible=True), f"Exported to `{path}`{check}."
        except Exception as e:
            return gr.update(value=None), _err(e)

    def delete_adapter(self, adapter_id):
        try:
            if not adapter_id:
                raise ValueError("choose an adapter")
            self.store.delete_adapter(int(adapter_id))
            return f"Adapter {adapter_id} removed from the list (its files stay in the run folder)."
        except Exception as e:
            return _err(e)

    # -- the page ---------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="Palate") as demo:
            gr.Markdown("# Palate\nGenerate candidates, judge them, train on your judgments, compare, export.")
            top = gr.Markdown(self.status_line(), elem_id="top-status")
            with gr.Tabs():
                with gr.Tab("Generate & rank", id="generate"):
                    self._generate_tab()
                with gr.Tab("Data", id="data") as data_tab:
                    self._data_tab(data_tab)
                with gr.Tab("Train", id="train"):
                    self._train_tab()
                with gr.Tab("Compare", id="compare") as compare_tab:
                    self._compare_tab(compare_tab)
                with gr.Tab("Adapters", id="adapters") as adapters_tab:
                    self._adapters_tab(adapters_tab)
            gr.Timer(2.0).tick(self.status_line, outputs=top, show_progress="hidden")
        return demo

    def _candidate_slot(self, prefix: str, i: int | str, css: str) -> list[Any]:
        img = gr.Image(type="filepath", interactive=False, visible=False, height=200, elem_id=f"{prefix}-img-{i}",
                       elem_classes=["cand-img"])
        txt = gr.Textbox(interactive=False, visible=False, lines=10, max_lines=24, elem_id=f"{prefix}-text-{i}",
                         elem_classes=[css])
        aud = gr.Audio(interactive=False, visible=False, elem_id=f"{prefix}-audio-{i}")
        vid = gr.Video(interactive=False, visible=False, elem_id=f"{prefix}-video-{i}")
        return [img, txt, aud, vid]

    def _generate_tab(self) -> None:
        sess = gr.State({})
        with gr.Row():
            modality = gr.Radio(["image", "text"], value="image", label="Modality", elem_id="modality")
            model = gr.Textbox(value=DEFAULT_MODELS["image"], label="Model (built-in alias, hub id or local folder)",
                               elem_id="model", scale=2)
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="two small red circles on a blue background",
                                elem_id="prompt", scale=3)
            negative = gr.Textbox(label="Negative prompt", elem_id="negative", scale=2)
        with gr.Row():
            n = gr.Number(value=4, label="N candidates (2-8)", precision=0, elem_id="n")
            seed = _opt("Seed (empty: random)", elem_id="seed", placeholder="random")
            gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        with gr.Accordion("Settings (empty = the model's default)", open=False):
            with gr.Row(visible=True) as image_settings:
                steps = _opt("Steps")
                guidance = _opt("Guidance")
                width = _opt("Width")
                height = _opt("Height")
            with gr.Row(visible=False) as text_settings:
                temperature = _opt("Temperature")
                top_p = _opt("Top-p")
                max_tokens = _opt("Max tokens")
        status = gr.Markdown("", elem_id="gen-status")
        with gr.Row():
            mode = gr.Radio(list(MODES), value="Best of N", label="Judging mode", elem_id="judge-mode")
            counter = gr.Markdown("", elem_id="counter")
            undo_btn = gr.Button("Undo last judgment (u)", elem_id="undo-btn", size="sm")
        slot_outputs, choose_btns = [], []
        with gr.Column(visible=True) as grid:
            for row in range(2):
                with gr.Row():
                    for i in range(row * 4, row * 4 + 4):
                        with gr.Column(visible=False, min_width=160, elem_classes=["cand-col"]) as col:
                            comps = self._candidate_slot("cand", i + 1, "cand-text")
                            btn = gr.Button(f"★ {i + 1}", elem_id=f"choose-{i + 1}", size="sm")
                        slot_outputs += [col] + comps
                        choose_btns.append(btn)
        with gr.Column(visible=False) as ab_area:
            ab_label = gr.Markdown("", elem_id="ab-label")
            with gr.Row():
                with gr.Column():
                    left = self._candidate_slot("ab", "a", "ab-text")
                with gr.Column():
                    right = self._candidate_slot("ab", "b", "ab-text")
            with gr.Row():
                ab_btns = {c: gr.Button(lbl, elem_id=eid) for c, lbl, eid in (
                    ("a", "A is better (a)", "ab-a"), ("b", "B is better (b)", "ab-b"), ("tie", "Tie (t)", "ab-tie"),
                    ("both-bad", "Both bad (x)", "ab-bad"), ("skip", "Skip (s)", "ab-skip"))}
        with gr.Row(visible=False) as rank_area:
            rank_md = gr.Markdown("", elem_id="rank-order")
            rank_save = gr.Button("Save ranking (Enter)", elem_id="rank-save", size="sm")
            rank_reset = gr.Button("Reset", elem_id="rank-reset", size="sm")
        gr.Markdown(SHORTCUTS)

        def on_modality(m):
            return (gr.update(value=DEFAULT_MODELS.get(m, "")), gr.update(visible=m == "image"),
                    gr.update(visible=m == "image"), gr.update(visible=m == "text"))

        modality.change(on_modality, modality, [model, negative, image_settings, text_settings])

        def on_mode(m):
            labels = {"Best of N": "★ {}", "Rank": "rank {}", "A/B": "{}"}[m]
            return ([gr.update(visible=m == "A/B"), gr.update(visible=m == "Rank")]
                    + [gr.update(value=labels.format(i + 1), visible=m != "A/B") for i in range(MAX_N)])

        mode.change(on_mode, mode, [ab_area, rank_area] + choose_btns)
        ab_outputs = [ab_label] + left + right
        gen_btn.click(self.generate, [modality, model, prompt, negative, n, seed, steps, guidance, width, height,
                                      temperature, top_p, max_tokens, sess],
                      [status, counter, sess] + slot_outputs + ab_outputs + [rank_md], show_progress="minimal")
        for i, btn in enumerate(choose_btns):
            btn.click(lambda md, s, i=i: self.choose(i, md, s), [mode, sess], [status, counter, sess, rank_md],
                      show_progress="hidden")
        rank_save.click(self.save_ranking, sess, [status, counter, sess, rank_md], show_progress="hidden")
        rank_reset.click(self.reset_ranking, sess, [status, counter, sess, rank_md], show_progress="hidden")
        for choice, btn in ab_btns.items():
            btn.click(lambda s, c=choice: self.ab(c, s), sess, [status, counter, sess] + ab_outputs,
                      show_progress="hidden")
        undo_btn.click(self.undo, sess, [status, counter, sess] + ab_outputs + [rank_md], show_progress="hidden")

    def _data_tab(self, tab) -> None:
        with gr.Row():
            f_mod = gr.Dropdown(["all", "image", "text", "audio", "video"], value="all", label="Modality")
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
            del_id = _opt("id", elem_id="delete-id")
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
        refresh.click(self.data_tables, ins, outs)
        tab.select(self.data_tables, ins, outs)
        del_btn.click(self.delete, [what, del_id] + ins, [stats, gens, judg, proms, del_msg])
        imp_btn.click(self.import_file, [up, imp_fmt], imp_msg).then(self.data_tables, ins, outs)
        exp_btn.click(self.export_file, [exp_fmt, f_mod, exp_style], [exp_file, exp_msg])

    def _train_tab(self) -> None:
        with gr.Row():
            t_mod = gr.Radio(["image", "text"], value="image", label="Modality", elem_id="train-modality")
            t_method = gr.Dropdown(IMAGE_METHODS, value="diffusion-dpo", label="Method", elem_id="train-method")
            t_preset = gr.Dropdown(list(PRESETS["image"]), value=None, label="Preset (sets the five fields)",
                                   elem_id="train-preset")
        with gr.Row():
            t_steps = gr.Number(value=100, precision=0, label="Steps", elem_id="train-steps")
            t_lr = gr.Number(value=5e-4, label="Learning rate", elem_id="train-lr")
            t_beta = gr.Number(value=2000.0, label="Beta", elem_id="train-beta")
            t_rank = gr.Number(value=8, precision=0, label="LoRA rank", elem_id="train-rank")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                t_batch = _opt("Batch size (default 4)")
                t_accum = _opt("Gradient accumulation (default 1)")
                t_seed = _opt("Seed (default 0)")
                t_deriv = gr.Dropdown(["all", "best-vs-rest"], value="all", label="Rankings → pairs")
            with gr.Row():
                t_model = gr.Textbox(label="Base model (empty: the built-in one)")
                t_init = gr.Textbox(label="Continue from adapter (id or folder)")
                t_val = _opt("Validation prompts (default 4)")
                t_nll = _opt("NLL weight on the chosen answer (language models; 0 = off)", elem_id="train-nll")
            with gr.Row():
                t_reduce = gr.Dropdown(
                    ["auto", "sum", "mean"], value="auto", label="Language models: answer score",
                    info="sum or per-token mean of the log-probabilities (auto: mean for SimPO; IPO with mean "
                         "is TRL's IPO)", elem_id="train-score-reduction")
                t_nll_tok = gr.Checkbox(False, label="NLL per token (TRL's rpo_alpha)", elem_id="train-nll-per-token")
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        t_msg = gr.Markdown("", elem_id="train-msg")
        gr.Markdown("### Runs (one trains at a time; the others wait in the queue)")
        with gr.Row():
            run_sel = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="run-select")
            cancel = gr.Button("Cancel", variant="stop", elem_id="run-cancel")
            resume = gr.Button("Resume", elem_id="run-resume")
        prog = gr.HTML("", elem_id="run-progress-box")
        with gr.Row():
            loss_plot = gr.LinePlot(x="step", y="value", title="Loss", height=220, elem_id="loss-plot")
            acc_plot = gr.LinePlot(x="step", y="value", title="Reward accuracy", height=220, y_lim=[0, 1],
                                   elem_id="acc-plot")
            margin_plot = gr.LinePlot(x="step", y="value", title="Reward margin", height=220, elem_id="margin-plot")
        log = gr.Textbox(label="Log (tail)", lines=8, interactive=False, elem_id="run-log")
        runs = gr.Dataframe(interactive=False, elem_id="runs-table")

        def on_mod(m):
            methods = IMAGE_METHODS if m == "image" else TEXT_METHODS
            lr, beta = METHOD_DEFAULTS[methods[0]]
            return gr.update(choices=methods, value=methods[0]), lr, beta

        def on_method(m):
            lr, beta = METHOD_DEFAULTS.get(m, (1e-4, None))
            return lr, beta

        t_mod.change(on_mod, t_mod, [t_method, t_lr, t_beta])
        t_mod.change(lambda m: gr.update(choices=list(PRESETS[m]), value=None), t_mod, t_preset)

        def on_preset(m, p):
            if not p:
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            method, steps, lr, beta, rank = PRESETS[m][p]
            return method, steps, lr, beta, rank
        t_method.input(on_method, t_method, [t_lr, t_beta])
        t_preset.input(on_preset, [t_mod, t_preset], [t_method, t_steps, t_lr, t_beta, t_rank])
        start.click(self.submit_run, [t_mod, t_method, t_steps, t_lr, t_beta, t_rank, t_batch, t_accum, t_seed,
                                      t_deriv, t_model, t_init, t_val, t_nll, t_reduce, t_nll_tok], [t_msg, run_sel])
        view_out = [run_sel, prog, loss_plot, acc_plot, margin_plot, log, runs]
        run_sel.change(self.run_view, run_sel, view_out, show_progress="hidden")
        cancel.click(self.cancel_run, run_sel, t_msg)
        resume.click(self.resume_run, run_sel, t_msg)
        gr.Timer(1.0).tick(self.run_view, run_sel, view_out, show_progress="hidden")

    def _compare_tab(self, tab) -> None:
        with gr.Row():
            c_mod = gr.Radio(["image", "text"], value="image", label="Modality", elem_id="compare-modality")
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
        bs = gr.State({})
        b_label = gr.Markdown("", elem_id="blind-label")
        with gr.Row():
            with gr.Column():
                b_left = self._candidate_slot("blind", "left", "ab-text")
            with gr.Column():
                b_right = self._candidate_slot("blind", "right", "ab-text")
        with gr.Row():
            bl = gr.Button("Left is better (←)", elem_id="blind-left")
            bt = gr.Button("Tie (↓)", elem_id="blind-tie")
            br = gr.Button("Right is better (→)", elem_id="blind-right")

        def refresh(m):
            ch = self.adapter_choices(m)
            return gr.update(choices=ch, value=[]), gr.update(choices=ch, value=ch[-1][1] if ch else None)

        c_mod.change(refresh, c_mod, [c_adapters, b_adapter])
        c_mod.change(lambda: [gr.update(value=[], visible=False), gr.update(value=None, visible=False), "", {}, ""]
                     + self.render(None) + self.render(None), None, [c_gallery, c_table, c_msg, bs, b_label]
                     + b_left + b_right)
        c_refresh.click(refresh, c_mod, [c_adapters, b_adapter])
        tab.select(refresh, c_mod, [c_adapters, b_adapter])
        c_btn.click(self.compare, [c_mod, c_model, c_adapters, c_prompts, c_seeds], [c_msg, c_gallery, c_table])
        b_outs = [c_msg, bs, b_label] + b_left + b_right
        b_btn.click(self.blind_start, [c_mod, c_model, b_adapter, c_prompts, c_seeds], b_outs)
        for btn, choice in ((bl, "left"), (bt, "tie"), (br, "right")):
            btn.click(lambda s, c=choice: self.blind_choose(c, s), bs, b_outs, show_progress="hidden")

    def _adapters_tab(self, tab) -> None:
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
        a_texts = gr.Dataframe(visible=False, interactive=False, wrap=True)
        a_refresh.click(self.adapters_table, None, [a_table, a_id])
        tab.select(self.adapters_table, None, [a_table, a_id])
        a_id.change(self.adapter_detail, a_id, [a_fmt, a_gallery, a_texts, a_info])
        a_export.click(self.export_adapter, [a_id, a_fmt], [a_file, a_msg])
        a_delete.click(self.delete_adapter, a_id, a_msg).then(self.adapters_table, None, [a_table, a_id])


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
