"""The package's public names (style rule 3)."""

from __future__ import annotations

import alerts


def test_alerts_package_exports_exactly_its_public_names() -> None:
    assert sorted(alerts.__all__) == [
        "AlertInbox",
        "AlertSettings",
        "AlertWorker",
        "EmailDelivery",
        "SmtpMailer",
        "SmtpSettings",
        "citizen_key",
    ]
    assert all(hasattr(alerts, name) for name in alerts.__all__)
