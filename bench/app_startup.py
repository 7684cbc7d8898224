"""How long `python -m app` takes to give a usable page, and to have its default image model loaded.

    python bench/app_startup.py [--runs 3]

Starts the app on a fresh temporary data directory each run, drives Debian's chromium
(headless, as the browser tests do) and reports seconds from process start to: the
server answering, the page usable (the Generate button rendered), and the status line
saying the built-in image model is ready. Figures, not assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def one_run(browser) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "app", "--data-dir", f"{tmp}/data", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            while True:
                try:
                    urllib.request.urlopen(url, timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            served = time.time() - t0
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#generate-btn")
            usable = time.time() - t0
            page.wait_for_function("() => document.getElementById('top-status').innerText"
                                   ".includes('shapes-diffusion: ready')", timeout=120_000)
            ready = time.time() - t0
            page.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"served_s": round(served, 2), "usable_page_s": round(usable, 2), "model_ready_s": round(ready, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        runs = [one_run(browser) for _ in range(args.runs)]
        browser.close()
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out = {"runs": runs, "median": summary}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
