"""What an approver sees before signing: the held request's rule and its text.

`enclave held show ID --gateway URL` prints it; `enclave approve` prints it before it signs
and, on a terminal, asks for confirmation (unless --yes). The text shown is decoded from the
very bytes whose hash is signed (client.fetch_held re-computes the hash from them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_SHOWN = 4000  # characters of request text shown; the rest is counted


def request_text(body: str) -> str:
    """The prompts of an OpenAI-style request (chat messages or a completion prompt), else the
    body as it is."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    parts: list[str] = []
    if isinstance(doc, dict):
        for message in doc.get("messages") or []:
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, list):  # content parts: their text
                    content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                parts.append(f"[{message.get('role', '?')}] {content}")
        prompt = doc.get("prompt")
        if isinstance(prompt, str):
            parts.append(prompt)
        elif isinstance(prompt, list):
            parts += [str(p) for p in prompt]
    return "\n".join(parts) if parts else body


def describe_held(held: dict[str, Any]) -> str:
    """The held request in a few lines: rule, route, requester, approvals, then its text."""
    text = request_text(str(held.get("body", "")))
    if len(text) > MAX_SHOWN:
        text = f"{text[:MAX_SHOWN]}\n... ({len(text) - MAX_SHOWN} more characters)"
    approvals = held.get("approvals") or []
    lines = [
        f"request {held.get('id')}: {held.get('status')}, {len(approvals)} of "
        f"{held.get('approvals_required')} approvals, expires {held.get('expires_at')}",
        f"  rule: {held.get('rule')}: {held.get('rule_description')}",
        f"  {held.get('method')} {held.get('path')}  requester {str(held.get('requester'))[:16]}",
        f"  request hash {held.get('request_hash')}",
        "  text:",
        *(f"    {line}" for line in text.splitlines() or [""]),
    ]
    return "\n".join(lines)


def confirm(question: str, ask: Callable[[str], str] | None = None) -> bool:
    """True only for an explicit yes (asked with `ask`, default input())."""
    try:
        return (ask or input)(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
