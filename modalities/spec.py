"""What a modality declares about itself, so the app, the CLI and the trainer need not know it.

A :class:`ModalitySpec` is plain data, importable without torch: the registry reads it to build the
CLI's flags, the web app's settings rows, candidate slots and views, the method lists, and the
export menus. The adapter class (the model code) is named by ``adapter`` and imported only when a
model is loaded. Adding a modality is one folder with a spec and an adapter, plus one
:func:`modalities.registry.register` call.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

class View:
    """How a candidate is shown (a spec's ``display``)."""

    IMAGE = "image"  # a picture
    TEXT = "text"  # a monospace box (reasoning answers)
    AUDIO = "audio"  # a player
    VIDEO = "video"  # a player
    HTML = "html"  # the spec's own ``render(data, params) -> html``


DISPLAYS = (View.IMAGE, View.TEXT, View.AUDIO, View.VIDEO, View.HTML)


@dataclass(frozen=True)
class Setting:
    """One generation setting: a typed, ranged value with help text. ``default`` None means the model
    decides (its own default), which is what an empty field in the app or a missing flag gives. A
    ``Path`` setting is a local file (the app shows an upload; ``accept`` is its MIME family, e.g.
    ``audio/``); its value is the file's path, checked to exist."""

    name: str
    kind: type  # int, float, str, bool or Path
    help: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    accept: str | None = None  # Path settings: the MIME family of the file
    slider: bool = False  # the app shows a slider from min to max (empty = 0) instead of a text field

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"setting names are identifiers like 'max_tokens'; got {self.name!r}")
        if self.kind not in (int, float, str, bool, Path):
            raise ValueError(f"setting {self.name}: kind must be int, float, str, bool or Path, not {self.kind!r}")
        if self.slider and (self.kind not in (int, float) or self.min is None or self.max is None):
            raise ValueError(f"setting {self.name}: a slider is a number with a min and a max")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()

    def parse(self, raw: Any) -> Any:
        """The value of a text field or flag, checked; None for an empty one. Raises ``ValueError``
        naming the setting, what was given and what is allowed."""
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        text = raw.strip() if isinstance(raw, str) else raw
        if self.kind is Path:
            path = Path(str(text)).expanduser()
            if not path.is_file():
                raise ValueError(f"{self.name}: no file {str(text)!r}")
            return str(path)
        try:
            if self.kind is bool:
                value = text if isinstance(text, bool) else {"true": True, "false": False, "1": True, "0": False}[
                    str(text).lower()]
            elif self.kind is int:
                f = float(text)
                if f != int(f):
                    raise ValueError
                value = int(f)
            else:
                value = self.kind(text)
        except (ValueError, TypeError, KeyError):
            kind = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}[self.kind]
            raise ValueError(f"{self.name} must be {kind}, got {raw!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            raise ValueError(f"{self.name} must be between {lo or '-inf'} and {hi or 'inf'}, got {value!r}")
        return value


#: what a judgment is about unless a modality declares its own list (overall always first)
DEFAULT_DIMENSIONS: tuple[str, ...] = ("overall", "prompt", "quality", "style")


@dataclass(frozen=True)
class Reward:
    """A programmatic reward a modality offers (its world's judge or a simulated taste): ``score`` names
    ``"module:function"``, a function of ``(prompt, media bytes of the candidates)`` returning one float
    per candidate, higher is better. Reward models learned from judgments live in :mod:`alignment.rewards`."""

    name: str
    description: str
    score: str
    dimension: str = "overall"

    def __post_init__(self) -> None:
        if not self.name.replace("-", "_").isidentifier():
            raise ValueError(f"reward names are identifiers like 'taste-saturated'; got {self.name!r}")
        if ":" not in self.score:
            raise ValueError(f"reward {self.name}: score is 'module:function', got {self.score!r}")


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the rest of Palate needs to know about a modality.

    - ``adapter``: the :class:`~modalities.protocol.ModalityAdapter` subclass, or ``"module:Class"``
      (imported on first use);
    - ``default_model``: a built-in alias, hub id or folder (None: the user must name one);
    - ``media``: the MIME family of its candidates (``"image/"``); stored media is checked against it;
    - ``display``: how a candidate is shown: ``image``, ``text`` (a monospace box, for reasoning),
      ``audio`` or ``video`` (players), or ``html`` with ``render(data, params) -> html`` of its own;
    - ``settings``: the generation settings (the CLI's flags, the app's settings row);
    - ``score_kinds``: the score families its models can have (the methods offered are those losses
      whose families meet these), ``export_formats`` the adapter export formats, default first;
    - ``negative_prompt``: whether a negative prompt applies; ``preload``: load the default model when
      the app starts; ``caption``: extra words under a candidate from its stored parameters;
    - ``load_options``: boolean options of loading (e.g. ``trust_remote_code``), off by default;
    - ``train_options``: options of training this modality's models (a run's ``modality_options``,
      passed to ``ModalityAdapter.configure_training``), e.g. how flow models draw training times;
    - ``rewards``: programmatic rewards of its world (:class:`Reward`), offered next to learned ones;
    - ``dimensions``: what a judgment of its candidates may be about, ``overall`` first (the A/B view
      offers them as per-dimension votes; training reads one at a time, ``overall`` by default);
    - ``variations``: ``"module:function"`` of ``(prompts, n, seed) -> new prompts`` like them (labelling
      with a reward model widens the user's prompts with them), or None.
    """

    name: str
    adapter: Any  # type[ModalityAdapter] | "module:Class"
    label: str
    media: str
    display: str
    score_kinds: tuple[str, ...]
    export_formats: tuple[str, ...]
    default_model: str | None = None
    settings: tuple[Setting, ...] = ()
    negative_prompt: bool = False
    preload: bool = False
    prompt_placeholder: str = ""
    render: Callable[[bytes, Mapping[str, Any]], str] | None = None
    caption: Callable[[Mapping[str, Any]], str] | None = None
    load_options: tuple[Setting, ...] = ()
    train_options: tuple[Setting, ...] = ()
    rewards: tuple[Reward, ...] = ()
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    variations: str | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"modality names are identifiers like 'image'; got {self.name!r}")
        if self.display not in DISPLAYS:
            raise ValueError(f"modality {self.name}: display must be one of {', '.join(DISPLAYS)}, not {self.display!r}")
        if self.display == "html" and self.render is None:
            raise ValueError(f"modality {self.name}: an html display needs render(data, params) -> html")
        if not self.media.endswith("/"):
            raise ValueError(f"modality {self.name}: media is a MIME family such as 'image/', got {self.media!r}")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"modality {self.name}: settings named twice: {names}")
        if not self.dimensions or self.dimensions[0] != "overall" or len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(f"modality {self.name}: dimensions start with 'overall' and name each once, "
                             f"got {self.dimensions!r}")
        for d in self.dimensions:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", d):
                raise ValueError(f"modality {self.name}: dimension {d!r} is not a lower-case identifier")
        for r in self.rewards:
            if r.dimension not in self.dimensions:
                raise ValueError(f"modality {self.name}: reward {r.name} is about {r.dimension!r}, which is not "
                                 f"one of its dimensions ({', '.join(self.dimensions)})")

    def check_dimension(self, dimension: str) -> str:
        """``dimension`` if this modality's judgments may be about it, else a ValueError that lists them."""
        if dimension not in self.dimensions:
            raise ValueError(f"{self.label} judgments are about {', '.join(self.dimensions)}; "
                             f"not {dimension!r}")
        return dimension

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(f"{self.name} has no setting {name!r}; its settings: {', '.join(s.name for s in self.settings)}")

    def parse_settings(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``{name: value}`` for the settings given (empty ones left out), each checked."""
        unknown = set(raw) - {s.name for s in self.settings}
        if unknown:
            raise ValueError(f"unknown {self.name} setting(s) {sorted(unknown)}; use "
                             f"{', '.join(s.name for s in self.settings) or 'none'}")
        out = {}
        for s in self.settings:
            value = s.parse(raw.get(s.name))
            if value is not None:
                out[s.name] = value
        return out
