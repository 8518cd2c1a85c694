"""Tamper-evident audit log: hash-chained JSON-lines records, signed RFC 9162 checkpoints.

Entry points: `AuditLog` (the writer used by the gateway), `verify_log` (`enclave audit
verify`), `export` (`enclave audit export`). docs/GATEWAY.md specifies the format.
"""

from enclave.runtime.audit.export import export
from enclave.runtime.audit.verify import (
    AuditReport,
    LogVerificationError,
    check_log,
    checkpoints_path,
    verify_log,
)
from enclave.runtime.audit.writer import AuditLog, AuditUnavailable, FileSink

__all__ = [
    "AuditLog",
    "AuditReport",
    "AuditUnavailable",
    "FileSink",
    "LogVerificationError",
    "check_log",
    "checkpoints_path",
    "export",
    "verify_log",
]
