"""Typed errors, each bound to one exit code (README: 0 ok, 1 bug, 2 bad input, 3 integrity, 4 trust,
5 rollback, 6 unsafe archive, 7 provisioning, 8 policy). The CLI maps them in one place."""

from __future__ import annotations


class EnclaveError(Exception):
    """Base of every expected failure. `str(err)` is the one line shown to the user; `details`,
    when set, is a JSON-able document of what was found (the `details` of `--json` errors)."""

    exit_code = 1
    details: object = None


class UsageError(EnclaveError):
    """Usage error or bad input: unreadable/invalid manifest, inventory, key, missing file."""

    exit_code = 2


class IntegrityError(EnclaveError):
    """Digest or size mismatch, missing or extra content, bad volume."""

    exit_code = 3


class TrustError(EnclaveError):
    """Bad or missing signature, threshold/hybrid rule not met, unknown key, bad or expired root."""

    exit_code = 4


class RollbackError(EnclaveError):
    """Version not newer than the rollback state allows."""

    exit_code = 5


class UnsafeArchiveError(EnclaveError):
    """Traversal, link, device, duplicate or colliding name, oversize member."""

    exit_code = 6


class ProvisionError(EnclaveError):
    """Unreachable host, failed task, failed post-check."""

    exit_code = 7


class PolicyError(EnclaveError):
    """Policy refusal or a missing approval (gateway tooling)."""

    exit_code = 8


def exit_code_of(error: BaseException) -> int:
    """The exit code the CLI gives `error`: its own, 130 for an interrupt, the OSError mapping
    (fileio.os_error: 2, or 3 when stored data cannot be read back), else 1 (a bug)."""
    if isinstance(error, EnclaveError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, OSError):
        from enclave.fileio import os_error  # fileio imports this module

        return os_error(error).exit_code
    return EnclaveError.exit_code


# -- malformed documents ----------------------------------------------------------------------------
class DocumentLimitError(ValueError):
    """A document over its size cap or nesting bound (FORMAT.md, "Parses strictly"): refused
    before it is parsed. A ValueError, so MALFORMED_DOCUMENT covers it; a caller reading an
    archive member turns it into UnsafeArchiveError (6), a trust document into its own class."""


# What parsing a JSON document into a typed object raises when the document is malformed
# (bad JSON or UTF-8, a duplicate or missing key, a wrong type or value, a size or depth over its
# bound): callers turn it into their one-line typed error naming the file.
MALFORMED_DOCUMENT: tuple[type[Exception], ...] = (
    ValueError,  # json.JSONDecodeError, UnicodeDecodeError and DocumentLimitError are ValueErrors
    KeyError,
    TypeError,
    AttributeError,
)
