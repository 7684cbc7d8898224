"""Export and import of preference data in the schemas people already share.

Media pairs: Pick-a-Pic v2 Parquet (:mod:`storage.pickapic`): v2's own columns and types, so the
DiffusionDPO and diffusers loaders read the rows right and ``datasets.concatenate_datasets`` joins
a file with a real v2 shard, plus Palate's provenance columns. Votes v2 cannot express ("both
bad", soft labels) are left out and counted in the report.

Text pairs: TRL preference rows (:mod:`storage.trl`), JSONL or Parquet, in the conversational
shape (TRL renders the prompt with the model's chat template, as Palate did when the answers were
sampled) or with the template already applied; plus ``label`` (the chosen side's share), model,
seeds and provenance columns. Ties and "both bad" have no place in that format and are left out
(counted in the report). Import reads every shape TRL documents.

Rankings export as the pairwise votes they imply (all pairs; equal ranks as ties), so a file holds
only pairwise rows and export -> import -> export gives identical rows.

Import reads data, never code: Parquet through pyarrow, JSONL through json; no dataset scripts, no
pickles. A file already imported (same sha256) is refused unless ``force``; rows identical to
stored votes are skipped.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from . import derive, pickapic, trl
from .errors import AlreadyImportedError, ImportFormatError, file_write_failure
from .media import StoredMedia, sha256_file, sniff_mime
from .records import DEFAULT_DIMENSION, check_dimension
from .store import COMPARE_CONTEXT, Store, now_iso

ExportFormat = Literal["pickapic", "trl-jsonl", "trl-parquet"]
EXPORT_FORMATS: tuple[str, ...] = ("pickapic", "trl-jsonl", "trl-parquet")
IMPORT_FORMATS: tuple[str, ...] = ("auto", "pickapic", "trl-jsonl", "trl-parquet")
_BATCH_ROWS = 256
_WRITE_BATCH = 200  # rows read, checked and given their files before they are written
_TXN_SECONDS = 0.02  # longest an import holds the write lock at a time

_CHOICE_LABELS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5), "both_bad": (0.0, 0.0)}
PromptRenderer = trl.PromptRenderer
PROMPT_STYLES = trl.PROMPT_STYLES


@dataclass
class ExchangeReport:
    """What an export or import did, for the CLI and the UI to show."""

    path: str
    format: str
    rows: int = 0
    judgments: int = 0
    generations_created: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    #: how TRL prompts were written ("conversational" or "templated"); None for other formats
    prompt_style: str | None = None

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ExportVote:
    a: int
    b: int
    choice: str
    strength: float | None
    annotator: str
    annotator_kind: str
    created_at: str
    judgment_id: int = 0
    dimension: str = DEFAULT_DIMENSION


def _export_votes(store: Store, modality: str, model: str | None,
                  dimension: str | None = DEFAULT_DIMENSION) -> Iterator[_ExportVote]:
    """The votes on ``modality``'s candidates about ``dimension`` (None: every dimension)."""
    gen_ok = store._eligible_generations(modality, model)
    dim_sql, dim_params = ("", []) if dimension is None else (" AND dimension = ?", [check_dimension(dimension)])
    for r in store.query(
        "SELECT judgment_id, generation_a, generation_b, choice, strength, annotator, annotator_kind, created_at,"
        f" dimension FROM pairwise_votes WHERE context != ?{dim_sql} ORDER BY judgment_id",
        [COMPARE_CONTEXT, *dim_params],  # blind compare: not data
    ):
        if r["generation_a"] in gen_ok and r["generation_b"] in gen_ok:
            yield _ExportVote(
                r["generation_a"], r["generation_b"], r["choice"], r["strength"], r["annotator"],
                r["annotator_kind"], r["created_at"], r["judgment_id"], r["dimension"],
            )
    meta = {
        r["id"]: r
        for r in store.query(
            "SELECT j.id, j.created_at, j.dimension, a.name, a.kind FROM judgments j"
            " JOIN annotators a ON a.id = j.annotator_id WHERE j.kind = 'ranking'"
        )
    }
    for jid, ranks in store._rankings("", []):
        m = meta[jid]
        if dimension is not None and m["dimension"] != dimension:
            continue
        ranks = {g: r for g, r in ranks.items() if g in gen_ok}
        for v in derive.ranking_to_votes(ranks, "all", jid):
            choice = "a" if v.p == 1.0 else "tie"
            yield _ExportVote(v.x, v.y, choice, None, m["name"], m["kind"], m["created_at"], jid, m["dimension"])


def default_modality(fmt: str) -> str:
    """The modality an export of ``fmt`` holds when none is named."""
    return "text" if fmt.startswith("trl") else "image"


def export_dataset(
    store: Store,
    out: str | os.PathLike[str],
    *,
    fmt: ExportFormat = "pickapic",
    modality: str | None = None,
    model: str | None = None,
    prompt_style: str = "auto",
    renderer: PromptRenderer | None = None,
    dimension: str | None = DEFAULT_DIMENSION,
) -> ExchangeReport:
    """Write the votes of ``modality`` (and ``model``) about ``dimension`` to ``out``. The default,
    ``overall``, writes the columns other tools expect; None writes every dimension and adds a
    ``dimension`` column, which :func:`import_dataset` reads back.

    TRL formats: ``prompt_style`` ``conversational`` (messages; TRL applies the chat template),
    ``templated`` (the prompt rendered by ``renderer``, the models' own chat templates) or ``auto``
    (conversational when every answering model has a chat template, else templated; conversational
    without a ``renderer`` to ask)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {prompt_style!r}; use one of {', '.join(PROMPT_STYLES)}")
    is_trl = fmt.startswith("trl")
    modality = modality or default_modality(fmt)
    if is_trl and modality != "text":
        raise ValueError(f"{fmt} holds text pairs; for {modality} use --format pickapic")
    if not is_trl and modality == "text":
        raise ValueError("pickapic holds media pairs; for text use --format trl-jsonl or trl-parquet")
    out = Path(out)
    report = ExchangeReport(str(out), fmt)
    with store.read():  # one snapshot: votes and rankings from the same moment
        votes = list(_export_votes(store, modality, model, dimension))
        gens = {g.id: g for g in store.get_generations(sorted({i for v in votes for i in (v.a, v.b)}))}

    def media(gid: int) -> bytes:
        return store.media_bytes(gens[gid])

    if is_trl:
        rows, schema = _trl_rows(votes, gens, media, report, prompt_style, renderer)
    else:
        rows, schema = _pickapic_rows(votes, gens, media, report, modality)
    if dimension is None:  # every dimension: say which each row is about
        import pyarrow as pa

        for r in rows:
            r["dimension"] = r.pop("_dimension")
        schema = schema.append(pa.field("dimension", pa.string()))
    else:
        for r in rows:
            r.pop("_dimension")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        if fmt == "trl-jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")
        else:
            table = pa.Table.from_pylist(rows, schema=schema)
            pq.write_table(table, tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise file_write_failure(e, out) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    report.rows = len(rows)
    report.judgments = len(rows)
    return report


def _pickapic_rows(votes, gens, media, report: ExchangeReport, modality: str):
    prefix = "jpg" if modality == "image" else "media"
    rows: list[dict[str, Any]] = []
    for v in votes:
        choice = pickapic.hard_choice(v.choice, v.strength)
        if choice is None:
            report.skip(pickapic.left_out_reason(v.choice))
            continue
        ga, gb = gens[v.a], gens[v.b]
        rows.append(pickapic.row(
            prefix=prefix, caption=ga.prompt, media_0=media(v.a), media_1=media(v.b), gen_0=ga, gen_1=gb,
            choice=choice, annotator=v.annotator, annotator_kind=v.annotator_kind, created_at=v.created_at,
            modality=modality,
        ) | {"_dimension": v.dimension})
    rows.sort(key=lambda r: (r["created_at"], r["caption"], r["image_0_uid"], r["image_1_uid"], r["label_0"],
                             r["annotator"]))
    return pickapic.finish(rows), pickapic.schema(prefix)


def _trl_rows(votes, gens, media, report: ExchangeReport, prompt_style: str, renderer: PromptRenderer | None):
    kept = []
    for v in votes:
        if v.choice in ("tie", "both_bad"):
            report.skip("tie" if v.choice == "tie" else "both-bad")
            continue
        kept.append(v)
    style = prompt_style
    if style == "auto":
        models = {gens[i].model for v in kept for i in (v.a, v.b)}
        templated = renderer is not None and not all(renderer.has_chat_template(m) for m in models)
        style = "templated" if templated else "conversational"
    report.prompt_style = style
    render = renderer.render if renderer is not None else None
    rows: list[dict[str, Any]] = []
    for v in kept:
        a_wins = v.choice == "a"
        w, l = (v.a, v.b) if a_wins else (v.b, v.a)
        gw, gl = gens[w], gens[l]
        label = 1.0 if v.strength is None else (v.strength if a_wins else 1.0 - v.strength)
        try:
            fields = trl.text_fields(style, gw.prompt, media(w).decode("utf-8"), media(l).decode("utf-8"),
                                     gw.model, render)
        except ValueError as e:
            raise ValueError(f"judgment {v.judgment_id} (prompt {gw.prompt[:60]!r}, model {gw.model}): {e}") from None
        rows.append(
            {
                **fields,
                "label": label,
                "model_chosen": gw.model,
                "model_rejected": gl.model,
                "seed_chosen": gw.seed,
                "seed_rejected": gl.seed,
                "params_chosen": json.dumps(gw.params, sort_keys=True),
                "params_rejected": json.dumps(gl.params, sort_keys=True),
                "annotator": v.annotator,
                "annotator_kind": v.annotator_kind,
                "created_at": v.created_at,
                "_dimension": v.dimension,
            }
        )
    rows.sort(key=lambda r: (r["created_at"], json.dumps(r["prompt"]), json.dumps(r["chosen"]),
                             json.dumps(r["rejected"]), r["annotator"]))
    return rows, trl.schema(style)


# ---------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """``pickapic``, ``trl-jsonl`` or ``trl-parquet``, from the file itself."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "trl-jsonl"
    names = set(_parquet_file(path).schema_arrow.names)
    if {"chosen", "rejected"} <= names:
        return "trl-parquet"
    if {"jpg_0", "jpg_1"} <= names or {"media_0", "media_1"} <= names:
        return "pickapic"
    raise ImportFormatError(
        f"{path}: cannot tell the format from its columns {sorted(names)}; expected Pick-a-Pic-style "
        "(caption, jpg_0, jpg_1, label_0, label_1) or TRL-style (prompt, chosen, rejected)"
    )


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ImportFormatError(f"{path} is not a readable Parquet file: {e}") from None


def _iter_parquet_rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    pf = _parquet_file(path)
    try:
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=list(columns) if columns else None):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ImportFormatError(f"{path}: the Parquet data is corrupt or truncated: {e}") from None


def _iter_jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise ImportFormatError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        try:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ImportFormatError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ImportFormatError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
                yield row
        except UnicodeDecodeError:
            raise ImportFormatError(f"{path} is not UTF-8 text; is it really JSONL?") from None


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_binary(t) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_number(t) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(t) or pa.types.is_integer(t)


def _is_text_or_messages(t) -> bool:
    import pyarrow as pa

    return _is_text(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def _is_time(t) -> bool:
    import pyarrow as pa

    return _is_text(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)


# column -> (check, what it must be); columns a file does not have are not checked here
_PICKAPIC_TYPES = {
    "caption": (_is_text, "text"), "jpg_0": (_is_binary, "binary (the encoded image)"),
    "jpg_1": (_is_binary, "binary (the encoded image)"), "media_0": (_is_binary, "binary (the encoded file)"),
    "media_1": (_is_binary, "binary (the encoded file)"), "label_0": (_is_number, "a number"),
    "label_1": (_is_number, "a number"), "model_0": (_is_text, "text"), "model_1": (_is_text, "text"),
    "created_at": (_is_time, "a timestamp or ISO text"),
}
_TRL_TYPES = {
    "prompt": (_is_text_or_messages, "text or a list of chat messages"),
    "chosen": (_is_text_or_messages, "text or a list of chat messages"),
    "rejected": (_is_text_or_messages, "text or a list of chat messages"), "label": (_is_number, "a number"),
}


def _require_types(path: Path, schema, expected: dict[str, tuple[Callable[[Any], bool], str]], fmt: str) -> None:
    """Columns must have the format's types: a number is not a caption (it would import as prompt "0")."""
    for name, (ok, what) in expected.items():
        if name in schema.names and not ok(schema.field(name).type):
            raise ImportFormatError(f"{path}: column {name} is {schema.field(name).type}, but in the {fmt} format "
                                    f"it is {what}; nothing was imported")


def _require_columns(path: Path, names: Sequence[str], required: Sequence[Sequence[str]], fmt: str) -> None:
    missing = [" or ".join(alts) for alts in required if not any(a in names for a in alts)]
    if missing:
        raise ImportFormatError(
            f"{path} does not have the {fmt} schema: missing column(s) {', '.join(missing)}; "
            f"it has {sorted(names)}"
        )


def import_dataset(
    store: Store,
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    annotator: str | None = None,
    annotator_kind: str | None = None,
    force: bool = False,
    modalities: Mapping[str, str] | None = None,
    dimensions: Mapping[str, Sequence[str]] | None = None,
) -> ExchangeReport:
    """Import a Pick-a-Pic-style or TRL-style file into the store.

    The whole file is validated first (nothing is written if any row is bad,
    and the error names the row); then rows are written in batches.
    ``annotator``/``annotator_kind`` override the file's annotator columns.
    ``modalities`` (name -> MIME family, e.g. the registry's): rows of other
    modalities are refused, and media is checked against its modality's family.
    A ``dimension`` column (an export of every dimension) is kept, rows without one are about
    ``overall``; ``dimensions`` (modality -> the dimensions it declares): rows about another are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path} does not exist or is not a file")
    if fmt not in IMPORT_FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; use one of {', '.join(IMPORT_FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    file_sha = sha256_file(path)
    previous = store.query(
        "SELECT id, created_at FROM imports WHERE source_sha256 = ? AND completed_at IS NOT NULL", (file_sha,)
    )
    if previous and not force:
        raise AlreadyImportedError(
            f"{path.name} was already imported (import #{previous[0]['id']} on {previous[0]['created_at']}); "
            "pass --force to import it again (identical votes are still skipped)"
        )
    report = ExchangeReport(str(path), fmt)
    if annotator_kind is not None and annotator_kind not in ("human", "ai"):
        raise ValueError(f"annotator kind must be human or ai, not {annotator_kind!r}")

    if path.stat().st_size == 0:
        raise ImportFormatError(f"{path} is empty (0 bytes); nothing was imported")
    if fmt == "pickapic":
        schema = _parquet_file(path).schema_arrow
        names = schema.names
        _require_columns(path, names, [["caption"], ["jpg_0", "media_0"], ["jpg_1", "media_1"], ["label_0"],
                                       ["label_1"]], "Pick-a-Pic")
        _require_types(path, schema, _PICKAPIC_TYPES, "Pick-a-Pic")
        rows_factory: Callable[[], Iterator[dict[str, Any]]] = lambda: _iter_parquet_rows(path)
        convert = _pickapic_row
    else:
        if fmt == "trl-jsonl":
            rows_factory = lambda: _iter_jsonl_rows(path)  # noqa: E731
        else:
            schema = _parquet_file(path).schema_arrow
            _require_columns(path, schema.names, [["chosen"], ["rejected"]], "TRL")
            _require_types(path, schema, _TRL_TYPES, "TRL")
            rows_factory = lambda: _iter_parquet_rows(path)  # noqa: E731
        convert = _trl_row

    # 1. Validate every row before writing anything (a bad row names its number).
    for n, row in enumerate(rows_factory(), start=1):
        try:
            vote = convert(row, fmt)
            if modalities is not None and vote.modality not in modalities:
                raise ValueError(f"modality {vote.modality!r} is not one this app has ({', '.join(sorted(modalities))})")
            if dimensions is not None and vote.modality in dimensions and vote.dimension not in dimensions[vote.modality]:
                raise ValueError(f"dimension {vote.dimension!r} is not one of {vote.modality}'s "
                                 f"({', '.join(dimensions[vote.modality])})")
        except (KeyError, TypeError, ValueError) as e:
            raise ImportFormatError(f"{path}, row {n}: {e}") from None
        report.rows += 1
    if report.rows == 0:
        raise ImportFormatError(f"{path} holds no rows; nothing was imported")

    # 2. Write in batches, each its own transaction, so the app's votes are not
    #    held up behind a long import. An interrupted import leaves no
    #    completed record: run it again and the rows already stored are skipped.
    with store.write() as db:
        cur = db.execute(
            "INSERT INTO imports (source_sha256, source_name, format, rows, judgments, created_at)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            (file_sha, path.name, fmt, report.rows, now_iso()),
        )
        import_id = int(cur.lastrowid)
    batch: list[_ImportVote] = []
    existing = _existing_vote_keys(store)

    def flush() -> None:
        # the slow part -- decoding each candidate and writing its file -- outside any transaction
        for vote in batch:
            for c in (vote.a, vote.b):
                c.stored = store.put_media(c.media, vote.modality, c.mime,
                                           family=(modalities or {}).get(vote.modality), imported=True)
        # then the rows, in transactions of at most ~_TXN_SECONDS each, so a user's click is never
        # queued behind a long import transaction (bench/write_fairness.py measures it)
        i = 0
        while i < len(batch):
            t0 = time.monotonic()
            with store.write():
                while i < len(batch) and time.monotonic() - t0 < _TXN_SECONDS:
                    _store_vote(store, batch[i], import_id, report, annotator, annotator_kind, path, existing)
                    i += 1
        batch.clear()

    for row in rows_factory():
        batch.append(convert(row, fmt))
        if len(batch) >= _WRITE_BATCH:
            flush()
    flush()
    with store.write() as db:
        db.execute(
            "UPDATE imports SET judgments = ?, completed_at = ? WHERE id = ?", (report.judgments, now_iso(), import_id)
        )
    return report


@dataclass
class _Candidate:
    media: bytes
    mime: str | None
    model: str
    seed: int | None
    params: dict[str, Any]
    stored: StoredMedia | None = None  # its file, once written (before the row's transaction)


@dataclass
class _ImportVote:
    modality: str
    prompt: str
    a: _Candidate
    b: _Candidate
    choice: str
    strength: float | None
    annotator: str | None
    annotator_kind: str | None
    created_at: str | None
    dimension: str = DEFAULT_DIMENSION


def _dimension(row: dict[str, Any]) -> str:
    return check_dimension(_opt_str(row, "dimension") or DEFAULT_DIMENSION)


def _opt_str(row: dict[str, Any], key: str) -> str | None:
    v = row.get(key)
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _opt_int(row: dict[str, Any], key: str) -> int | None:
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v != v:  # NaN from pandas-written files
        return None
    return int(v)


def _params(row: dict[str, Any], key: str) -> dict[str, Any]:
    v = row.get(key)
    if v in (None, ""):
        return {}
    if isinstance(v, dict):
        return v
    p = json.loads(v)
    if not isinstance(p, dict):
        raise ValueError(f"{key} must be a JSON object")
    return p


def _annotator_kind(row: dict[str, Any]) -> str | None:
    kind = _opt_str(row, "annotator_kind")
    if kind is not None and kind not in ("human", "ai"):
        raise ValueError(f"annotator_kind must be human or ai, not {kind!r}")
    return kind


def _choice_from_labels(l0: float, l1: float) -> tuple[str, float | None]:
    for choice, (c0, c1) in _CHOICE_LABELS.items():
        if (l0, l1) == (c0, c1):
            return choice, None
    if abs(l0 + l1 - 1.0) > 1e-6 or not 0.0 <= l0 <= 1.0:
        raise ValueError(
            f"labels ({l0}, {l1}) are not a vote: use 1/0, 0/1, 0.5/0.5 (tie), 0/0 (both bad), "
            "or a soft label p/1-p"
        )
    return ("a" if l0 > 0.5 else "b" if l0 < 0.5 else "tie"), l0


def _pickapic_row(row: dict[str, Any], fmt: str) -> _ImportVote:
    prefix = "jpg" if "jpg_0" in row else "media"
    m0, m1 = row[f"{prefix}_0"], row[f"{prefix}_1"]
    if not isinstance(m0, (bytes, bytearray)) or not isinstance(m1, (bytes, bytearray)) or not m0 or not m1:
        raise ValueError(f"{prefix}_0 and {prefix}_1 must hold the candidates' encoded bytes")
    if row.get("caption") is None or not str(row["caption"]).strip():
        raise ValueError("caption is empty")
    l0, l1 = row["label_0"], row["label_1"]
    if l0 is None or l1 is None:
        raise ValueError("label_0/label_1 are empty (an unlabeled pair is not a vote)")
    choice, strength = _choice_from_labels(float(l0), float(l1))
    mime0, mime1 = _opt_str(row, "mime_0") or sniff_mime(bytes(m0)), _opt_str(row, "mime_1") or sniff_mime(bytes(m1))
    modality = _opt_str(row, "modality") or _modality_from_mime(mime0)
    if modality == "image":
        _verify_image(bytes(m0), "the first image")
        _verify_image(bytes(m1), "the second image")
    if not modality.isidentifier() or modality != modality.lower() or modality == "text":
        raise ValueError(f"modality {modality!r} is not a media modality (the Pick-a-Pic format holds images, audio, "
                         "video: text pairs go in the TRL formats)")
    annotator = _opt_str(row, "annotator")
    if annotator is None and row.get("user_id") is not None:
        annotator = f"pickapic-user-{row['user_id']}"
    return _ImportVote(
        modality=modality,
        prompt=str(row["caption"]),
        a=_Candidate(bytes(m0), mime0, _opt_str(row, "model_0") or "imported", _opt_int(row, "seed_0"),
                     _params(row, "params_0")),
        b=_Candidate(bytes(m1), mime1, _opt_str(row, "model_1") or "imported", _opt_int(row, "seed_1"),
                     _params(row, "params_1")),
        choice=choice,
        strength=strength,
        annotator=annotator,
        annotator_kind=_annotator_kind(row),
        created_at=pickapic.iso_from_timestamp(row.get("created_at")),
        dimension=_dimension(row),
    )


def _trl_row(row: dict[str, Any], fmt: str) -> _ImportVote:
    prompt, chosen, rejected = trl.parse(row)
    if not prompt.strip():
        raise ValueError("prompt is empty")
    label = row.get("label")
    strength = None
    if label is not None and float(label) != 1.0:
        strength = float(label)
        if not 0.5 < strength <= 1.0:
            raise ValueError(f"label {label} must be the chosen side's share of votes, in (0.5, 1]")
    model_c = _opt_str(row, "model_chosen") or _opt_str(row, "model") or "imported"
    model_r = _opt_str(row, "model_rejected") or _opt_str(row, "model") or "imported"
    return _ImportVote(
        modality="text",
        prompt=prompt,
        a=_Candidate(chosen.encode("utf-8"), "text/plain", model_c, _opt_int(row, "seed_chosen"),
                     _params(row, "params_chosen")),
        b=_Candidate(rejected.encode("utf-8"), "text/plain", model_r, _opt_int(row, "seed_rejected"),
                     _params(row, "params_rejected")),
        choice="a",
        strength=strength,
        annotator=_opt_str(row, "annotator"),
        annotator_kind=_annotator_kind(row),
        created_at=_opt_str(row, "created_at"),
        dimension=_dimension(row),
    )


def _modality_from_mime(mime: str) -> str:
    top = mime.split("/", 1)[0]
    return {"image": "image", "audio": "music", "video": "video", "text": "text"}.get(top, "image")


def _verify_image(data: bytes, what: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} is not a readable image ({e})") from None


def _find_generation(store: Store, prompt_id: int, modality: str, c: _Candidate, sha: str) -> int | None:
    rows = store.db.execute(
        "SELECT id FROM generations WHERE prompt_id = ? AND modality = ? AND model = ? AND media_sha256 = ?"
        " AND seed IS ? ORDER BY id LIMIT 1",
        (prompt_id, modality, c.model, sha, c.seed),
    ).fetchall()
    return int(rows[0][0]) if rows else None


def _vote_key(prompt: str, a: tuple, b: tuple, choice: str, strength: float | None, annotator: str,
              annotator_kind: str, created_at: str | None, dimension: str = DEFAULT_DIMENSION) -> str:
    """What makes two votes "the same vote" across stores: the candidates by
    content (sha256, model, seed), the verdict, who, when (None when the
    file did not say) and what about (the dimension; keys of overall votes are
    those of stores made before dimensions existed)."""
    fields = [prompt, list(a), list(b), choice, strength, annotator, annotator_kind, created_at]
    blob = json.dumps(fields if dimension == DEFAULT_DIMENSION else [*fields, dimension])
    return hashlib.sha256(blob.encode()).hexdigest()


def _existing_vote_keys(store: Store) -> Counter:
    """Keys of every vote already stored (pairwise, derived from rankings, and
    imported rows that carried no time stamp)."""
    keys: Counter = Counter()
    with store.read():
        gens = {
            r["id"]: r
            for r in store.query(
                "SELECT g.id, g.seed, g.model, g.media_sha256, p.text FROM generations g"
                " JOIN prompts p ON p.id = g.prompt_id"
            )
        }
        for modality in [r["modality"] for r in store.query("SELECT DISTINCT modality FROM generations")]:
            for v in _export_votes(store, modality, None, dimension=None):
                ga, gb = gens[v.a], gens[v.b]
                keys[_vote_key(
                    ga["text"], (ga["media_sha256"], ga["model"], ga["seed"]), (gb["media_sha256"], gb["model"], gb["seed"]),
                    v.choice, v.strength, v.annotator, v.annotator_kind, v.created_at, v.dimension,
                )] += 1
        for r in store.query("SELECT import_key FROM judgments WHERE import_key IS NOT NULL"):
            keys[r["import_key"]] += 1
    return keys


def _store_vote(
    store: Store,
    v: _ImportVote,
    import_id: int,
    report: ExchangeReport,
    annotator: str | None,
    annotator_kind: str | None,
    path: Path,
    existing: Counter,
) -> None:
    from .media import sha256_bytes

    ann = annotator or v.annotator or f"import:{path.name}"
    ann_kind = annotator_kind or v.annotator_kind or "human"
    sha_a, sha_b = sha256_bytes(v.a.media), sha256_bytes(v.b.media)
    key = _vote_key(v.prompt, (sha_a, v.a.model, v.a.seed), (sha_b, v.b.model, v.b.seed), v.choice, v.strength,
                    ann, ann_kind, v.created_at, v.dimension)
    if existing[key] > 0:
        existing[key] -= 1
        report.skip("already in the store")
        return
    created_at = v.created_at or now_iso()
    prompt_id = store.add_prompt(v.prompt)
    ids = []
    for c, sha in ((v.a, sha_a), (v.b, sha_b)):
        gid = _find_generation(store, prompt_id, v.modality, c, sha)
        if gid is None:
            gid = store.add_generation(
                prompt=v.prompt, modality=v.modality, model=c.model, media=c.stored or c.media, mime=c.mime, seed=c.seed,
                params=c.params, created_at=created_at,
            ).id
            report.generations_created += 1
        ids.append(gid)
    if ids[0] == ids[1]:
        report.skip("both sides are the same candidate")
        return
    jid = store.vote(
        ids[0], ids[1], v.choice, annotator=ann, annotator_kind=ann_kind, strength=v.strength,
        context="import", created_at=created_at, import_id=import_id, dimension=v.dimension,
    )
    if v.created_at is None:  # remember the row itself, so importing it again is recognised
        store.db.execute("UPDATE judgments SET import_key = ? WHERE id = ?", (key, jid))
    report.judgments += 1
