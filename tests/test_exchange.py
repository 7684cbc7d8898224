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


def test_pickapic_export_loads_with_datasets(store, tmp_path):
    import datasets

    a, b, c = add_images(store, "two small red circles", 3)
    store.vote(a.id, b.id, "a")
    store.vote(a.id, b.id, "tie")
    store.vote(b.id, c.id, "b", strength=0.25)
    store.vote(a.id, c.id, "both-bad")
    out = tmp_path / "pairs.parquet"
    report = export_dataset(store, out)
    assert report.rows == 4
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 4
    for col in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1", "seed_0", "seed_1"):
        assert col in ds.column_names
    rows = sorted(ds, key=lambda r: r["created_at"])
    assert [(r["label_0"], r["label_1"]) for r in rows] == [(1.0, 0.0), (0.5, 0.5), (0.25, 0.75), (0.0, 0.0)]
    assert rows[0]["jpg_0"] == store.media_bytes(a) and rows[0]["best_image_uid"] == a.media_sha256
    assert rows[1]["best_image_uid"] == ""
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(rows[0]["jpg_1"])).size == (8, 8)
    assert rows[0]["caption"] == "two small red circles" and rows[0]["seed_0"] == a.seed


def test_trl_export_formats(store, tmp_path):
    g = _text_gens(store, "What is 2+3?", ["5", "6", "five"])
    store.vote(g[0].id, g[1].id, "a")
    store.vote(g[1].id, g[2].id, "b", strength=0.2)
    store.vote(g[0].id, g[2].id, "tie")
    r = export_dataset(store, tmp_path / "t.jsonl", fmt="trl-jsonl")
    assert r.rows == 2 and r.skipped == {"tie": 1}
    rows = _read_rows(tmp_path / "t.jsonl")
    assert [(x["prompt"], x["chosen"], x["rejected"], x["label"]) for x in rows] == [
        ("What is 2+3?", "5", "6", 1.0),
        ("What is 2+3?", "five", "6", 0.8),
    ]
    export_dataset(store, tmp_path / "t.parquet", fmt="trl-parquet")
    assert _read_rows(tmp_path / "t.parquet") == rows
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
        assert other.stats()[0]["choices"]["both-bad"] == 1


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


def test_import_trl_conversational(store, tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
        {"prompt": "3+3?", "chosen": "6", "rejected": "7"},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = import_dataset(store, tmp_path / "c.jsonl", annotator="ultrafeedback", annotator_kind="ai")
    assert r.judgments == 2
    (p1, p2) = sorted(store.preference_pairs(modality="text"), key=lambda p: p.prompt)
    assert p1.prompt == "2+2?" and store.media_bytes(store.get_generation(p1.winner_id)) == b"4"
    assert store.get_judgment(1).annotator_kind == "ai"
    bad = [{"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "chosen": "a", "rejected": "b"}]
    (tmp_path / "multi.jsonl").write_text(json.dumps(bad[0]) + "\n")
    with pytest.raises(ImportFormatError, match="row 1: prompt: only single-turn"):
        import_dataset(store, tmp_path / "multi.jsonl")


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
        (b"", "not a readable Parquet"),
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
    with pytest.raises(ImportFormatError, match="missing column.*prompt"):
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
