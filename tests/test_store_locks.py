"""Opening the store twice in one process must not drop the first connection's file locks.

POSIX drops every lock a process holds on a file when any descriptor of that file is
closed. Reading palate.db's header with a plain open()/close() while a connection was
open let another process (a training run) think it was the last user, checkpoint and
delete the WAL under the app's connection: "file is not a database" until restart.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from storage import Store

WRITER = textwrap.dedent("""
    import sys
    from storage import Store
    for i in range(3):
        with Store.open(sys.argv[1]) as s:
            s.add_prompt(f"from the other process {i}")
""")


def _other_process_writes(data_dir) -> None:
    proc = subprocess.run([sys.executable, "-c", WRITER, str(data_dir)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_a_second_open_keeps_the_first_connection_usable(tmp_path):
    long_lived = Store.open(tmp_path)
    try:
        long_lived.add_prompt("first")
        assert long_lived.query("SELECT COUNT(*) AS n FROM prompts")[0]["n"] == 1
        for _ in range(3):
            with Store.open(tmp_path) as short:  # e.g. the app's run queue, opening and closing
                short.list_runs()
            _other_process_writes(tmp_path)  # e.g. a training run recording its progress, then exiting
            texts = [r["text"] for r in long_lived.query("SELECT text FROM prompts ORDER BY id")]
            assert texts[0] == "first" and len(texts) >= 4
            long_lived.add_prompt(f"still writable {len(texts)}")
    finally:
        long_lived.close()
