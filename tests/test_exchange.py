"""Dataset export and import: Pick-a-Pic-style Parquet, TRL-style JSONL/Parquet."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import AlreadyImportedError, ImportFormatError, Store
from storage.exchange import export_dataset, import_dataset
from tests.conftest import add_images, png_bytes


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return pq.read_table(path).to_pylist()


def _text_gens(store, prompt, answers, model="lm"):
    return [
        store.add_generation(prompt=prompt, modality="text", model=model, media=a.encode(), seed=i, params={"t": 0.7})
        for i, a in enumerate(answers)
    ]


def _v2_shard(path: Path) -> None:
    """A file shaped like a public Pick-a-Pic v2 shard: v2's columns, types and order."""
    import datetime

    from storage.pickapic import V2_COLUMNS

    v2 = pa.schema([
        ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()), ("image_1_uid", pa.string()), ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
        ("model_0", pa.string()), ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
        ("num_example_per_prompt", pa.int64()), ("__index_level_0__", pa.int64()),
    ])
    assert tuple(v2.names) == V2_COLUMNS
    row = {"are_different": True, "best_image_uid": "u1", "caption": "a cat", "has_label": True,
           "created_at": datetime.datetime(2023, 5, 1, 12), "image_0_uid": "u1", "image_0_url": "https://x/u1.jpg",
           "image_1_uid": "u2", "image_1_url": "https://x/u2.jpg", "jpg_0": png_bytes((9, 9, 9)),
           "jpg_1": png_bytes((8, 8, 8)), "label_0": 1.0, "label_1": 0.0, "model_0": "sdxl", "model_1": "sdxl",
           "ranking_id": 17, "user_id": 42, "num_example_per_prompt": 1, "__index_level_0__": 0}
    pq.write_table(pa.Table.from_pylist([row, row | {"label_0": 0.5, "label_1": 0.5, "best_image_uid": ""}],
                                        schema=v2), path)
    return v2


def _diffusion_dpo_loader(rows):
    """What SalesforceAIResearch/DiffusionDPO's train.py does with Pick-a-Pic rows: keep label_0 in
    (0, 1), then put the preferred image first (swap when label_0 == 0)."""
    return [(r["jpg_1"], r["jpg_0"]) if r["label_0"] == 0 else (r["jpg_0"], r["jpg_1"])
            for r in rows if r["label_0"] in (0, 1)]


def _diffusers_loader(rows):
    """What diffusers' examples/research_projects/diffusion_dpo does: no filter, swap when label_0 == 0."""
    return [(r["jpg_1"], r["jpg_0"]) if r["label_0"] == 0 else (r["jpg_0"], r["jpg_1"]) for r in rows]


def test_pickapic_export_is_v2_shaped_and_read_right_by_v2_loaders(store, tmp_path):
    import datasets

    a, b, c = add_images(store, "two small red circles", 3)
    store.vote(a.id, b.id, "a")
    store.vote(a.id, c.id, "b")
    store.vote(a.id, b.id, "tie")
    store.vote(b.id, c.id, "b", strength=0.25)
    store.vote(a.id, c.id, "both-bad")
    out = tmp_path / "pairs.parquet"
    report = export_dataset(store, out)
    assert report.rows == 3
    assert sorted(report.skipped.values()) == [1, 1]
    assert any(k.startswith("both-bad") for k in report.skipped) and any(k.startswith("soft") for k in report.skipped)

    v2 = _v2_shard(tmp_path / "v2.parquet")
    ours = pq.read_schema(out)
    assert ours.names[: len(v2.names)] == v2.names
    assert [ours.field(n).type for n in v2.names] == list(v2.types)

    cache = str(tmp_path / "hf")
    theirs = datasets.load_dataset("parquet", data_files=str(tmp_path / "v2.parquet"), split="train", cache_dir=cache)
    mine = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=cache)
    both = datasets.concatenate_datasets([theirs, mine])
    assert both.num_rows == 5 and both.features["created_at"] == theirs.features["created_at"]
    rows = list(both)[2:]
    assert [(r["label_0"], r["label_1"]) for r in rows] == [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]
    assert rows[0]["best_image_uid"] == a.media_sha256 and rows[1]["best_image_uid"] == c.media_sha256
    assert rows[2]["best_image_uid"] == "" and all(r["has_label"] and r["are_different"] for r in rows)
    assert rows[0]["num_example_per_prompt"] == 3 and [r["__index_level_0__"] for r in rows] == [0, 1, 2]
    assert rows[0]["seed_0"] == a.seed and list(both)[0]["seed_0"] is None  # Palate's columns: null in v2 rows
    # the loaders put the image the user preferred first, and nothing else of ours reaches them as a win
    img = {g.id: store.media_bytes(g) for g in (a, b, c)}
    preferred = [(img[a.id], img[b.id]), (img[c.id], img[a.id])]
    assert _diffusion_dpo_loader(rows) == preferred
    assert _diffusers_loader(rows)[:2] == preferred  # (it reads v2's ties, and ours, as "image 0 wins")
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(rows[0]["jpg_1"])).size == (8, 8)
    assert rows[0]["caption"] == "two small red circles"


class _Tokenizers:
    """A stand-in for the text modality's prompt renderer (tokenizers of the answering models)."""

    def __init__(self, templated: set[str]):
        self.templated = templated

    def has_chat_template(self, model):
        return model in self.templated

    def render(self, model, prompt):
        return f"<s>Q: {prompt}\nA:" if model in self.templated else prompt


def test_trl_export_formats(store, tmp_path):
    g = _text_gens(store, "What is 2+3?", ["5", "6", "five"])
    store.vote(g[0].id, g[1].id, "a")
    store.vote(g[1].id, g[2].id, "b", strength=0.2)
    store.vote(g[0].id, g[2].id, "tie")
    r = export_dataset(store, tmp_path / "t.jsonl", fmt="trl-jsonl")
    assert r.rows == 2 and r.skipped == {"tie": 1} and r.prompt_style == "conversational"
    rows = _read_rows(tmp_path / "t.jsonl")
    user = [{"role": "user", "content": "What is 2+3?"}]
    assert [(x["prompt"], x["chosen"], x["rejected"], x["label"]) for x in rows] == [
        (user, [{"role": "assistant", "content": "5"}], [{"role": "assistant", "content": "6"}], 1.0),
        (user, [{"role": "assistant", "content": "five"}], [{"role": "assistant", "content": "6"}], 0.8),
    ]
    export_dataset(store, tmp_path / "t.parquet", fmt="trl-parquet")
    assert _read_rows(tmp_path / "t.parquet") == rows
    # templated: the prompt as the model saw it; auto picks it when a model has no chat template
    r = export_dataset(store, tmp_path / "tt.jsonl", fmt="trl-jsonl", prompt_style="templated",
                       renderer=_Tokenizers({"lm"}))
    assert r.prompt_style == "templated"
    assert [(x["prompt"], x["chosen"]) for x in _read_rows(tmp_path / "tt.jsonl")] == [
        ("<s>Q: What is 2+3?\nA:", "5"), ("<s>Q: What is 2+3?\nA:", "five")]
    assert export_dataset(store, tmp_path / "a1.jsonl", fmt="trl-jsonl", renderer=_Tokenizers({"lm"})).prompt_style \
        == "conversational"
    r = export_dataset(store, tmp_path / "a2.jsonl", fmt="trl-jsonl", renderer=_Tokenizers(set()))
    assert r.prompt_style == "templated" and _read_rows(tmp_path / "a2.jsonl")[0]["prompt"] == "What is 2+3?"
    with pytest.raises(ValueError, match="needs the models' tokenizers"):
        export_dataset(store, tmp_path / "x.jsonl", fmt="trl-jsonl", prompt_style="templated")
    with pytest.raises(ValueError, match="text pairs"):
        export_dataset(store, tmp_path / "x.jsonl", fmt="trl-jsonl", modality="image")
    with pytest.raises(ValueError, match="media pairs"):
        export_dataset(store, tmp_path / "x.parquet", fmt="pickapic", modality="text")


def test_rankings_export_as_their_pairs(store, tmp_path):
    g = add_images(store, "p", 3)
    store.rank([g[1].id, [g[0].id, g[2].id]])
    export_dataset(store, tmp_path / "r.parquet")
    rows = _read_rows(tmp_path / "r.parquet")
    got = sorted((r["image_0_uid"], r["image_1_uid"], r["label_0"]) for r in rows)
    sha = {x.id: x.media_sha256 for x in g}
    assert got == sorted([(sha[g[1].id], sha[g[0].id], 1.0), (sha[g[1].id], sha[g[2].id], 1.0),
                          (sha[g[0].id], sha[g[2].id], 0.5)])


# -- round trips -----------------------------------------------------------

_choices = st.sampled_from(["a", "b", "tie", "both-bad", "soft"])


@st.composite
def store_contents(draw):
    n_prompts = draw(st.integers(1, 3))
    votes = []
    for p in range(n_prompts):
        k = draw(st.integers(2, 4))
        for _ in range(draw(st.integers(0, 4))):
            i, j = draw(st.lists(st.integers(0, k - 1), min_size=2, max_size=2, unique=True))
            votes.append((p, k, i, j, draw(_choices), draw(st.sampled_from(["you", "bob"]))))
        if draw(st.booleans()):
            order = draw(st.permutations(list(range(k))))
            votes.append((p, k, None, list(order), "rank", "you"))
    return votes


def _fill(store, contents, modality):
    made = {}

    def gens(p, k):
        if (p, k) not in made:
            if modality == "image":
                made[(p, k)] = add_images(store, f"prompt {p}", k, offset=p * 10)
            else:
                made[(p, k)] = _text_gens(store, f"question {p}", [f"answer {p}.{i} ünï" for i in range(k)])
        return made[(p, k)]

    for p, k, i, j, choice, who in contents:
        g = gens(p, k)
        if choice == "rank":
            store.rank([g[x].id for x in j], annotator=who)
        elif choice == "soft":
            store.vote(g[i].id, g[j].id, "a", strength=0.7, annotator=who)
        else:
            store.vote(g[i].id, g[j].id, choice, annotator=who)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(store_contents(), st.sampled_from(["pickapic", "trl-jsonl", "trl-parquet"]))
def test_export_import_export_is_identical(contents, fmt):
    modality = "image" if fmt == "pickapic" else "text"
    suffix = ".jsonl" if fmt == "trl-jsonl" else ".parquet"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Store.open(tmp / "one") as one:
            _fill(one, contents, modality)
            first = export_dataset(one, tmp / f"first{suffix}", fmt=fmt)
        with Store.open(tmp / "two") as two:
            if first.rows == 0:  # an export of nothing is a file of nothing, and importing it says so
                with pytest.raises(ImportFormatError, match="holds no rows|is empty"):
                    import_dataset(two, tmp / f"first{suffix}")
                return
            imported = import_dataset(two, tmp / f"first{suffix}")
            assert imported.judgments == first.rows
            second = export_dataset(two, tmp / f"second{suffix}", fmt=fmt)
            # importing the same rows again adds nothing
            again = import_dataset(two, tmp / f"first{suffix}", force=True)
            assert again.judgments == 0
        assert second.rows == first.rows
        assert _read_rows(tmp / f"second{suffix}") == _read_rows(tmp / f"first{suffix}")
        if suffix == ".parquet":
            assert pq.read_table(tmp / f"second{suffix}").schema == pq.read_table(tmp / f"first{suffix}").schema


def test_import_preserves_training_pairs(store, tmp_path):
    g = add_images(store, "p", 3)
    store.vote(g[0].id, g[1].id, "a")
    store.vote(g[2].id, g[1].id, "b")
    store.vote(g[0].id, g[2].id, "both-bad")
    export_dataset(store, tmp_path / "x.parquet")
    with Store.open(tmp_path / "other") as other:
        import_dataset(other, tmp_path / "x.parquet")
        sha = lambda s, gid: s.get_generation(gid).media_sha256  # noqa: E731
        ours = sorted((sha(store, p.winner_id), sha(store, p.loser_id)) for p in store.preference_pairs(modality="image"))
        theirs = sorted((sha(other, p.winner_id), sha(other, p.loser_id)) for p in other.preference_pairs(modality="image"))
        assert ours == theirs and len(ours) == 2
        assert other.stats()[0]["choices"].get("both-bad", 0) == 0  # v2 has no label for it: left out


# -- foreign files and bad input -------------------------------------------


def test_import_foreign_pickapic_file(store, tmp_path):
    """A file shaped like the public Pick-a-Pic v2 shards (extra columns, JPEG bytes, timestamps)."""
    import datetime
    import io

    from PIL import Image

    def jpg(c):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), c).save(buf, "JPEG")
        return buf.getvalue()

    t = pa.table({
        "are_different": [True, True],
        "best_image_uid": ["u1", ""],
        "caption": ["a cat", "a dog"],
        "created_at": pa.array([datetime.datetime(2023, 5, 1, 12, 0)] * 2, pa.timestamp("us")),
        "has_label": [True, True],
        "image_0_uid": ["u1", "u3"],
        "image_1_uid": ["u2", "u4"],
        "jpg_0": [jpg((255, 0, 0)), jpg((0, 255, 0))],
        "jpg_1": [jpg((0, 0, 255)), jpg((9, 9, 9))],
        "label_0": [1.0, 0.5],
        "label_1": [0.0, 0.5],
        "model_0": ["sdxl", "sd2"],
        "model_1": ["sdxl", "sd2"],
        "ranking_id": [1, 2],
        "user_id": [42, 43],
    })
    pq.write_table(t, tmp_path / "pickapic.parquet")
    r = import_dataset(store, tmp_path / "pickapic.parquet")
    assert (r.rows, r.judgments, r.generations_created) == (2, 2, 4)
    j = store.get_judgment(1)
    assert j.choice == "a" and j.annotator == "pickapic-user-42" and j.created_at.startswith("2023-05-01T12:00")
    assert store.get_generation(j.generation_ids[0]).mime == "image/jpeg"
    assert store.get_judgment(2).choice == "tie"


def _stored_texts(store, jid):
    j = store.get_judgment(jid)
    gens = [store.get_generation(g) for g in j.generation_ids]
    return gens[0].prompt, *(store.media_bytes(g).decode() for g in gens)


def test_import_every_trl_shape(store, tmp_path):
    from storage import conversation

    sys_msg = {"role": "system", "content": "Be brief."}
    rows = [
        # standard, explicit prompt
        {"prompt": "3+3?", "chosen": "6", "rejected": "7"},
        # standard, implicit prompt (the common prefix, as TRL's extract_prompt)
        {"chosen": "Q: 1+1?\nA: 2", "rejected": "Q: 1+1?\nA: 3"},
        # conversational, explicit prompt
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
        # conversational, implicit prompt
        {"chosen": [{"role": "user", "content": "4+4?"}, {"role": "assistant", "content": "8"}],
         "rejected": [{"role": "user", "content": "4+4?"}, {"role": "assistant", "content": "9"}]},
        # a system message
        {"prompt": [sys_msg, {"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "Hi."}],
         "rejected": [{"role": "assistant", "content": "Hello there, how are you doing today?"}]},
        # multi-turn: the last assistant turn is the answer, the rest the prompt
        {"chosen": [{"role": "user", "content": "5+5?"}, {"role": "assistant", "content": "10"},
                    {"role": "user", "content": "and times 2?"}, {"role": "assistant", "content": "20"}],
         "rejected": [{"role": "user", "content": "5+5?"}, {"role": "assistant", "content": "10"},
                      {"role": "user", "content": "and times 2?"}, {"role": "assistant", "content": "25"}]},
        # typed content parts
        {"prompt": [{"role": "user", "content": [{"type": "text", "text": "6+"}, {"type": "text", "text": "6?"}]}],
         "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "12"}]}],
         "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "13"}]}]},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = import_dataset(store, tmp_path / "c.jsonl", annotator="ultrafeedback", annotator_kind="ai")
    assert r.judgments == 7
    got = [_stored_texts(store, j) for j in range(1, 8)]
    assert got[:4] == [("3+3?", "6", "7"), ("Q: 1+1?\nA: ", "2", "3"), ("2+2?", "4", "5"), ("4+4?", "8", "9")]
    assert conversation.decode(got[4][0]) == [sys_msg, {"role": "user", "content": "hi"}]
    assert got[4][1:] == ("Hi.", "Hello there, how are you doing today?")
    assert conversation.decode(got[5][0]) == [
        {"role": "user", "content": "5+5?"}, {"role": "assistant", "content": "10"},
        {"role": "user", "content": "and times 2?"}]
    assert got[5][1:] == ("20", "25") and got[6] == ("6+6?", "12", "13")
    assert store.get_judgment(1).annotator_kind == "ai"

    # the conversation prompts go back out as they came in
    export_dataset(store, tmp_path / "back.jsonl", fmt="trl-jsonl")
    back = {json.dumps(x["prompt"]): x for x in _read_rows(tmp_path / "back.jsonl")}
    assert json.dumps([sys_msg, {"role": "user", "content": "hi"}]) in back

    bad = [
        ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "a"}],
          "rejected": [{"role": "assistant", "content": "b"}]}, "chosen must end with an assistant message"),
        ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]},
         "continue different conversations"),
        ({"prompt": [{"role": "user", "content": [{"type": "image"}]}], "chosen": "a", "rejected": "b"},
         "'image' part; Palate's text modality holds text only"),
        ({"chosen": "abc", "rejected": "xyz"}, "share no leading text"),
        ({"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "both be text"),
    ]
    for i, (row, match) in enumerate(bad):
        (tmp_path / f"bad{i}.jsonl").write_text(json.dumps(row) + "\n")
        with pytest.raises(ImportFormatError, match=match):
            import_dataset(store, tmp_path / f"bad{i}.jsonl")


def test_trl_parquet_with_implicit_conversations(store, tmp_path):
    rows = [{"chosen": [{"role": "user", "content": "4+4?"}, {"role": "assistant", "content": "8"}],
             "rejected": [{"role": "user", "content": "4+4?"}, {"role": "assistant", "content": "9"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "implicit.parquet")
    assert import_dataset(store, tmp_path / "implicit.parquet").judgments == 1
    assert _stored_texts(store, 1) == ("4+4?", "8", "9")


def test_reimport_of_same_file_is_refused(store, tmp_path):
    g = add_images(store, "p", 2)
    store.vote(g[0].id, g[1].id, "a")
    export_dataset(store, tmp_path / "x.parquet")
    with Store.open(tmp_path / "other") as other:
        import_dataset(other, tmp_path / "x.parquet")
        with pytest.raises(AlreadyImportedError, match="--force"):
            import_dataset(other, tmp_path / "x.parquet")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty"),
        (b"PAR1 this is not parquet at all PAR1", "not a readable Parquet"),
        (b"\x00" * 64, "not a readable Parquet"),
    ],
)
def test_corrupt_parquet(store, tmp_path, content, match):
    f = tmp_path / "bad.parquet"
    f.write_bytes(content)
    with pytest.raises(ImportFormatError, match=match):
        import_dataset(store, f, fmt="pickapic")
    assert store.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 0


def test_truncated_parquet(store, tmp_path):
    g = add_images(store, "p", 2)
    store.vote(g[0].id, g[1].id, "a")
    export_dataset(store, tmp_path / "x.parquet")
    data = (tmp_path / "x.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with Store.open(tmp_path / "other") as other:
        with pytest.raises(ImportFormatError, match="Parquet"):
            import_dataset(other, tmp_path / "cut.parquet")
        assert other.query("SELECT COUNT(*) AS n FROM generations")[0]["n"] == 0


def test_wrong_schema(store, tmp_path):
    pq.write_table(pa.table({"text": ["hello"], "score": [1.0]}), tmp_path / "other.parquet")
    with pytest.raises(ImportFormatError, match="cannot tell the format"):
        import_dataset(store, tmp_path / "other.parquet")
    with pytest.raises(ImportFormatError, match="missing column.*caption"):
        import_dataset(store, tmp_path / "other.parquet", fmt="pickapic")
    with pytest.raises(ImportFormatError, match="missing column.*chosen"):
        import_dataset(store, tmp_path / "other.parquet", fmt="trl-parquet")


def test_bad_rows_name_the_row_and_write_nothing(store, tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    lines = [json.dumps(good), json.dumps(good | {"chosen": "c"}), "{not json"]
    (tmp_path / "x.jsonl").write_text("\n".join(lines))
    with pytest.raises(ImportFormatError, match="line 3: not valid JSON"):
        import_dataset(store, tmp_path / "x.jsonl")
    (tmp_path / "y.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(ImportFormatError, match="row 2: missing field 'rejected'"):
        import_dataset(store, tmp_path / "y.jsonl")
    (tmp_path / "z.jsonl").write_text(json.dumps(good | {"label": 0.2}) + "\n")
    with pytest.raises(ImportFormatError, match=r"row 1: label 0.2"):
        import_dataset(store, tmp_path / "z.jsonl")
    (tmp_path / "w.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ImportFormatError, match="not UTF-8"):
        import_dataset(store, tmp_path / "w.jsonl")
    assert store.query("SELECT COUNT(*) AS n FROM generations")[0]["n"] == 0
    assert store.query("SELECT COUNT(*) AS n FROM imports")[0]["n"] == 0


def test_bad_pickapic_rows(store, tmp_path):
    img = png_bytes((1, 2, 3))
    base = {"caption": ["c"], "jpg_0": [img], "jpg_1": [png_bytes((3, 2, 1))], "label_0": [1.0], "label_1": [0.0]}
    cases = [
        ({"label_0": [0.7], "label_1": [0.7]}, "are not a vote"),
        ({"jpg_1": [b"definitely not an image"]}, "not a readable image"),
        ({"caption": [""]}, "caption is empty"),
        ({"label_0": [None]}, "labels|label_0"),
    ]
    for i, (override, match) in enumerate(cases):
        cols = base | override
        if override.get("label_0") == [None]:
            cols["label_0"] = pa.array([None], pa.float64())
        pq.write_table(pa.table(cols), tmp_path / f"b{i}.parquet")
        with pytest.raises(ImportFormatError, match=match):
            import_dataset(store, tmp_path / f"b{i}.parquet")
    assert store.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 0


def test_import_never_executes_code(store, tmp_path):
    """A pickle or a dataset script is data we refuse, not code we run."""
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open('" + str(tmp_path / "pwned") + "', 'w').write('x')",))

    (tmp_path / "evil.parquet").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ImportFormatError):
        import_dataset(store, tmp_path / "evil.parquet")
    (tmp_path / "evil.py").write_text("open('pwned', 'w')")
    with pytest.raises(ImportFormatError):
        import_dataset(store, tmp_path / "evil.py", fmt="trl-parquet")
    assert not (tmp_path / "pwned").exists()
