"""Every setting an operator can give is written down (README.md, docs/)."""

from __future__ import annotations


def test_every_environment_variable_the_settings_read_is_documented():
    """39 settings (the platform's fee among them) were read from the environment and named
    nowhere an operator would look."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    settings_text = (root / "config" / "settings.py").read_text()
    names = set(re.findall(r'env(?:_bool)?\("([A-Z][A-Z0-9_]+)"', settings_text))
    documented = (root / "README.md").read_text() + "".join(
        p.read_text() for p in (root / "docs").glob("*.md")
    )

    assert names, "no settings found: the pattern no longer matches config/settings.py"
    assert sorted(n for n in names if n not in documented) == []
