"""The portal's public names, and that every message exists in both languages."""

from __future__ import annotations

import portal
from portal.i18n import MESSAGES


def test_portal_exports_exactly_its_public_names() -> None:
    assert sorted(portal.__all__) == ["build_portal", "verify_entry"]
    for name in portal.__all__:
        assert callable(getattr(portal, name))


def test_every_message_is_translated_into_japanese_and_english() -> None:
    assert set(MESSAGES["ja"]) == set(MESSAGES["en"])
    assert all(text.strip() for lang in MESSAGES.values() for text in lang.values())


def test_every_message_key_used_by_a_template_is_in_the_catalogue() -> None:
    import re
    from pathlib import Path

    templates = Path(portal.__file__).parent / "templates"
    used = {
        key
        for path in templates.glob("*.html")
        for key in re.findall(r"""t\(["']([a-z_.]+)["']\s*[,)]""", path.read_text(encoding="utf-8"))
    }
    assert used
    assert used <= set(MESSAGES["ja"])
