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
    import sys, time
    from storage import Store
    data_dir, a, b, c, n, who = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    start = float(sys.argv[7]) if len(sys.argv) > 7 else None
    pause = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
    s = Store.open(data_dir)
    if start:
        while time.time() < start:
            time.sleep(0.001)
    for i in range(n):
        if i % 5 == 4:
            jid = s.rank([c, a, b], annotator=who)
        else:
            jid = s.vote(a, b, "ab"[i % 2], annotator=who)
        print(jid, flush=True)   # printed only after the commit returned
        if pause:
            # SQLite's busy handler is not fair: a writer in a tight loop can keep the
            # lock while the other sleeps and retries (it waits, it never fails). Real
            # writers pause between votes and log lines; so do these.
            time.sleep(pause)
    print("done", flush=True)
    """
)


def _writer(data_dir, ids, n, who, start=None, pause=0.0):
    args = [sys.executable, "-c", WRITER, str(data_dir), *map(str, ids), str(n), who]
    if start is not None:
        args += [repr(start), repr(pause)]
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
    start = time.time() + 1.5  # both begin writing at the same instant
    procs = [_writer(data_dir, ids, n, who, start, 0.003) for who in ("app", "trainer")]
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
