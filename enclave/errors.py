"""Typed errors, each bound to one exit code (README: 0 ok, 1 bug, 2 bad input, 3 integrity, 4 trust,
5 rollback, 6 unsafe archive, 7 provisioning, 8 policy). The CLI maps them in one place."""

from __future__ import annotations

import errno


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


# Errors that say the stored bytes cannot be read back (a failing disk or medium, a damaged
# filesystem): the data is at fault (exit 3). Every other OSError is about what was asked for
# (a name, a permission, a full disk): exit 2.
DATA_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EIO", "EUCLEAN", "EBADMSG", "ENODATA", "ENOMEDIUM", "EMEDIUMTYPE")
    if hasattr(errno, name)
)


def os_error_class(error: OSError) -> type[EnclaveError]:
    """The typed error an OSError stands for: IntegrityError when the data is at fault, else
    UsageError (fileio.os_error makes the one-line error naming the file)."""
    return IntegrityError if error.errno in DATA_ERRNOS else UsageError


def exit_code_of(error: BaseException) -> int:
    """The exit code the CLI gives `error`: its own, 130 for an interrupt, the OSError mapping
    (os_error_class: 2, or 3 when stored data cannot be read back), else 1 (a bug)."""
    if isinstance(error, EnclaveError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, OSError):
        return os_error_class(error).exit_code
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


# -- causes a library caller can branch on ------------------------------------------------------------
# Each subclasses the exit-code class of its family and carries what was found as fields, so a
# caller never parses a message. The CLI still only reads `exit_code`.
class NoTrustRoot(UsageError):
    """Neither a stored root nor a given one: nothing to verify against."""


class KeyNotInRole(UsageError):
    """A key given to sign as a role (audit receipts, checkpoints) that the root does not list."""

    def __init__(self, message: str, *, keyid: str, role: str, root_version: int) -> None:
        super().__init__(message)
        self.keyid, self.role, self.root_version = keyid, role, root_version


class ExpiredRoot(TrustError):
    """The root in use expired before the run's reference time (freeze attack)."""

    def __init__(self, message: str, *, version: int, expires: str, at: str) -> None:
        super().__init__(message)
        self.version, self.expires, self.at = version, expires, at


class ThresholdNotMet(TrustError):
    """A document's valid signatures do not meet a role's threshold (or its hybrid rule)."""

    def __init__(
        self,
        message: str,
        *,
        role: str,
        threshold: int,
        valid_keyids: tuple[str, ...],
        untrusted_keyids: tuple[str, ...] = (),
        invalid: int = 0,
    ) -> None:
        super().__init__(message)
        self.role, self.threshold = role, threshold
        self.valid_keyids, self.untrusted_keyids, self.invalid = valid_keyids, untrusted_keyids, invalid


class RotationRefused(TrustError):
    """A new root that is not a valid rotation of the trusted one (gap, fork, missing signatures)."""

    def __init__(self, message: str, *, trusted_version: int, offered_version: int) -> None:
        super().__init__(message)
        self.trusted_version, self.offered_version = trusted_version, offered_version


class RollbackRefused(RollbackError):
    """A bundle (or root) older than, or different from, what this high side accepted."""

    def __init__(self, message: str, *, name: str | None, version: str | None, accepted: str | None) -> None:
        super().__init__(message)
        self.name, self.version, self.accepted = name, version, accepted
