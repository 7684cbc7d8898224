"""Do a user's votes get through while others write? Two measurements on a fresh store, real processes.

1. Tight loops: N "API" writers vote as fast as they can while one "CLI" writer does the same, for
   --seconds; reports commits per writer (a fair store gives each a similar share).
2. A user's clicks during background writes: an import (a Pick-a-Pic file re-imported with --force,
   batch after batch), a trainer's progress writes (update_run every 0.2 s) and a voter that votes
   every 50 ms and times each vote (call to return); reports p50 / p99 / max vote latency.

    python bench/write_fairness.py [--seconds 20] [--api-writers 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIGHT = textwrap.dedent("""
    import sys, time
    from storage import Store
    d, a, b, until, who, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], float(sys.argv[6])
    s = Store.open(d)
    while time.time() < start:
        time.sleep(0.001)
    n = 0
    while time.time() < until:
        s.vote(a, b, "a", annotator=who)
        n += 1
    print(n)
""")

VOTER = textwrap.dedent("""
    import json, sys, time
    from storage import Store
    d, a, b, until = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = Store.open(d)
    lat = []
    while time.time() < until:
        t = time.perf_counter()
        s.vote(a, b, "b", annotator="user")
        lat.append(time.perf_counter() - t)
        time.sleep(0.05)
    print(json.dumps(lat))
""")

TRAINER = textwrap.dedent("""
    import sys, time
    from storage import Store
    d, run_id, until = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = Store.open(d)
    step = 0
    while time.time() < until:
        step += 1
        s.update_run(run_id, step=step, last_metrics={"step": step, "loss": 0.5})
        time.sleep(0.2)
    print(step)
""")

IMPORTER = textwrap.dedent("""
    import sys, time
    from storage import Store
    from storage.exchange import import_dataset
    d, path, until = sys.argv[1], sys.argv[2], float(sys.argv[3])
    s = Store.open(d)
    n = 0
    while time.time() < until:
        n += import_dataset(s, path, force=True, annotator=f"import{n}").judgments
    print(n)
""")


def _py(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _setup(d: Path) -> tuple[int, int, int]:
    from storage import Store
    from tests.conftest import add_images

    with Store.open(d) as s:
        a, b = add_images(s, "p", 2)
        run = s.create_run(modality="image", method="diffusion-dpo", base_model="m", config={})
    return a.id, b.id, run.id


def _import_file(d: Path, rows: int) -> Path:
    """A Pick-a-Pic file of ``rows`` votes (distinct small PNGs), written by Palate's own export."""
    from storage import Store
    from storage.exchange import export_dataset
    from tests.conftest import add_images

    src = d.parent / "source"
    with Store.open(src) as s:
        for p in range(rows // 10):
            g = add_images(s, f"prompt {p}", 4, offset=p * 4)
            for i in range(10):
                s.vote(g[i % 4].id, g[(i + 1) % 4].id, "a", annotator=f"a{i}")
        out = d.parent / "rows.parquet"
        export_dataset(s, out)
    return out


def tight_loops(seconds: float, api_writers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "d"
        a, b, _ = _setup(d)
        start = time.time() + 2.0
        until = start + seconds
        procs = {f"api{i}": _py(TIGHT, d, a, b, until, f"api{i}", start) for i in range(api_writers)}
        procs["cli"] = _py(TIGHT, d, a, b, until, "cli", start)
        counts = {}
        for who, p in procs.items():
            out, err = p.communicate(timeout=seconds + 600)
            assert p.returncode == 0, err
            counts[who] = int(out.split()[-1])
    return {"seconds": seconds, "commits": counts,
            "cli_share": counts["cli"] / max(1, sum(counts.values())), "fair_share": 1 / (api_writers + 1)}


def latency_under_background(seconds: float, rows: int = 400) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "d"
        a, b, run_id = _setup(d)
        path = _import_file(d, rows)
        until = time.time() + seconds
        importer = _py(IMPORTER, d, path, until)
        trainer = _py(TRAINER, d, run_id, until)
        time.sleep(1.0)  # both are writing before the first vote
        voter = _py(VOTER, d, a, b, until)
        out, err = voter.communicate(timeout=seconds + 600)
        assert voter.returncode == 0, err
        lat = sorted(json.loads(out))
        imported = int(importer.communicate(timeout=seconds + 600)[0].split()[-1])
        steps = int(trainer.communicate(timeout=seconds + 600)[0].split()[-1])
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    return {"seconds": seconds, "votes": len(lat), "p50_ms": round(q(0.5), 1), "p99_ms": round(q(0.99), 1),
            "max_ms": round(lat[-1] * 1000, 1), "mean_ms": round(statistics.mean(lat) * 1000, 1),
            "imported_rows": imported, "trainer_writes": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--api-writers", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = {"tight_loops": tight_loops(args.seconds, args.api_writers),
              "latency_under_background": latency_under_background(args.seconds)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
