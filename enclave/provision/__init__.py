"""enclave.provision: preflight and push over SSH (paramiko, pinned host keys), site.yml through
ansible-runner from the verified bundle, a run report and a CKLB checklist per host.

`provision(Options)` runs it all; `check_hosts` is preflight alone.
"""

from enclave.provision.preflight import HostPreflight
from enclave.provision.provision import (
    Options,
    Outcome,
    check_hosts,
    preflight_failure,
    preflight_report,
    provision,
)

__all__ = [
    "HostPreflight",
    "Options",
    "Outcome",
    "check_hosts",
    "preflight_failure",
    "preflight_report",
    "provision",
]
