"""The portal: server-rendered web pages for citizens (consents, who accessed my data) and
auditors (log search, proofs, export, checkpoint history, chart), in Japanese and English.

See ``portal.app.build_portal`` and docs/portal.md.
"""

from portal.app import build_portal, verify_entry

__all__ = ["build_portal", "verify_entry"]
