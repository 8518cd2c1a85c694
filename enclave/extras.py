"""The optional parts of enclave and the modules that need them (pyproject.toml,
[project.optional-dependencies]). The core (keys, trust, bundles, store, receipts, audit
verification, kits) imports none of these; a command that needs one imports it when it runs,
and the CLI turns the ModuleNotFoundError into one line naming the extra to install (exit 2).
"""

from __future__ import annotations

from enclave.errors import UsageError

# Top-level module -> the extra whose distributions provide it (the test checks this table
# against pyproject.toml through the installed distributions).
EXTRA_OF_MODULE: dict[str, str] = {
    "ansible_runner": "provision",
    "ansible": "provision",  # ansible-core
    "paramiko": "provision",
    "jinja2": "provision",
    "aiohttp": "runtime",
    "prometheus_client": "runtime",
    "numpy": "runtime",
    "docker": "images",
    "openpyxl": "evidence",
}


def missing_extra(error: ModuleNotFoundError) -> UsageError | None:
    """The usage error for a module of an extra that is not installed; None for any other."""
    module = (error.name or "").split(".", 1)[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return UsageError(
        f"this command needs enclave[{extra}] ({module} is not installed): "
        f"pip install 'enclave[{extra}]' (offline: an enclave kit built with --extras {extra})"
    )
