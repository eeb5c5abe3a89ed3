"""The web edge shared by every HTTP face: problem+json mapping, bearer-token principals, bounded
bodies and parameters, redirects that stay on the caller's origin."""

from exchange.web.auth import bearer_principal
from exchange.web.body import read_body
from exchange.web.params import MAX_INT64
from exchange.web.problems import PROBLEM_BASE, install_problem_handlers, problem_response
from exchange.web.redirects import RelativeRedirects, local_url

__all__ = [
    "MAX_INT64",
    "PROBLEM_BASE",
    "RelativeRedirects",
    "bearer_principal",
    "install_problem_handlers",
    "local_url",
    "problem_response",
    "read_body",
]
