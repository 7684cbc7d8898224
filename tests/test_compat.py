"""The start-up check for installed package combinations known not to work."""
from __future__ import annotations

from app.compat import KNOWN, Conflict, conflicts


def test_the_locked_environment_has_no_known_conflict():
    """What the lock installs (this test environment) must not be a combination Palate knows to fail."""
    assert conflicts() == []


def test_each_known_conflict_is_named_with_both_packages_and_what_works():
    cases = {
        ("peft", "0.17.1", "transformers", "5.24.0"): "use peft>=0.18",
        ("diffusers", "0.35.1", "transformers", "5.0.0"): "FLAX_WEIGHTS_NAME",
        ("diffusers", "0.39.0", None, None): "use diffusers>=0.40",
        ("gradio", "5.6.0", "huggingface-hub", "1.33.0"): "HfFolder",
        ("gradio", "5.50.0", None, None): "use gradio>=6",
        ("transformers", "4.57.6", None, None): "use transformers>=5",
    }
    for (a, va, b, vb), expected in cases.items():
        versions = {a: va, **({b: vb} if b else {})}
        lines = [line for line in conflicts(versions) if expected in line]
        assert lines and f"{a} {va}" in lines[0], (versions, conflicts(versions))
        if b:
            assert f"with {b} {vb}" in lines[0]
            assert not any(f"with {b}" in line for line in conflicts({a: va}))  # the pair, not the package alone
    fine = {"peft": "0.21.2", "transformers": "5.24.0", "diffusers": "0.42.1", "gradio": "6.31.0",
            "huggingface-hub": "2.4.0"}
    assert conflicts(fine) == []
    assert conflicts({"peft": "0.17.1", "transformers": "4.57.6"}) == [conflicts({"transformers": "4.57.6"})[0]]


def test_a_line_is_printed_at_start_up(capsys, monkeypatch):
    import app.compat as compat
    from app.cli import main

    monkeypatch.setattr(compat, "KNOWN", (Conflict("pytest", ">=0", None, "", "a test conflict", "use nothing"),))
    monkeypatch.setattr(compat, "conflicts", lambda *a, **k: conflicts(known=compat.KNOWN))
    main(["db", "info", "--data-dir", str(__import__("tempfile").mkdtemp())])
    err = capsys.readouterr().err
    assert "warning: pytest" in err and "is known not to work with Palate (a test conflict); use nothing" in err
    assert len(KNOWN) >= 6
