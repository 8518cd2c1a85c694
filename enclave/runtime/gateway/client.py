"""Client side of the approval protocol: `enclave approve` and requester tokens.

Only the standard library speaks HTTP here, so the approver's tool needs nothing that the
gateway host does not already have.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from enclave.errors import PolicyError, UsageError
from enclave.runtime.gateway.approvals import REQUESTER_HEADER, Decision, approval_envelope, requester_token
from enclave.runtime.gateway.inspect import request_hash
from enclave.trust.keys import SigningKey

TIMEOUT_SECONDS = 900.0  # the final approval waits for the model's answer
# How `enclave approve` and `enclave held show` reach a gateway that identifies its users
# (docs/GATEWAY.md 12): the CA that signed the gateway's certificate, the approver's client
# certificate and key (ENCLAVE_KEY_PASSPHRASE if encrypted), or a file holding an API key.
CONNECTION_ENV = (
    "ENCLAVE_GATEWAY_CA",
    "ENCLAVE_GATEWAY_CERT",
    "ENCLAVE_GATEWAY_KEY",
    "ENCLAVE_GATEWAY_API_KEY_FILE",
)


@functools.cache
def _connection(ca: str, cert: str, key: str, api_key_file: str) -> tuple[ssl.SSLContext | None, str | None]:
    from enclave.identity.tls import client_context

    context = (
        client_context(Path(ca), Path(cert) if cert else None, Path(key) if key else None) if ca else None
    )
    api_key = None
    if api_key_file:
        try:
            api_key = Path(api_key_file).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{api_key_file}: cannot read the API key: {exc}") from None
    return context, api_key


def _call(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    context, api_key = _connection(*(os.environ.get(name, "") for name in CONNECTION_ENV))
    if api_key is not None:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PolicyError(f"{url}: gateway unreachable: {reason}") from None
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PolicyError(f"{url}: HTTP {status}, not a JSON answer") from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{url}: HTTP {status}, unexpected answer")
    return status, doc


def _message(doc: dict[str, Any]) -> str:
    error = doc.get("error")
    if isinstance(error, dict):
        return f"{error.get('message')} ({error.get('code')})"
    return json.dumps(doc)[:200]


def fetch_held(request_id: str, gateway: str) -> dict[str, Any]:
    """The held request as the gateway shows it, with its hash re-computed from its bytes."""
    base = gateway.rstrip("/")
    status, held = _call("GET", f"{base}/v1/held/{request_id}")
    if status != 200:
        raise PolicyError(f"request {request_id}: {_message(held)}")
    try:
        body = base64.b64decode(str(held["body_b64"]), validate=True)
        recomputed = request_hash(str(held["method"]), str(held["path"]), body)
    except (KeyError, binascii.Error, UnicodeEncodeError):
        raise PolicyError(f"request {request_id}: the gateway's answer lacks the request bytes") from None
    if recomputed != held.get("request_hash"):
        # Never sign a hash we cannot tie to the bytes we were shown.
        raise PolicyError(
            f"request {request_id}: the gateway's request hash does not match the request bytes"
        )
    held["body"] = body.decode("utf-8", errors="replace")
    return held


def approve(
    request_id: str, key: Path, gateway: str, decision: str = "approve", shown_hash: str | None = None
) -> dict[str, Any]:
    """`enclave approve REQUEST_ID --key KEY --gateway URL`: sign and send one decision.

    Returns the gateway's answer: the held request's summary, with `status` "pending"
    (more approvals needed), "completed" (this approval met the threshold; `result` holds
    the model's answer) or "denied". Raises PolicyError when the gateway refuses it.
    `shown_hash`: the request hash of what the approver was shown (review.describe_held):
    a request whose bytes changed since is never signed.
    """
    if decision not in ("approve", "deny"):
        raise UsageError(f"decision must be 'approve' or 'deny', got {decision!r}")
    signing = SigningKey.load(key)
    held = fetch_held(request_id, gateway)
    if held.get("status") != "pending":
        raise PolicyError(f"request {request_id} is {held.get('status')}; it can no longer be decided")
    if shown_hash is not None and held.get("request_hash") != shown_hash:
        raise PolicyError(f"request {request_id}: the gateway now shows other bytes than were reviewed")
    envelope = approval_envelope(
        signing, request_id, str(held["request_hash"]), cast(Decision, decision), datetime.now(UTC)
    )
    status, answer = _call("POST", f"{gateway.rstrip('/')}/v1/held/{request_id}/approvals", envelope)
    if status >= 400:
        raise PolicyError(f"gateway refused the {decision} of {request_id}: {_message(answer)}")
    return answer


def requester_headers(key: SigningKey, method: str, path: str, body: bytes) -> dict[str, str]:
    """The header a requester adds so the gateway knows who asked (and who may not approve)."""
    token = requester_token(key, request_hash(method, path, body), datetime.now(UTC))
    return {REQUESTER_HEADER: token}
