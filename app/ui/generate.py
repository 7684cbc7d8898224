"""Generate & rank: candidates for a prompt, judged best of N, A/B or by a full ranking.

The modality choices, the settings rows and the candidate players come from the modalities' specs."""
from __future__ import annotations

import random
from typing import Any

import gradio as gr

from alignment.rewards import least_sure_first, preference
from alignment.rewards import service as reward_service
from app import services
from app.generation import default_model, generate_candidates, get_adapter
from modalities import registry
from storage import Generation

from .common import MAX_N, candidate_slot, err, modality_choices, opt_box, opt_int, plays_audio, render, setting_field

MODES = ("Best of N", "A/B", "Rank")
NO_REWARD = "(none)"

SHORTCUTS = """
**Keyboard** (outside text fields): **1-8** pick that candidate (Best of N) or add it to the ranking (Rank) ·
**Enter** save the ranking · A/B: **a** / **b** better, **t** tie, **x** both bad, **s** skip ·
**u** undo the last judgment · Compare, blind: **←** left, **→** right, **↓** tie · Audio: **Shift+1-8** play/stop
that candidate, **q** / **w** play/stop A (left) / B (right), **p** play A then B · Video: the players of a
view loop muted and in step; **p** pauses / plays them together · Vote per dimension (A/B): **1-9** press the
dimension rows' buttons in order (first row: **1** A, **2** B, **3** tie; second row: **4**, **5**, **6**; ...).
"""


class GenerateTab:
    def __init__(self, ui):
        self.ui = ui
        self.store = ui.store
        # every modality's settings, in one flat list of fields (the handler gets them all)
        self.settings = [(m, s) for m in modality_choices() for s in registry.spec(m).settings]

    # -- views ---------------------------------------------------------------------------
    def slots(self, gens: list[Generation | None]) -> list[Any]:
        out = []
        for i in range(MAX_N):
            g = gens[i] if i < len(gens) else None
            out.append(gr.update(visible=g is not None))
            out.extend(render(self.store, g))
        return out

    def counter(self, sess: dict) -> str:
        if not sess.get("model"):
            return ""
        n = services.judgment_count(self.store, sess["modality"], sess["model"])
        return f"**{n}** judgment{'s' if n != 1 else ''} collected for `{sess['model']}`"

    def ab_view(self, sess: dict) -> list[Any]:
        pairs, k = sess.get("pairs", []), sess.get("pair_idx", 0)
        empty = render(self.store, None) + render(self.store, None)
        if not pairs:
            return [gr.update(value="")] + empty
        if k >= len(pairs):
            return [gr.update(value=f"All {len(pairs)} pairs judged: generate new candidates for more.")] + empty
        i, j = pairs[k]
        gens = sess["gens"]
        label = f"Pair {k + 1} of {len(pairs)}: #{i + 1} (A) vs #{j + 1} (B)"
        scores = sess.get("reward_scores")
        if scores and len(scores) == len(gens):
            label += (f" · {sess['reward']}: scores A {scores[i]:.3g}, B {scores[j]:.3g}"
                      + (f", P(A better) {preference(scores[i], scores[j]):.0%}" if sess.get("reward_learned") else ""))
            if sess.get("active"):
                label += " · least sure pair first"
        return ([gr.update(value=label)]
                + render(self.store, gens[i]) + render(self.store, gens[j]))

    def rank_view(self, sess: dict) -> str:
        order = sess.get("order", [])
        if not sess.get("ids"):
            return ""
        idx = {gid: n + 1 for n, gid in enumerate(sess["ids"])}
        if not order:
            return "Ranking: click candidates (or press 1-8) best first; **Save ranking** (Enter) stores it."
        return "Ranking so far: " + " > ".join(f"#{idx[g]}" for g in order)

    # -- generate -----------------------------------------------------------------------------
    def generate(self, modality, model, prompt, negative, n, seed, *rest):
        """Generator: candidates appear as they finish (each is stored the moment it exists)."""
        *values, sess = rest
        sess = dict(sess or {})

        def emit(status, gens):
            return [status, self.counter(sess), sess] + self.slots(gens) + self.ab_view(sess) + [self.rank_view(sess)]

        try:
            prompt = (prompt or "").strip()
            if not prompt:
                raise ValueError("write a prompt first")
            n = opt_int(n, "N") or 0
            if not 2 <= n <= MAX_N:
                raise ValueError(f"N must be between 2 and {MAX_N}, got {n}")
            spec = registry.spec(modality)
            model = (model or "").strip() or default_model(modality)
            params = spec.parse_settings({s.name: v for (m, s), v in zip(self.settings, values) if m == modality})
            base_seed = opt_int(seed, "seed")
            if base_seed is None:
                base_seed = random.randrange(2**31 - MAX_N)
        except Exception as e:
            yield emit(err(e), sess.get("gens", []))
            return
        sess = {"modality": modality, "model": model, "prompt": prompt, "ids": [], "gens": [], "pairs": [],
                "pair_idx": 0, "order": [], "history": [], "active": sess.get("active"),
                # the hint's reward model scores one modality: switching modality drops it (the menu resets too)
                "reward": sess.get("reward") if sess.get("modality") == modality else None}
        gens: list[Generation] = []
        loading = self.ui.loading
        first = f"Loading `{model}` and generating…" if loading.get(model) != "ready" else "Generating…"
        yield emit(f"{first} 0 of {n}", gens)
        for i in range(n):
            try:
                g = generate_candidates(self.store, modality=modality, model=model, prompt=prompt, n=1,
                                        seeds=[base_seed + i], negative_prompt=(negative or None)
                                        if spec.negative_prompt else None, params=params)[0]
            except Exception as e:
                if loading.get(model) == "loading":
                    loading.pop(model, None)
                sess["ids"] = [x.id for x in gens]
                sess["gens"] = gens
                sess["pairs"] = services.pair_schedule(len(gens)) if len(gens) >= 2 else []
                yield emit(err(e) + (f" ({len(gens)} candidate(s) were stored)" if gens else ""), gens)
                return
            loading[model] = "ready"
            gens.append(g)
            sess["ids"], sess["gens"] = [x.id for x in gens], gens
            done = i + 1 == n
            note = None
            if done:
                sess["pairs"] = services.pair_schedule(n)
                note = self._apply_reward(sess)
            yield emit(f"{'Done' if done else 'Generating…'} {i + 1} of {n} (seeds {base_seed}–{base_seed + n - 1})"
                       + (f" · {note}" if note else ""), gens)

    # -- reward model hint and active questions -------------------------------------------------
    def reward_names(self, modality: str) -> list[str]:
        try:
            return [NO_REWARD] + [r["name"] for r in reward_service.offered(self.store, modality)]
        except Exception:  # noqa: BLE001 - no hint offered; judging goes on
            return [NO_REWARD]

    def _apply_reward(self, sess: dict) -> str | None:
        """Score the session's candidates with its reward model (a hint beside each pair) and, when
        active questions are on, put the least sure of the pairs not yet judged first. Returns an error
        note, or None."""
        sess.pop("reward_scores", None)
        name, gens = sess.get("reward"), sess.get("gens") or []
        if not name or len(gens) < 2:
            return None
        try:
            adapter, lock = get_adapter(self.store, sess["modality"], sess["model"])
            reward = reward_service.load(self.store, name, sess["modality"], adapter)
            media = [self.store.media_bytes(g) for g in gens]
            k = sess.get("pair_idx", 0)
            with lock:
                ordered, scores = least_sure_first(sess["pairs"][k:], reward, sess["prompt"], media)
            sess["reward_scores"] = [float(x) for x in scores]
            sess["reward_learned"] = reward.kind == "learned"
            if sess.get("active"):
                sess["pairs"] = sess["pairs"][:k] + ordered
        except Exception as e:  # noqa: BLE001 - the hint is optional: say why it is missing
            return err(e) + " (no reward-model hint for these candidates)"
        return None

    def set_reward(self, name, active, sess: dict):
        sess = dict(sess or {})
        sess["reward"] = None if not name or name == NO_REWARD else name
        sess["active"] = bool(active)
        note = self._apply_reward(sess)
        msg = note or (f"Reward model `{sess['reward']}`: " + ("the least sure pair comes next." if sess["active"]
                                                             else "its scores show beside each pair.")
                       if sess["reward"] else "No reward-model hint.")
        return [msg, sess] + self.ab_view(sess)

    # -- judge ----------------------------------------------------------------------------------
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
            return err(e), self.counter(sess), sess, self.rank_view(sess)
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
            return err(e), self.counter(sess), sess, self.rank_view(sess)
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
            return [err(e), self.counter(sess), sess] + self.ab_view(sess)
        return [msg, self.counter(sess), sess] + self.ab_view(sess)

    def ab_dimension(self, dimension: str, choice: str, sess: dict):
        """A vote about one dimension of the pair shown (per-dimension votes); the pair stays, so its
        other dimensions can be judged too, until the overall buttons (or skip) move on."""
        sess = dict(sess or {})
        try:
            pairs, k = sess.get("pairs", []), sess.get("pair_idx", 0)
            if not pairs or k >= len(pairs):
                raise ValueError("there is no pair to judge: generate candidates first")
            i, j = pairs[k]
            jid = services.vote(self.store, sess["ids"][i], sess["ids"][j], choice, dimension=dimension)
            sess["history"] = sess.get("history", []) + [{"jid": jid, "pair_idx": k}]
            said = {"a": f"#{i + 1} better", "b": f"#{j + 1} better", "tie": "tie"}[choice]
            msg = f"Stored: {dimension}, {said} (judgment {jid}); judge other dimensions or the overall vote."
        except Exception as e:
            return [err(e), self.counter(sess), sess]
        return [msg, self.counter(sess), sess]

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
            else:
                jid = services.undo(self.store)
                msg = f"Undone: judgment {jid} deleted."
        except Exception as e:
            return [err(e), self.counter(sess), sess] + self.ab_view(sess) + [self.rank_view(sess)]
        return [msg, self.counter(sess), sess] + self.ab_view(sess) + [self.rank_view(sess)]

    # -- the tab ----------------------------------------------------------------------------------
    def build(self) -> None:
        mods = modality_choices()
        first = registry.spec(mods[0])
        sess = gr.State({})
        with gr.Row():
            modality = gr.Radio(mods, value=mods[0], label="Modality", elem_id="modality")
            model = gr.Textbox(value=first.default_model or "", label="Model (built-in alias, hub id or local folder)",
                               elem_id="model", scale=2)
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder=first.prompt_placeholder, elem_id="prompt", scale=3)
            negative = gr.Textbox(label="Negative prompt", elem_id="negative", scale=2, visible=first.negative_prompt)
        with gr.Row():
            n = gr.Number(value=4, label="N candidates (2-8)", precision=0, elem_id="n")
            seed = opt_box("Seed (empty: random)", elem_id="seed", placeholder="random")
            gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        rows, fields = [], []
        with gr.Accordion("Settings (empty = the model's default)", open=False):
            for m in mods:
                with gr.Row(visible=m == mods[0], elem_id=f"settings-{m}") as row:
                    for s in registry.spec(m).settings:
                        fields.append(setting_field(s, elem_id=f"setting-{m}-{s.name}"))
                rows.append(row)
        status = gr.Markdown("", elem_id="gen-status")
        with gr.Row():
            mode = gr.Radio(list(MODES), value="Best of N", label="Judging mode", elem_id="judge-mode")
            counter = gr.Markdown("", elem_id="counter")
            undo_btn = gr.Button("Undo last judgment (u)", elem_id="undo-btn", size="sm")
        slot_outputs, choose_btns = [], []
        with gr.Column(visible=True):
            for r in range(2):
                with gr.Row():
                    for i in range(r * 4, r * 4 + 4):
                        with gr.Column(visible=False, min_width=160, elem_classes=["cand-col"]) as col:
                            comps = candidate_slot("cand", i + 1, "cand-text")
                            btn = gr.Button(f"★ {i + 1}", elem_id=f"choose-{i + 1}", size="sm")
                        slot_outputs += [col] + comps
                        choose_btns.append(btn)
        with gr.Column(visible=False) as ab_area:
            with gr.Row():
                ab_reward = gr.Dropdown(self.reward_names(mods[0]), value=NO_REWARD, label="Reward model hint",
                                        elem_id="ab-reward", scale=2)
                ab_active = gr.Checkbox(False, label="Ask the least sure pair next (active questions)",
                                        elem_id="ab-active")
            ab_label = gr.Markdown("", elem_id="ab-label")
            dims = [d for d in dict.fromkeys(d for m in mods for d in registry.spec(m).dimensions) if d != "overall"]
            ab_per_dim = gr.Checkbox(False, label="Vote per dimension (" + ", ".join(dims) + "; keys 1-9 press the "
                                     "rows' A / B / tie in order; the buttons below the pair are the overall vote)",
                                     elem_id="ab-per-dim")
            dim_rows, dim_btns = [], []
            for d in dims:
                with gr.Row(visible=False, elem_id=f"ab-dim-{d}") as row:
                    gr.Markdown(f"**{d}**", elem_classes=["dim-label"])
                    for c, lbl in (("a", "A"), ("b", "B"), ("tie", "tie")):
                        dim_btns.append((d, c, gr.Button(f"{d}: {lbl}", elem_id=f"ab-dim-{d}-{c}", size="sm")))
                dim_rows.append((d, row))
            with gr.Row():
                with gr.Column():
                    left = candidate_slot("ab", "a", "ab-text")
                with gr.Column():
                    right = candidate_slot("ab", "b", "ab-text")
            with gr.Row():
                ab_btns = {c: gr.Button(lbl, elem_id=eid) for c, lbl, eid in (
                    ("a", "A is better (a)", "ab-a"), ("b", "B is better (b)", "ab-b"), ("tie", "Tie (t)", "ab-tie"),
                    ("both-bad", "Both bad (x)", "ab-bad"), ("skip", "Skip (s)", "ab-skip"))}
                ab_play = gr.Button("▶ A then B (p)", elem_id="ab-play-both", visible=plays_audio(mods[0]))
                ab_play.click(None, None, None, js="() => { window.palatePlayBoth('ab-audio-a', 'ab-audio-b'); }")
        with gr.Row(visible=False) as rank_area:
            rank_md = gr.Markdown("", elem_id="rank-order")
            rank_save = gr.Button("Save ranking (Enter)", elem_id="rank-save", size="sm")
            rank_reset = gr.Button("Reset", elem_id="rank-reset", size="sm")
        gr.Markdown(SHORTCUTS)

        def on_modality(m):
            spec = registry.spec(m)
            return ([gr.update(value=spec.default_model or ""), gr.update(visible=spec.negative_prompt),
                     gr.update(placeholder=spec.prompt_placeholder)]
                    + [gr.update(visible=x == m) for x in mods])

        modality.change(on_modality, modality, [model, negative, prompt] + rows)
        modality.change(lambda m: gr.update(visible=plays_audio(m)), modality, ab_play)
        modality.change(lambda m: gr.update(choices=self.reward_names(m), value=NO_REWARD), modality, ab_reward)

        def dim_visibility(m, on):
            declared = registry.spec(m).dimensions
            return [gr.update(visible=bool(on) and d in declared) for d, _ in dim_rows]

        for trigger in (modality, ab_per_dim):
            trigger.change(dim_visibility, [modality, ab_per_dim], [row for _, row in dim_rows])
        for d, c, btn in dim_btns:
            btn.click(lambda s, d=d, c=c: self.ab_dimension(d, c, s), sess, [status, counter, sess],
                      show_progress="hidden")

        def on_mode(md):
            labels = {"Best of N": "★ {}", "Rank": "rank {}", "A/B": "{}"}[md]
            return ([gr.update(visible=md == "A/B"), gr.update(visible=md == "Rank")]
                    + [gr.update(value=labels.format(i + 1), visible=md != "A/B") for i in range(MAX_N)])

        mode.change(on_mode, mode, [ab_area, rank_area] + choose_btns)
        mode.change(lambda m, md: gr.update(choices=self.reward_names(m)) if md == "A/B" else gr.update(),
                    [modality, mode], ab_reward)
        ab_outputs = [ab_label] + left + right
        for control in (ab_reward, ab_active):
            control.input(self.set_reward, [ab_reward, ab_active, sess], [status, sess] + ab_outputs,
                           show_progress="hidden")
        gen_btn.click(self.generate, [modality, model, prompt, negative, n, seed] + fields + [sess],
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
