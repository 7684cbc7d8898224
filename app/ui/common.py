"""What the tabs share: error text, optional-number fields, and candidate slots built from the
modalities' specs (a slot holds one player per display kind; the candidate's modality picks it)."""
from __future__ import annotations

import html
from typing import Any, Sequence

import gradio as gr

from modalities import registry
from modalities.spec import DISPLAYS, View
from storage import Generation, Store

MAX_N = 8
SLOT_KINDS = DISPLAYS  # a slot holds one component per display kind, in this order


def err(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    return f"**Error:** {msg}"


def opt_int(v: Any, name: str = "value") -> int | None:
    if v is None or str(v).strip() == "":
        return None
    try:
        f = float(str(v).strip())
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {v!r}") from None
    if f != int(f):
        raise ValueError(f"{name} must be a whole number, got {v!r}")
    return int(f)


def opt_float(v: Any, name: str = "value") -> float | None:
    if v is None or str(v).strip() == "":
        return None
    try:
        return float(str(v).strip())
    except ValueError:
        raise ValueError(f"{name} must be a number, got {v!r}") from None


def opt_box(label: str, **kw: Any) -> gr.Textbox:
    """An optional number: empty means the default."""
    return gr.Textbox(value="", label=label, placeholder=kw.pop("placeholder", "default"), max_lines=1, **kw)


def setting_field(setting: Any, *, elem_id: str) -> Any:
    """The field of one generation setting: an optional value, or an upload for a file setting."""
    from pathlib import Path

    if setting.kind is Path:
        if (setting.accept or "").startswith("audio/"):
            return gr.Audio(label=setting.label, type="filepath", sources=["upload"], elem_id=elem_id)
        return gr.File(label=setting.label, type="filepath", elem_id=elem_id)
    if setting.slider:
        return gr.Slider(setting.min, setting.max, value=setting.default or 0, step=1 if setting.kind is int else 0.5,
                         label=setting.label, info=setting.help, elem_id=elem_id)
    return opt_box(setting.label, info=setting.help, elem_id=elem_id)


def display_of(gen: Generation) -> str:
    """How a stored candidate is shown: its modality's spec says; an unknown one goes by its MIME type."""
    if gen.modality in registry.with_spec():
        return registry.spec(gen.modality).display
    top = gen.mime.split("/", 1)[0]
    return {"image": View.IMAGE, "audio": View.AUDIO, "video": View.VIDEO}.get(top, View.TEXT)  # MIME families


def candidate_slot(prefix: str, i: int | str, css: str) -> list[Any]:
    """The components of one candidate slot: one per display kind, all hidden until a candidate comes."""
    return [
        gr.Image(type="filepath", interactive=False, visible=False, height=200, elem_id=f"{prefix}-img-{i}",
                 elem_classes=["cand-img"]),
        gr.Textbox(interactive=False, visible=False, lines=10, max_lines=24, elem_id=f"{prefix}-text-{i}",
                   elem_classes=[css]),
        gr.Audio(interactive=False, visible=False, elem_id=f"{prefix}-audio-{i}"),
        gr.Video(interactive=False, visible=False, elem_id=f"{prefix}-video-{i}", elem_classes=["cand-video"],
                 loop=True, autoplay=True),
        gr.HTML(visible=False, elem_id=f"{prefix}-html-{i}"),
    ]


def render(store: Store, gen: Generation | None, label: str | None = None) -> list[Any]:
    """Updates for one candidate slot: the candidate shown by the player of its display kind."""
    updates = [gr.update(visible=False, value=None) for _ in SLOT_KINDS]
    if gen is None:
        return updates
    kind = display_of(gen)
    label = label or f"#{gen.id} · seed {gen.seed}"
    spec = registry.spec(gen.modality) if gen.modality in registry.with_spec() else None
    if spec is not None and spec.caption is not None and not label.startswith(("Left", "Right")):
        extra = spec.caption(gen.params)
        label += f" · {extra}" if extra else ""
    path = str(store.media_file(gen))
    if kind == View.TEXT:
        value: Any = store.media_bytes(gen).decode("utf-8", errors="replace")
    elif kind == View.HTML:
        value = (f"<div class='cand-html'><div class='cand-label'>{html.escape(label)}</div>"
                 f"{spec.render(store.media_bytes(gen), gen.params)}</div>")
    else:
        value = path
    updates[SLOT_KINDS.index(kind)] = gr.update(visible=True, value=value, **({} if kind == View.HTML else
                                                                                {"label": label}))
    return updates


def file_url(store: Store, gen: Generation) -> str:
    """The app's URL of a stored candidate (the file route serves the media folder)."""
    return f"/gradio_api/file={store.media_file(gen)}"


def cell_html(store: Store, gen: Generation) -> str:
    """A candidate inside an HTML table (compare and validation views of non-image displays)."""
    kind = display_of(gen)
    if kind == View.TEXT:
        return f"<pre class='cell-text'>{html.escape(store.media_bytes(gen).decode('utf-8', errors='replace'))}</pre>"
    if kind == View.IMAGE:
        return f"<img src='{file_url(store, gen)}' style='max-width:220px'>"
    if kind == View.AUDIO:
        return f"<audio controls src='{file_url(store, gen)}'></audio>"
    if kind == View.VIDEO:
        return (f"<video controls loop muted autoplay playsinline width='240' style='image-rendering: pixelated' "
                f"src='{file_url(store, gen)}'></video>")
    return registry.spec(gen.modality).render(store.media_bytes(gen), gen.params)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], elem: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{elem}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plays_audio(modality: str) -> bool:
    """Whether the modality's candidates are audio players (the play-both buttons show for them)."""
    return modality in registry.with_spec() and registry.spec(modality).display == View.AUDIO


def modality_choices() -> list[str]:
    return registry.with_spec()
