"""The web edge shared by every HTTP face: problem+json mapping and bearer-token principals."""

from exchange.web.auth import bearer_principal
from exchange.web.body import read_body
from exchange.web.params import MAX_INT64
from exchange.web.problems import PROBLEM_BASE, install_problem_handlers, problem_response

__all__ = [
    "MAX_INT64",
    "PROBLEM_BASE",
    "bearer_principal",
    "install_problem_handlers",
    "problem_response",
    "read_body",
]
