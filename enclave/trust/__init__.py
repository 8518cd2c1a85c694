"""Keys, trust roots and the one place trust decisions are taken (docs/FORMAT.md, sections 2-7).

The public API is `__all__`: signing keys (ECDSA P-384, ML-DSA-87), DSSE envelopes, the trust
root and its rotation, `TrustedRoot` (every "signed by role R" and "key in role R" decision),
and the high side's state directory. Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enclave.lazy import exports

__all__ = [
    "Envelope",
    "PublicKey",
    "SigningKey",
    "StateDir",
    "TrustRoot",
    "TrustedRoot",
    "apply_chain",
    "next_root",
    "sign_document",
]

_HOME = {
    "Envelope": "enclave.trust.dsse",
    "PublicKey": "enclave.trust.keys",
    "SigningKey": "enclave.trust.keys",
    "StateDir": "enclave.trust.state",
    "TrustRoot": "enclave.trust.root",
    "TrustedRoot": "enclave.trust.trusted",
    "apply_chain": "enclave.trust.rotation",
    "next_root": "enclave.trust.rotation",
    "sign_document": "enclave.trust.root",
}

if TYPE_CHECKING:
    from enclave.trust.dsse import Envelope
    from enclave.trust.keys import PublicKey, SigningKey
    from enclave.trust.root import TrustRoot, sign_document
    from enclave.trust.rotation import apply_chain, next_root
    from enclave.trust.state import StateDir
    from enclave.trust.trusted import TrustedRoot


__getattr__ = exports(__name__, _HOME)
