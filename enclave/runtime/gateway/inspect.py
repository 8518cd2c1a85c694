"""What the gateway reads out of a request before deciding: pure functions, no I/O.

The gateway forwards the exact bytes it inspected, so parsing is strict: a body two JSON
parsers could read differently (duplicate keys, non-UTF-8, NaN) is rejected rather than
guessed at, and content it cannot read as text (token-id prompts, images, audio) is refused,
because a rule cannot judge what it cannot see.
"""

from __future__ import annotations

import hashlib
from typing import Any

from enclave.errors import DocumentLimitError
from enclave.strictjson import strict_json

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
INFERENCE_PATHS = (CHAT_PATH, COMPLETIONS_PATH)
MAX_DEPTH = 32  # nesting levels of a request body, checked before it is parsed
MAX_BODY = 1 << 20  # the gateway reads at most this many bytes of a request body


class BadRequest(ValueError):
    """The body cannot be inspected; `code` is the machine-readable reason."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


def request_hash(method: str, path: str, body: bytes) -> str:
    """sha256 over "METHOD SP PATH LF BODY": binds the decision to these exact bytes and route."""
    digest = hashlib.sha256(method.upper().encode("ascii") + b" " + path.encode("utf-8") + b"\n" + body)
    return "sha256:" + digest.hexdigest()


def parse_body(body: bytes, max_bytes: int = MAX_BODY) -> dict[str, Any]:
    """The request body as a JSON object, read by the one strict JSON reader (strictjson.strict_json:
    UTF-8, no duplicate key, no NaN, at most `max_bytes` and MAX_DEPTH levels, bounded before it
    parses); raises BadRequest."""
    try:
        doc = strict_json(body, max_bytes, MAX_DEPTH)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    except DocumentLimitError as exc:
        raise BadRequest(f"request body: {exc}") from None
    except ValueError as exc:
        if str(exc).startswith("duplicate key"):
            # Parsers disagree on which duplicate wins; the model server might read the other one.
            raise BadRequest(f"request body has a {exc}", "duplicate_key") from None
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    return doc


def texts_of(doc: Any) -> list[str]:
    """Every string in the request, keys included, in document order: tool schemas, system
    prompts and stop words all reach the model, so nothing is skipped."""
    found: list[str] = []
    _collect(doc, found, 0)
    return found


def _collect(value: Any, found: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest("request body nests too deeply")
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            found.append(key)
            _collect(item, found, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _collect(item, found, depth + 1)


def check_inspectable(path: str, doc: dict[str, Any]) -> None:
    """Refuse content that is not text; raise BadRequest(code="uninspectable")."""
    if path == COMPLETIONS_PATH:
        prompt = doc.get("prompt")
        if prompt is None:
            raise BadRequest("completions request without a prompt")
        items = prompt if isinstance(prompt, list) else [prompt]
        if not all(isinstance(item, str) for item in items):
            raise BadRequest("token-id prompts cannot be inspected; send the prompt as text", "uninspectable")
    elif path == CHAT_PATH:
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("chat request needs a non-empty messages list")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise BadRequest(f"messages[{index}] is not an object")
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind != "text":
                        raise BadRequest(
                            f"messages[{index}] has a {kind or 'non-text'} content part; "
                            "only text can be inspected",
                            "uninspectable",
                        )


def is_stream(doc: dict[str, Any]) -> bool:
    return doc.get("stream") is True
