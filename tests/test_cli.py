"""The command line, run as a user would (subprocesses)."""
from __future__ import annotations

import json

import pytest

from storage.schema import MIGRATIONS
from tests.conftest import png_bytes, run_cli

COMMANDS = [
    [], ["db"], ["db", "check"], ["db", "info"], ["add"], ["list"], ["vote"], ["export"], ["export", "dataset"],
    ["generate"], ["train"], ["export", "adapter"],
    ["import"], ["stats"], ["ui"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_every_command_has_help(cmd):
    proc = run_cli(*cmd, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m app" in proc.stdout


def test_help_names_the_web_app():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "starts the web app on http://127.0.0.1:7860" in proc.stdout


@pytest.mark.parametrize("extra", [["--host", "0.0.0.0"], ["--share"]], ids=["host", "share"])
def test_serving_beyond_loopback_needs_auth(tmp_path, extra):
    for argv in (["ui", *extra], extra):  # `python -m app ui ...` and `python -m app ...`
        proc = run_cli(*argv, data_dir=tmp_path / "d")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "needs --auth USER:PASSWORD" in proc.stderr


def test_auth_must_be_user_colon_password(tmp_path):
    proc = run_cli("ui", "--auth", "justaname", data_dir=tmp_path / "d")
    assert proc.returncode == 2
    assert "--auth takes USER:PASSWORD" in proc.stderr


def test_full_scripted_flow(tmp_path):
    d = tmp_path / "data"
    files = []
    for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        f = tmp_path / f"c{i}.png"
        f.write_bytes(png_bytes(c))
        files.append(str(f))
    out = run_cli("add", "--prompt", "a red square", "--modality", "image", "--model", "my/model",
                  "--seed", "1", "--seed", "2", "--seed", "3", "--param", "steps=30", "--param", "sampler=euler",
                  *files, "--json", data_dir=d, check=True)
    ids = [g["id"] for g in json.loads(out.stdout)]
    assert ids == [1, 2, 3]
    listing = json.loads(run_cli("list", "--json", data_dir=d, check=True).stdout)
    assert listing[0]["params"] == {"steps": 30, "sampler": "euler"} and listing[0]["seed"] == 1
    assert run_cli("vote", "1", "2", "--choice", "a", data_dir=d, check=True).stdout.strip() == "stored vote as judgment 1"
    run_cli("vote", "1", "2", "--choice", "a", "--strength", "0.9", "--annotator", "clip-judge", "--ai", data_dir=d, check=True)
    run_cli("vote", "2", "3", "--choice", "both-bad", data_dir=d, check=True)
    r = json.loads(run_cli("vote", "--ranking", "3", "1=2", "--json", data_dir=d, check=True).stdout)
    assert r == {"judgment_id": 4, "kind": "ranking"}
    stats = json.loads(run_cli("stats", "--json", data_dir=d, check=True).stdout)
    assert stats[0]["pairwise_votes"] == 3 and stats[0]["rankings"] == 1 and stats[0]["choices"]["both-bad"] == 1
    text = run_cli("stats", data_dir=d, check=True).stdout
    assert "my/model" in text and "train pairs" in text
    assert run_cli("vote", "--undo", data_dir=d, check=True).stdout.strip() == "deleted judgment 4"
    out = tmp_path / "x.parquet"
    wrote = run_cli("export", "dataset", str(out), data_dir=d, check=True).stdout
    assert "wrote 1 rows" in wrote and "left out 1 soft label" in wrote and "left out 1 both-bad" in wrote
    imp = run_cli("import", str(out), data_dir=tmp_path / "other", check=True).stdout
    assert "imported 1 judgment(s) and 2 new candidate(s)" in imp
    again = run_cli("import", str(out), data_dir=tmp_path / "other")
    assert again.returncode == 2 and "already imported" in again.stderr
    check = run_cli("db", "check", data_dir=d, check=True).stdout
    assert "ok: no problems found" in check
    info = json.loads(run_cli("db", "info", "--json", data_dir=d, check=True).stdout)
    assert info["schema_version"] == len(MIGRATIONS) and info["counts"]["judgments"] == 3


def test_data_dir_from_environment(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = dict(os.environ, PALATE_DATA_DIR=str(tmp_path / "envdir"))
    proc = subprocess.run([sys.executable, "-m", "app", "db", "info", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert json.loads(proc.stdout)["data_dir"] == str(tmp_path / "envdir")
    proc = subprocess.run([sys.executable, "-m", "app", "--data-dir", str(tmp_path / "flag"), "db", "info", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert json.loads(proc.stdout)["data_dir"] == str(tmp_path / "flag")


@pytest.mark.parametrize(
    "args, message",
    [
        (["vote", "1", "2", "--choice", "a"], "unknown generation ids 1, 2"),
        (["vote", "1", "--choice", "a"], "two generation ids"),
        (["vote", "--ranking", "1", "x"], "ranking entries are generation ids"),
        (["vote", "--undo"], "no judgment by 'you' to undo"),
        (["import", "/nonexistent/file.parquet"], "does not exist"),
        (["add", "--prompt", "p", "--modality", "image", "--model", "m", "/nonexistent.png"], "do not exist; nothing was added"),
        (["add", "--prompt", "", "--modality", "image", "--model", "m", __file__], "prompt is empty"),
        (["add", "--prompt", "p", "--modality", "image", "--model", "m", "--param", "oops", __file__], "KEY=VALUE"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, args, message):
    proc = run_cli(*args, data_dir=tmp_path / "d")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_a_database_via_cli(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "palate.db").write_text("hello")
    proc = run_cli("stats", data_dir=d)
    assert proc.returncode == 2 and "is not an SQLite database" in proc.stderr


def test_db_check_exit_status_and_repair(tmp_path):
    d = tmp_path / "d"
    f = tmp_path / "a.png"
    f.write_bytes(png_bytes((1, 2, 3)))
    run_cli("add", "--prompt", "p", "--modality", "image", "--model", "m", str(f), data_dir=d, check=True)
    for p in (d / "media").rglob("*.png"):
        p.rename(p.with_suffix(".old"))
    proc = run_cli("db", "check", data_dir=d)
    assert proc.returncode == 1 and "missing media file" in proc.stdout and "try --repair" in proc.stdout
    proc = run_cli("db", "check", "--repair", data_dir=d)
    assert proc.returncode == 0 and "[repaired]" in proc.stdout
    assert run_cli("db", "check", data_dir=d).returncode == 0


def test_the_app_with_a_token_refuses_requests_without_login(tmp_path):
    """`python -m app --port P ui --token T`: options before or after `ui` count; no login, no data."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.conftest import ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "abcdefghijklmnop"
    env = {k: v for k, v in os.environ.items() if k not in ("PALATE_DATA_DIR", "PALATE_AUTH", "PALATE_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "ui", "--token", token, "--no-preload",
                             "--data-dir", str(tmp_path / "d")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def status(path: str, data: bytes | None = None) -> int:
        try:
            return urllib.request.urlopen(url + path, data=data, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() - t0 < 600, "the app did not start"
                time.sleep(0.2)
        assert status("/config") == 401 and status("/gradio_api/info") == 401
        assert status("/login", urllib.parse.urlencode({"username": "me", "password": "wrong"}).encode()) == 400
        assert status("/login", urllib.parse.urlencode({"username": "me", "password": token}).encode()) == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_short_token_is_refused(tmp_path):
    proc = run_cli("ui", "--token", "short", data_dir=tmp_path / "d")
    assert proc.returncode == 2 and "at least 12 characters" in proc.stderr
