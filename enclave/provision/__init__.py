"""enclave.provision: preflight and push over SSH (paramiko, pinned host keys), site.yml through
ansible-runner from the verified bundle, a run report and a CKLB checklist per host.

`provision(Options)` runs it all; `check_hosts` is preflight alone.

Without enclave[provision] the package still imports: its modules that need no extra (`cklb`,
`events`, `report`: what `enclave evidence build` reads) work, and the names below raise the
ModuleNotFoundError of the missing module on first use (the CLI names the extra). The names are
imported eagerly when they can be: `provision` is also the name of a submodule, and only an
import here, after the submodule's, keeps `enclave.provision.provision` the function.
"""

from __future__ import annotations

from enclave.extras import missing_extra

__all__ = [
    "HostPreflight",
    "Options",
    "Outcome",
    "check_hosts",
    "preflight_failure",
    "preflight_report",
    "provision",
]

try:
    from enclave.provision.preflight import HostPreflight
    from enclave.provision.provision import (
        Options,
        Outcome,
        check_hosts,
        preflight_failure,
        preflight_report,
        provision,
    )
except ModuleNotFoundError as _missing:
    if missing_extra(_missing) is None:
        raise
    from enclave.lazy import exports

    _HOME = {name: f"{__name__}.provision" for name in __all__} | {"HostPreflight": f"{__name__}.preflight"}
    __getattr__ = exports(__name__, _HOME)
