"""Citizen alerts (issue 15 item 6, docs/alerts.md): a citizen is told when their data is read
outside any consent they gave, by a recipient never seen before, in an unusual volume, or when a
consumer is refused on their data.

The rules are Rego (``policies/rego/alerts.rego``, evaluated by ``policies.alerts``); the node's
``AlertWorker`` evaluates them on each new entry of its log after it is committed (never on the
exchange path) and stores each alert once; ``AlertInbox`` is the citizen's inbox and settings;
``EmailDelivery`` sends the alerts the citizen wants by e-mail through SMTP. Modules: ``store``
(rows), ``worker``, ``inbox``, ``mail``, ``api`` (``build_router``; imports FastAPI, so it is not
re-exported here).
"""

from alerts.inbox import AlertInbox, AlertSettings
from alerts.mail import EmailDelivery, SmtpMailer, SmtpSettings
from alerts.worker import AlertWorker, citizen_key

__all__ = [
    "AlertInbox",
    "AlertSettings",
    "AlertWorker",
    "EmailDelivery",
    "SmtpMailer",
    "SmtpSettings",
    "citizen_key",
]
