"""What the `enclave` command prints, and the one place a failure becomes an exit code.

- Success: the human text on stdout, or with `--json` one JSON document (docs/CLI.md): the
  command's document with `schemaVersion`, `ok: true` and `exitCode: 0` added (a list becomes
  `items`), every key in camelCase.
- Failure: one line `enclave: MESSAGE` on stderr (newlines folded, at most MAX_LINE characters:
  a hostile input cannot make a 58 MB error line), and with `--json` also an error document
  on stdout: `{"schemaVersion", "ok": false, "exitCode", "command", "error": {"type",
  "message"}, "details"}`. The exit code is the error's (enclave.errors); an OSError is mapped
  by fileio.os_error (2, or 3 when the stored data cannot be read back); a module of an extra
  that is not installed is 2, naming the extra (enclave.extras); an interrupt is 130;
  anything else is a bug, 1, with its traceback under `--debug`.
- A closed stdout (`enclave ... | head -1`): no traceback; stdout is pointed at /dev/null as
  the Python documentation recommends (so the interpreter's final flush cannot fail again) and
  the exit code is 141, 128 + SIGPIPE, what a shell reports for `cat` in the same place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from enclave.errors import EnclaveError, UsageError
from enclave.extras import missing_extra
from enclave.fileio import os_error

SCHEMA_VERSION = 1
MAX_LINE = 1000  # characters of an error line
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE
INTERRUPTED_EXIT = 130  # 128 + SIGINT

# Keys whose value is data of another format (the model's answer, a parsed manifest, Ansible
# facts, a guard's model card): printed as it is. And maps keyed by names (hosts): their
# keys are kept, their values are documents of ours.
VERBATIM = frozenset({"result", "document", "context", "card", "body"})
NAMED = frozenset({"hosts"})
_SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


class CommandLineError(UsageError):
    """A command line argparse refused; `usage` is the usage text of the (sub)command."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` on one line of at most `limit` characters (the excess is counted, not shown)."""
    flat = " ".join(text.split("\n")).replace("\r", " ")
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}... ({len(flat) - limit} more characters)"


def camel(key: str) -> str:
    if not _SNAKE.fullmatch(key):
        return key
    first, *rest = key.split("_")
    return first + "".join(part.capitalize() for part in rest)


def camel_keys(doc: Any, named: bool = False) -> Any:
    """`doc` with every snake_case key in camelCase, except under VERBATIM keys."""
    if isinstance(doc, dict):
        out: dict[Any, Any] = {}
        for key, value in doc.items():
            name = key if named or not isinstance(key, str) else camel(key)
            if isinstance(key, str) and key in VERBATIM:
                out[name] = value
            else:
                out[name] = camel_keys(value, named=isinstance(key, str) and key in NAMED)
        return out
    if isinstance(doc, list | tuple):
        return [camel_keys(item) for item in doc]
    return doc


def success_document(doc: Any) -> dict[str, Any]:
    body = camel_keys(doc if isinstance(doc, dict) else {"items": doc})
    return {**body, "schemaVersion": SCHEMA_VERSION, "ok": True, "exitCode": 0}


def error_document(code: int, kind: str, message: str, command: str | None, details: Any) -> dict[str, Any]:
    return {
        "schemaVersion": SCHEMA_VERSION,
        "ok": False,
        "exitCode": code,
        "command": command,
        "error": {"type": kind, "message": message},
        "details": camel_keys(details) if details is not None else None,
    }


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(exit code, error type, message) of a failure."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED_EXIT, "Interrupted", "interrupted"
    if isinstance(exc, OSError) and not isinstance(exc, EnclaveError):
        mapped = os_error(exc)
        return mapped.exit_code, type(mapped).__name__, str(mapped)
    if isinstance(exc, ModuleNotFoundError) and (extra := missing_extra(exc)) is not None:
        return extra.exit_code, type(extra).__name__, str(extra)  # names the extra to install
    if isinstance(exc, EnclaveError):
        return exc.exit_code, type(exc).__name__, str(exc)
    return 1, "InternalError", f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)"


def stdout_closed() -> bool:
    """True when stdout is a pipe or socket whose reader has gone (poll says POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _fd, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _detach_stdout() -> int:
    """Python's advice for SIGPIPE (docs: signal, "Note on SIGPIPE"): point stdout at
    /dev/null so that the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return BROKEN_PIPE_EXIT


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _command(args: argparse.Namespace | None) -> str | None:
    if args is None:
        return None
    parts = [getattr(args, "command", None), getattr(args, "action", None)]
    return " ".join(p for p in parts if isinstance(p, str)) or None


def fail(exc: BaseException, json_out: bool, debug: bool, command: str | None) -> int:
    """Report a failure (stderr line, JSON document); returns its exit code."""
    if isinstance(exc, BrokenPipeError) and stdout_closed():
        return _detach_stdout()
    code, kind, message = classify(exc)
    if code == 1 and debug:
        traceback.print_exception(exc)
    if isinstance(exc, CommandLineError) and not json_out:
        print(exc.usage.rstrip(), file=sys.stderr)
    line = one_line(message)
    with contextlib.suppress(OSError, ValueError):
        print(f"enclave: {line}", file=sys.stderr)
    if json_out:
        document = error_document(code, kind, line, command, getattr(exc, "details", None))
        try:
            _write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        except BrokenPipeError:
            _detach_stdout()
    return code


def run(parse: Callable[[Sequence[str] | None], argparse.Namespace], argv: Sequence[str] | None) -> int:
    """Parse, run the handler, print; every failure is mapped here (module docstring)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    json_out, debug = "--json" in raw, "--debug" in raw
    args: argparse.Namespace | None = None
    try:
        args = parse(argv)
        json_out, debug = bool(args.json), bool(args.debug)
        text, doc = args.handler(args)
    except BaseException as exc:  # the one place errors become exit codes
        if isinstance(exc, SystemExit):  # --help, --version
            raise
        return fail(exc, json_out, debug, _command(args))
    try:
        if json_out:
            _write(json.dumps(success_document(doc), indent=2, sort_keys=True) + "\n")
        elif text:
            _write(text + "\n")
    except BrokenPipeError:
        return _detach_stdout()
    return 0


def warn(message: str) -> None:
    """A warning line on stderr (the command goes on)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"enclave: warning: {one_line(message)}", file=sys.stderr)


def with_report(error: EnclaveError, text: str, doc: Any, json_out: bool) -> EnclaveError:
    """`error`, carrying the command's report: its text goes to stderr now (before the one
    error line), its document becomes the `details` of the JSON error document."""
    if not json_out and text:
        with contextlib.suppress(OSError, ValueError):
            print(text, file=sys.stderr)
    error.details = doc
    return error
