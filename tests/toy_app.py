"""``python tests/toy_app.py ARGS``: ``python -m app ARGS`` with the toy modality registered -- the one
line a plugin needs (``modalities.registry.register("tests.toy_modality:SPEC")``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modalities import registry  # noqa: E402

registry.register("tests.toy_modality:SPEC")

from app.cli import main  # noqa: E402

raise SystemExit(main(sys.argv[1:]))
