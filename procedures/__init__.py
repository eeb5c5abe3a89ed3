"""One-stop procedures on top of the exchange (DESIGN "The parts", issue 7): first the address
change — one submission, fanned out as durable, signed, idempotent steps to every registry
concerned, followed step by step and certified by the platform.

Modules: ``model`` (wire models), ``store`` (rows; Alembic branch ``procedures``),
``address_change`` (start, plan, preview, confirm), ``one_stop`` (the one-stop desk's calls to its
node), ``runner`` (the durable workflow runner), ``certificate`` (the signed summary), ``demo``
(one address change end to end), ``api`` (``build_router``; imports FastAPI, so it is not
re-exported here).
"""

from procedures.address_change import (
    RECIPIENTS,
    AddressChangeService,
    ConsentDesk,
    Recipient,
    validate_address,
    validate_move_date,
)
from procedures.certificate import sign_certificate, verify_certificate
from procedures.demo import DemoRun, demo_address_change
from procedures.model import (
    AddressChangeInput,
    ConfirmInput,
    ProcedureStatus,
    ProcedureView,
    RecipientPreview,
    StepResult,
    StepState,
    StepView,
)
from procedures.one_stop import ExchangeOutcome, OneStopClient
from procedures.runner import ClaimedStep, ProcedureRunner, backoff_s

__all__ = [
    "RECIPIENTS",
    "AddressChangeInput",
    "AddressChangeService",
    "ClaimedStep",
    "ConfirmInput",
    "ConsentDesk",
    "DemoRun",
    "ExchangeOutcome",
    "OneStopClient",
    "ProcedureRunner",
    "ProcedureStatus",
    "ProcedureView",
    "Recipient",
    "RecipientPreview",
    "StepResult",
    "StepState",
    "StepView",
    "backoff_s",
    "demo_address_change",
    "sign_certificate",
    "validate_address",
    "validate_move_date",
    "verify_certificate",
]
