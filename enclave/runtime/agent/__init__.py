"""The monitoring agent: re-hashes the deployed bundle against its signed statement, checks
running images, hardening drift and canary prompts, records every result in its own audit
log and serves Prometheus metrics. docs/GATEWAY.md, "Monitoring agent", is the contract.

Entry points: `run` (`enclave agent run`), `check_once` (`--once` with a report),
`record_baselines` (canary baselines at build time).
"""

from enclave.runtime.agent.canaries import load_canaries, record_baselines
from enclave.runtime.agent.daemon import Agent, AgentConfig, AgentReport, AgentTLS, check_once, run
from enclave.runtime.agent.results import CheckResult, Finding

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentReport",
    "AgentTLS",
    "CheckResult",
    "Finding",
    "check_once",
    "load_canaries",
    "record_baselines",
    "run",
]
