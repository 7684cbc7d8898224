"""Inputs a careless user (or an attacker) gives: each gets one clear line and changes nothing.

From the hardening battery: numbers too large for SQLite or a socket, media that is not what its
modality says, empty or mistyped import files, a full disk (a real RLIMIT_FSIZE), and an adapter
of another model's shape.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from storage import Store
from tests.conftest import ROOT, SLOW, png_bytes, run_cli


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one `error:` line and no traceback; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:") or ": error:" in ln]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def _counts(data_dir) -> tuple[int, int, int]:
    with Store.open(data_dir) as s:
        n = lambda t: s.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]  # noqa: E731
        return n("generations"), n("judgments"), n("imports")


def test_numbers_too_large(tmp_path):
    d = tmp_path / "d"
    line = _one_error_line(run_cli("vote", "1", "1180591620717411303424", "--choice", "a", data_dir=d))
    assert "is not an id: ids are whole numbers from 1 to 9223372036854775807" in line
    line = _one_error_line(run_cli("vote", "--ranking", "3", "99999999999999999999999", data_dir=d))
    assert "ranking entries are generation ids" in line
    line = _one_error_line(run_cli("ui", "--port", "99999", data_dir=d))
    assert "port 99999 is out of range: use 1 to 65535" in line
    line = _one_error_line(run_cli("export", "adapter", "0", str(tmp_path / "x"), data_dir=d))
    assert "is not an id" in line


def test_media_must_be_what_its_modality_says(tmp_path):
    d = tmp_path / "d"
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "random.bin").write_bytes(os.urandom(3000))
    (tmp_path / "cut.png").write_bytes(png_bytes((1, 2, 3), size=64)[:60])  # a PNG header, then nothing
    (tmp_path / "ok.png").write_bytes(png_bytes((1, 2, 3)))
    cases = [("empty.png", "image", "is empty (0 bytes)"),
             ("random.bin", "image", "is not a recognised media file, but image candidates must be image files"),
             ("cut.png", "image", "is not a readable image"),
             ("random.bin", "text", "is not UTF-8 text")]
    for name, modality, message in cases:
        line = _one_error_line(run_cli("add", str(tmp_path / name), "--modality", modality, "--prompt", "p",
                                       "--model", "m", data_dir=d))
        assert message in line and "nothing was stored" in line
    assert _counts(d)[0] == 0
    # a modality declares its media family; storage holds it to that (here one of audio)
    with Store.open(d) as s:
        try:
            s.add_generation(modality="music", prompt="p", model="m", media=png_bytes((1, 2, 3)), media_family="audio/")
        except Exception as e:  # noqa: BLE001
            assert "is image/png, but music candidates must be audio files; nothing was stored" in str(e), e
        else:
            raise AssertionError("an image stored as audio")
    assert _counts(d)[0] == 0
    ok = run_cli("add", str(tmp_path / "ok.png"), "--modality", "image", "--prompt", "p", "--model", "m", data_dir=d)
    assert ok.returncode == 0 and _counts(d)[0] == 1


def test_import_files_must_hold_rows_of_the_right_types(tmp_path):
    d = tmp_path / "d"
    (tmp_path / "zero.jsonl").write_bytes(b"")
    line = _one_error_line(run_cli("import", str(tmp_path / "zero.jsonl"), data_dir=d))
    assert "is empty (0 bytes); nothing was imported" in line
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert "holds no rows" in _one_error_line(run_cli("import", str(tmp_path / "blank.jsonl"), data_dir=d))
    imgs = [png_bytes((i, 0, 0)) for i in range(6)]
    pq.write_table(pa.table({"caption": pa.array(range(5), pa.int64()), "jpg_0": imgs[:5], "jpg_1": imgs[1:],
                             "label_0": [1.0] * 5, "label_1": [0.0] * 5}), tmp_path / "int-caption.parquet")
    line = _one_error_line(run_cli("import", str(tmp_path / "int-caption.parquet"), data_dir=d))
    assert "column caption is int64, but in the Pick-a-Pic format it is text" in line
    pq.write_table(pa.table({"prompt": ["q"], "chosen": [1.5], "rejected": ["b"]}), tmp_path / "num.parquet")
    line = _one_error_line(run_cli("import", str(tmp_path / "num.parquet"), data_dir=d))
    assert "column chosen is double" in line
    assert _counts(d) == (0, 0, 0)


def _limited(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_full_disk_says_so_and_writes_nothing(tmp_path):
    """A real write limit (RLIMIT_FSIZE: write() fails with EFBIG, as on a full disk): every command
    says the disk or the limit is full and that nothing was written -- not that the database is damaged."""
    d = tmp_path / "d"
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(png_bytes((i, 9, 9)))
    gens = json.loads(run_cli("add", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--prompt", "p", "--model", "m",
                              "--modality", "image", "--json", data_dir=d, check=True).stdout)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    before = _counts(d)
    env = {k: v for k, v in os.environ.items() if k != "PALATE_DATA_DIR"}
    commands = [["vote", str(gens[0]["id"]), str(gens[1]["id"]), "--choice", "a"],
                ["add", str(tmp_path / "0.png"), "--prompt", "p2", "--model", "m", "--modality", "image"],
                ["import", str(tmp_path / "rows.jsonl")],
                ["export", "dataset", str(tmp_path / "out.parquet")]]
    for args in commands:
        proc = subprocess.run([sys.executable, "-m", "app", *args, "--data-dir", str(d)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=SLOW, preexec_fn=_limited(1024))
        line = _one_error_line(proc)
        assert "could not write" in line and "ulimit -f" in line and "nothing was written" in line.lower(), line
        assert "damaged or not a Palate database" not in line
    assert _counts(d) == before and not (tmp_path / "out.parquet").exists()
    # the limit reached with the store already open: a vote's commit, an export's file
    script = (
        "import sys; from storage import Store, DiskFullError; from storage.exchange import export_dataset\n"
        f"s = Store.open({str(d)!r})\n"
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
        "for what, f in (('vote', lambda: s.vote(" + str(gens[0]["id"]) + ", " + str(gens[1]["id"]) + ", 'a')),"
        f" ('export', lambda: export_dataset(s, {str(tmp_path / 'out2.parquet')!r}))):\n"
        "    try:\n        f(); print(what, 'WROTE')\n"
        "    except DiskFullError as e:\n        print(what, 'REFUSED', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=SLOW)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("REFUSED") == 2 and "WROTE" not in proc.stdout, proc.stdout
    assert _counts(d) == before and not (tmp_path / "out2.parquet").exists()
    from storage.integrity import check_store

    with Store.open(d) as s:
        assert check_store(s).ok


def test_an_adapter_of_another_shape_is_one_line(tmp_path):
    import torch

    from alignment.config import TrainConfig
    from alignment.train import add_lora, save_adapter
    from modalities.image.adapter import ImageAdapter
    from modalities.protocol import ModelRef
    from tests import tiny_pipelines

    sd = tiny_pipelines.save(tiny_pipelines.tiny_sd(), tmp_path / "sd")
    pixel = tiny_pipelines.save(tiny_pipelines.tiny_pixel(), tmp_path / "pixel")
    a = ImageAdapter.load(ModelRef(str(sd)))
    with torch.no_grad():
        add_lora(a.trainable_module(), TrainConfig(modality="image", method="diffusion-dpo", model=str(sd),
                                                   data_dir=str(tmp_path)), a.lora_target_modules())
    out = save_adapter(a, a.trainable_module(), tmp_path / "adapter")
    (out / "palate.json").unlink()  # an adapter from elsewhere: the base check cannot catch it
    proc = run_cli("generate", "--model", str(pixel), "--adapter", str(out), "--prompt", "a red circle", "-n", "1",
                   "--steps", "1", data_dir=tmp_path / "d")
    line = _one_error_line(proc)
    assert f"adapter {str(out)!r} does not fit {str(pixel)!r}" in line and "more lines like it" in line
    assert sum("size mismatch" in ln for ln in proc.stderr.splitlines()) == 1  # only inside the error line
