"""Crash safety and concurrent writers, with real processes."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from storage import Store
from storage.integrity import check_store
from tests.conftest import ROOT, add_images

WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    from storage import Store
    data_dir, a, b, c, n, who = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    together = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    pause = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
    s = Store.open(data_dir)
    if together:  # a barrier: start writing when all the writers are ready (a loaded machine starts them slowly)
        pathlib.Path(data_dir, f"ready-{who}").touch()
        while len(list(pathlib.Path(data_dir).glob("ready-*"))) < together:
            time.sleep(0.001)
    for i in range(n):
        if i % 5 == 4:
            jid = s.rank([c, a, b], annotator=who)
        else:
            jid = s.vote(a, b, "ab"[i % 2], annotator=who)
        print(jid, flush=True)   # printed only after the commit returned
        if pause:
            time.sleep(pause)
    print("done", flush=True)
    """
)


def _writer(data_dir, ids, n, who, together=0, pause=0.0):
    args = [sys.executable, "-c", WRITER, str(data_dir), *map(str, ids), str(n), who]
    if together:
        args += [str(together), repr(pause)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_burst_loses_no_committed_vote(data_dir):
    with Store.open(data_dir) as s:
        ids = [g.id for g in add_images(s, "p", 3)]
    rng = random.Random(0)
    committed: list[int] = []
    for round_ in range(4):
        proc = _writer(data_dir, ids, 100_000, f"w{round_}")
        target = rng.randint(20, 120)
        seen = []
        while len(seen) < target:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            seen.append(int(line))
        time.sleep(rng.random() * 0.05)  # land the kill anywhere in the next writes
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # lines printed before the kill landed are commits too
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        seen += [int(x) for x in rest.split() if x.isdigit()]
        committed += seen
    with Store.open(data_dir) as s:
        report = check_store(s)
        assert report.ok, report.problems
        stored = {r["id"] for r in s.query("SELECT id FROM judgments")}
        assert set(committed) <= stored, f"lost: {sorted(set(committed) - stored)[:10]}"
        # no half-written judgment: pairwise ones have 2 items, rankings 3
        bad = s.query(
            "SELECT j.id, j.kind, COUNT(i.position) AS n FROM judgments j LEFT JOIN judgment_items i"
            " ON i.judgment_id = j.id GROUP BY j.id HAVING (j.kind = 'pairwise' AND n != 2)"
            " OR (j.kind = 'ranking' AND n != 3)"
        )
        assert bad == []
        # the store still takes votes
        s.vote(ids[0], ids[1], "tie")


@pytest.mark.slow
def test_two_processes_write_at_once(data_dir):
    with Store.open(data_dir) as s:
        ids = [g.id for g in add_images(s, "p", 3)]
    n = 150
    procs = [_writer(data_dir, ids, n, who, together=2) for who in ("app", "trainer")]  # tight loops, no pauses
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "database is locked" not in err
        assert out.split()[-1] == "done"
    with Store.open(data_dir) as s:
        counts = {r["name"]: r["n"] for r in s.query(
            "SELECT a.name, COUNT(*) AS n FROM judgments j JOIN annotators a ON a.id = j.annotator_id GROUP BY a.name")}
        assert counts == {"app": n, "trainer": n}
        # both writers were really interleaved, not one after the other
        order = [r["name"] for r in s.query(
            "SELECT a.name FROM judgments j JOIN annotators a ON a.id = j.annotator_id ORDER BY j.id")]
        switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
        assert switches > 10, switches
        assert check_store(s).ok


TIGHT = textwrap.dedent(
    """
    import sys, time
    from storage import Store
    d, a, b, start, until, who = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    s = Store.open(d)
    while time.time() < start:
        time.sleep(0.001)
    n = 0
    while time.time() < until:
        s.vote(a, b, "a", annotator=who)
        n += 1
    print(n)
    """
)


@pytest.mark.slow
def test_writers_in_tight_loops_share_the_store_fairly(data_dir):
    """Writers queue in the kernel (an flock beside the database) before SQLite's lock, so none is
    starved by another committing in a tight loop (SQLite's busy handler alone let one writer of four
    take 62% of the commits; bench/write_fairness.py measures it). Counts, not timings: each of four
    writers gets at least a third of a fair share."""
    with Store.open(data_dir) as s:
        a, b = (g.id for g in add_images(s, "p", 2))
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", TIGHT, str(data_dir), str(a), str(b), repr(start),
                               repr(start + 4.0), f"w{i}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        assert p.returncode == 0, err
        counts.append(int(out.split()[-1]))
    total = sum(counts)
    assert total > 0 and min(counts) >= total / 4 / 3, counts


IMPORTER = textwrap.dedent(
    """
    import sys
    from storage import Store
    from storage.exchange import import_dataset
    print(import_dataset(Store.open(sys.argv[1]), sys.argv[2], force=True).judgments, flush=True)
    """
)

PROGRESS = textwrap.dedent(
    """
    import sys
    from storage import Store
    s = Store.open(sys.argv[1])
    for step in range(1, 10**9):
        s.update_run(int(sys.argv[2]), step=step, last_metrics={"step": step, "loss": 1.0 / step})
        print(step, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_during_an_import_and_progress_writes(data_dir, tmp_path):
    """Kill an import and a trainer's progress writes mid-way, several times: the store stays whole
    (no half-written judgment or candidate), and running the import again completes it."""
    from storage.exchange import export_dataset

    src = tmp_path / "src"
    with Store.open(src) as s:
        for p in range(30):
            g = add_images(s, f"prompt {p}", 3, offset=p * 3)
            s.vote(g[0].id, g[1].id, "a")
            s.vote(g[1].id, g[2].id, "b")
        export_dataset(s, tmp_path / "rows.parquet")
    with Store.open(data_dir) as s:
        run = s.create_run(modality="image", method="diffusion-dpo", base_model="m", config={})
    rng = random.Random(1)
    for round_ in range(3):
        imp = subprocess.Popen([sys.executable, "-c", IMPORTER, str(data_dir), str(tmp_path / "rows.parquet")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        prog = subprocess.Popen([sys.executable, "-c", PROGRESS, str(data_dir), str(run.id)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(rng.randint(5, 40)):  # both are writing
            assert prog.stdout.readline(), prog.stderr.read()
        time.sleep(rng.random() * 0.3)
        for p in (imp, prog):
            p.kill()
            p.wait()
        with Store.open(data_dir) as s:
            report = check_store(s)
            assert report.ok, report.problems
            half = s.query(
                "SELECT j.id FROM judgments j LEFT JOIN judgment_items i ON i.judgment_id = j.id"
                " GROUP BY j.id HAVING COUNT(i.position) != 2")
            assert half == []
            last = s.get_run(run.id)
            assert last.last_metrics is None or last.last_metrics["step"] == last.step
    done = subprocess.run([sys.executable, "-c", IMPORTER, str(data_dir), str(tmp_path / "rows.parquet")], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    with Store.open(data_dir) as s:
        assert s.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 60  # every row once, none twice
        assert check_store(s).ok
