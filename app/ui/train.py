"""Train: a run from the stored judgments, queued; its loss, reward accuracy and margin as it trains.

Methods, their starting learning rate and beta, and the presets come from the loss registry
(``alignment.methods``), filtered by the modality's score families."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from alignment.methods import LOSSES, methods_for
from app.generation import default_model
from app.runs import log_tail, progress, read_metrics
from modalities import registry

from .common import err, modality_choices, opt_box, opt_float, opt_int


def methods(modality: str) -> list[str]:
    return methods_for(registry.spec(modality).score_kinds, registry.spec(modality).capabilities)


def presets(modality: str) -> dict[str, tuple]:
    """Preset label -> (method, steps, lr, beta, rank), for the methods of the modality."""
    return {p.label: (m, p.steps, p.lr, p.beta, p.lora_rank) for m in methods(modality) for p in LOSSES[m].presets}


def takes_nll(method: str) -> bool:
    return "nll" in LOSSES[method].kwarg_help


def is_online(method: str) -> bool:
    return method in LOSSES and LOSSES[method].online


def steps_stochastically(method: str) -> bool:
    """Whether the method samples denoising trajectories (its reward model may then score noisy latents)."""
    return method in LOSSES and "stochastic-step" in LOSSES[method].requires


def parse_options(text: str | None) -> dict[str, float]:
    """``"pool=4, threshold=0.3"`` -> {"pool": 4.0, "threshold": 0.3} (a method's keyword arguments)."""
    out: dict[str, float] = {}
    for part in (text or "").replace("\n", ",").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ValueError(f"method options are KEY=NUMBER, separated by commas (e.g. pool=4, threshold=0.3); "
                             f"got {part.strip()!r}")
    return out


class TrainTab:
    def __init__(self, ui):
        self.ui = ui
        self.store = ui.store
        self.queue = ui.queue
        # every modality's training options, one flat list of fields
        self.options = [(m, s) for m in modality_choices() for s in registry.spec(m).train_options]

    def submit(self, modality, method, steps, lr, beta, rank, batch, accum, seed, derivation, model, init, valcount,
               dimension="overall", nll=None, score_reduction="auto", nll_per_token=False, reward_model=None,
               prompts_text="", method_options="", reward_mode="auto", *option_values):
        try:
            if method not in methods(modality):
                raise ValueError(f"{method} is not a method for {modality}; choose one of {', '.join(methods(modality))}")
            settings = {"steps": opt_int(steps), "lr": opt_float(lr), "beta": opt_float(beta),
                        "lora_rank": opt_int(rank), "batch_size": opt_int(batch), "grad_accum": opt_int(accum),
                        "seed": opt_int(seed), "derivation": derivation or None,
                        "model": (model or "").strip() or None, "init_adapter": (str(init).strip() or None) if init
                        else None, "validation_count": opt_int(valcount), "dimension": dimension or "overall"}
            nll = opt_float(nll, "NLL weight")
            if nll and takes_nll(method):
                settings["loss_kwargs"] = {"nll": nll}
                if nll_per_token:
                    settings["nll_reduction"] = "token"
            extra = parse_options(method_options)
            if extra:
                settings["loss_kwargs"] = {**settings.get("loss_kwargs", {}), **extra}
            if is_online(method):
                if not reward_model:
                    raise ValueError(f"{method} needs a reward model to judge its samples: choose one (a taste, or "
                                     "one trained on your votes in the Rewards tab)")
                settings["reward_model"] = reward_model
                settings["reward_mode"] = reward_mode or "auto"
                prompts = [line.strip() for line in (prompts_text or "").splitlines() if line.strip()]
                if prompts:
                    settings["prompts"] = prompts
            if score_reduction and score_reduction != "auto" and takes_nll(method):
                settings["score_reduction"] = score_reduction
            options = {s.name: v for (m, s), raw in zip(self.options, option_values)
                       if m == modality and (v := s.parse(raw)) is not None}
            if options:
                settings["modality_options"] = options
            if settings["lora_rank"] is not None:
                settings["lora_alpha"] = float(settings["lora_rank"])
            model_name = settings["model"] or default_model(modality)
            registry.spec(modality).check_dimension(settings["dimension"])
            if is_online(method):  # it samples its own pairs
                run = self.queue.submit(modality=modality, method=method, settings=settings)
                return f"Run {run.id} ({method}, judged by {reward_model}): queued.", gr.update(value=run.id)
            pairs = self.store.preference_pairs(modality=modality, model=model_name, dimension=settings["dimension"])
            if not pairs:
                about = "" if settings["dimension"] == "overall" else f" about {settings['dimension']}"
                raise ValueError(f"no training pairs{about} for `{model_name}` yet: judge some candidates first")
            run = self.queue.submit(modality=modality, method=method, settings=settings)
            ahead = [r.id for r in self.store.list_runs() if r.id < run.id and r.status in ("queued", "running")]
            where = (f"queued behind run {ahead[0]}" + (f" and {len(ahead) - 1} more" if len(ahead) > 1 else "")
                     if ahead else "starting")
            return f"Run {run.id} ({method}, {len(pairs)} pairs): {where}.", gr.update(value=run.id)
        except Exception as e:
            return err(e), gr.update()

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
            return (gr.update(), f"<div id='run-progress'>{err(e)}</div>", gr.update(), gr.update(), gr.update(),
                    gr.update(), gr.update())

    def _run_view(self, run_id):
        empty = pd.DataFrame({"step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64")})
        runs = self.store.list_runs()
        ids = [r.id for r in runs]
        choices = gr.update(choices=[str(i) for i in reversed(ids)])
        rid = opt_int(run_id, "run") if run_id not in (None, "") else (ids[-1] if ids else None)
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

    def shown_run(self, run_id) -> int:
        """The run the page shows: the one chosen, else the latest."""
        rid = opt_int(run_id, "run")
        if rid is None:
            runs = self.store.list_runs()
            if not runs:
                raise ValueError("there is no run yet")
            rid = runs[-1].id
        return rid

    def cancel(self, run_id):
        try:
            return self.queue.cancel(self.shown_run(run_id))
        except Exception as e:
            return err(e)

    def resume(self, run_id):
        try:
            return self.queue.resume(self.shown_run(run_id))
        except Exception as e:
            return err(e)

    def build(self) -> None:
        mods = modality_choices()
        first = methods(mods[0])[0]
        with gr.Row():
            t_mod = gr.Radio(mods, value=mods[0], label="Modality", elem_id="train-modality")
            t_method = gr.Dropdown(methods(mods[0]), value=first, label="Method", elem_id="train-method")
            t_preset = gr.Dropdown(list(presets(mods[0])), value=None, label="Preset (sets the five fields)",
                                   elem_id="train-preset")
        t_about = gr.Markdown(self.about(first), elem_id="train-about")
        with gr.Row():
            t_steps = gr.Number(value=100, precision=0, label="Steps", elem_id="train-steps")
            t_lr = gr.Number(value=LOSSES[first].default_lr, label="Learning rate", elem_id="train-lr")
            t_beta = gr.Number(value=LOSSES[first].default_beta, label="Beta", elem_id="train-beta")
            t_rank = gr.Number(value=8, precision=0, label="LoRA rank", elem_id="train-rank")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                t_batch = opt_box("Batch size (default 4)")
                t_accum = opt_box("Gradient accumulation (default 1)")
                t_seed = opt_box("Seed (default 0)")
                t_deriv = gr.Dropdown(["all", "best-vs-rest"], value="all", label="Rankings → pairs")
            with gr.Row():
                t_model = gr.Textbox(label="Base model (empty: the built-in one)")
                t_init = gr.Textbox(label="Continue from adapter (id or folder)")
                t_val = opt_box("Validation prompts (default 4)")
                t_dim = gr.Dropdown(list(registry.spec(mods[0]).dimensions), value="overall",
                                    label="Judgments about", info="train on the votes about this dimension",
                                    elem_id="train-dimension")
            with gr.Row(visible=takes_nll(first)) as lm_row:
                t_nll = opt_box("NLL weight on the chosen answer (0 = off)", elem_id="train-nll")
                t_reduce = gr.Dropdown(
                    ["auto", "sum", "mean"], value="auto", label="Answer score",
                    info="sum or per-token mean of the log-probabilities (auto: the method's own)", elem_id="train-score-reduction")
                t_nll_tok = gr.Checkbox(False, label="NLL per token (TRL's rpo_alpha)", elem_id="train-nll-per-token")
            with gr.Row():
                t_kwargs = gr.Textbox(label="Method options (KEY=VALUE, comma-separated)", elem_id="train-method-options",
                                      info="the method's keyword arguments; they are listed under its name above")
            option_rows, option_fields = [], []
            for m in mods:
                spec = registry.spec(m)
                with gr.Row(visible=m == mods[0] and bool(spec.train_options), elem_id=f"train-options-{m}") as row:
                    for s in spec.train_options:
                        if s.choices:
                            option_fields.append(gr.Dropdown([""] + list(s.choices), value="", label=s.label,
                                                             info=s.help, elem_id=f"train-option-{m}-{s.name}"))
                        else:
                            option_fields.append(opt_box(s.label, info=s.help, elem_id=f"train-option-{m}-{s.name}"))
                option_rows.append(row)
        with gr.Row(visible=is_online(first)) as online_row:
            t_reward = gr.Dropdown(self.reward_choices(mods[0]), value=None, label="Reward model (judges the samples)",
                                   info="a taste, a reward model trained on your votes (Rewards tab), "
                                   "similarity:<CLIP/PickScore/CLAP folder or hub id>, or a mix a+2*b",
                                   allow_custom_value=True, elem_id="train-reward-model")
            t_rmode = gr.Dropdown(["auto", "noisy", "x0"], value="auto", label="Reward model scores",
                                  info="noisy: a noise-aware model on each noisy sample; x0: any model on the image "
                                       "the denoiser predicts; auto: noisy when the model is noise-aware",
                                  elem_id="train-reward-mode", visible=steps_stochastically(first))
            t_prompts = gr.Textbox(label="Prompts to sample, one per line (empty: the prompts you generated for)",
                                   lines=3, elem_id="train-prompts")
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
            ms = methods(m)
            spec = LOSSES[ms[0]]
            return (gr.update(choices=ms, value=ms[0]), spec.default_lr, spec.default_beta,
                    gr.update(choices=list(presets(m)), value=None), gr.update(visible=takes_nll(ms[0])),
                    self.about(ms[0]))

        def on_method(m):
            if m not in LOSSES:
                return gr.update(), gr.update(), gr.update(), gr.update()
            return LOSSES[m].default_lr, LOSSES[m].default_beta, gr.update(visible=takes_nll(m)), self.about(m)

        def on_preset(m, p):
            if not p:
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            return presets(m)[p]

        t_mod.change(on_mod, t_mod, [t_method, t_lr, t_beta, t_preset, lm_row, t_about])
        t_mod.change(lambda m: [gr.update(visible=x == m and bool(registry.spec(x).train_options)) for x in mods],
                     t_mod, option_rows)
        t_mod.change(lambda m: gr.update(choices=list(registry.spec(m).dimensions), value="overall"), t_mod, t_dim)
        t_mod.change(lambda m: gr.update(choices=self.reward_choices(m), value=None), t_mod, t_reward)
        t_method.input(on_method, t_method, [t_lr, t_beta, lm_row, t_about])
        t_method.change(lambda m, mod: (gr.update(visible=is_online(m)), gr.update(choices=self.reward_choices(mod)),
                                        gr.update(visible=steps_stochastically(m))),
                        [t_method, t_mod], [online_row, t_reward, t_rmode])
        t_preset.input(on_preset, [t_mod, t_preset], [t_method, t_steps, t_lr, t_beta, t_rank])
        start.click(self.submit, [t_mod, t_method, t_steps, t_lr, t_beta, t_rank, t_batch, t_accum, t_seed,
                                  t_deriv, t_model, t_init, t_val, t_dim, t_nll, t_reduce, t_nll_tok, t_reward,
                                  t_prompts, t_kwargs, t_rmode] + option_fields,
                    [t_msg, run_sel])
        view_out = [run_sel, prog, loss_plot, acc_plot, margin_plot, log, runs]
        run_sel.change(self.run_view, run_sel, view_out, show_progress="hidden")
        cancel.click(self.cancel, run_sel, t_msg)
        resume.click(self.resume, run_sel, t_msg)
        gr.Timer(1.0).tick(self.run_view, run_sel, view_out, show_progress="hidden")

    def reward_choices(self, modality: str) -> list[str]:
        from alignment.rewards import service

        try:
            return [r["name"] for r in service.offered(self.store, modality)]
        except Exception:  # noqa: BLE001 - a modality without rewards offers none
            return []

    @staticmethod
    def about(method: str) -> str:
        s = LOSSES.get(method)
        if s is None:
            return ""
        kw = "; ".join(f"`{k}`: {v}" for k, v in s.kwarg_help.items())
        return f"*{s.name}*: {s.summary} ({s.paper}; beta {s.default_beta:g}, lr {s.default_lr:g})" + \
            (f". Options: {kw}" if kw else "")
