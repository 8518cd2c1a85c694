"""Who is asking: the enclave CA (certificates, CRL), per-user API keys and TLS contexts.

`ca` issues and revokes X.509 certificates (ECDSA P-384, SHA-384) whose subject names the user
and role; `users` keeps API keys as hashes in a file the CA signs; `tls` builds the gateway's
and its clients' TLS contexts (TLS 1.3, P-384, AES-256-GCM-SHA384). docs/GATEWAY.md section 12.
"""

from enclave.identity.ca import ROLES, CertIdentity, certificate_identity, init_ca, issue, revoke
from enclave.identity.tls import client_context, server_context

__all__ = [
    "ROLES",
    "CertIdentity",
    "certificate_identity",
    "client_context",
    "init_ca",
    "issue",
    "revoke",
    "server_context",
]
