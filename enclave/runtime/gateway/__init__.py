"""Safety gateway: an OpenAI-compatible reverse proxy that enforces the usage policy.

Entry points: `serve` (`enclave gateway serve`), `approve` (`enclave approve`); for tests
and embedding, `prepare` + `start_gateway`. docs/GATEWAY.md specifies the policy language,
the approval protocol and the audit records.
"""

from enclave.runtime.gateway.client import approve, fetch_held, requester_headers
from enclave.runtime.gateway.policy import Policy, load_policy, parse_policy
from enclave.runtime.gateway.server import RunningGateway, prepare, serve, start_gateway

__all__ = [
    "Policy",
    "RunningGateway",
    "approve",
    "fetch_held",
    "load_policy",
    "parse_policy",
    "prepare",
    "requester_headers",
    "serve",
    "start_gateway",
]
