"""The CLI's contract (issue 16, items 13-18): one line and a documented exit code for every
failure, OS errors included; --json anywhere, with an error document; receipts that agree
with the exit code; no small lies; help, completion and a man page from the parser."""

from __future__ import annotations

import argparse
import base64
import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enclave import cliout
from enclave.cli import build_parser, main
from enclave.clihelp import REPEATABLE, subcommands, walk
from enclave.errors import UsageError
from enclave.progress import Progress
from tests.conftest import MANIFEST, BuildFn, Keys, make_root, write_inputs

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclave.cli", *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def small_source(directory: Path, size: int = 3 * 1024 * 1024 + 123) -> Path:
    source = write_inputs(directory, size)
    (source / "bundle.yaml").write_text(MANIFEST.format(name="demo", version="1.0.0", digest="sha384"))
    return source


def split(capsys: pytest.CaptureFixture[str], bundle: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "bundle", "split", str(bundle), "--volume-size", "1MiB", *extra)


def verify(capsys: pytest.CaptureFixture[str], bundle: Path, root: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "bundle", "verify", str(bundle), "--trust", str(root), *extra)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("enclave: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 13: OS errors are one line, exit 2 (3 where the data is at fault), never a traceback ----------
@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_directory_given_as_the_bundle_is_a_usage_error(
    command: str, tmp_path: Path, root_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(capsys, "bundle", command, str(tmp_path), "--trust", str(root_path))
    assert code == 2 and "a directory, not a regular file" in one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["bundle", "inspect", "{fifo}"],
        ["bundle", "verify", "{fifo}", "--trust", "{root}"],
        ["trust", "show", "{fifo}"],
        ["bundle", "build", "{fifo}", "--out", "{tmp}", "--key", "{key}"],
        ["bundle", "build", "{manifest}", "--out", "{tmp}", "--key", "{fifo}"],
        ["policy", "test", "x", "--policy", "{fifo}"],
    ],
)
def test_a_fifo_never_hangs_a_command(argv: list[str], tmp_path: Path, keys: Keys, root_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    src = small_source(tmp_path / "src", 1000)
    names = {
        "fifo": fifo,
        "root": root_path,
        "tmp": tmp_path / "out",
        "key": keys.path("ecdsa"),
        "manifest": src / "bundle.yaml",
    }
    proc = cli(*(a.format(**names) for a in argv), timeout=60)  # a FIFO open(2) would block for ever
    assert proc.returncode == 2 and "a FIFO, not a regular file" in one_error_line(proc.stderr)


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/srv/out/x"),
            2,
            "/srv/out/x: Permission denied",
        ),
        (OSError(errno.ENOSPC, "No space left on device", "/srv/x"), 2, "/srv/x: No space left on device"),
        (OSError(errno.EIO, "Input/output error", "/media/v.001"), 3, "/media/v.001: Input/output error"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), 2, "/tmp: Is a directory"),
    ],
)
def test_os_errors_map_to_one_line_and_an_exit_code(
    error: OSError, code: int, text: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(_args: argparse.Namespace) -> Any:
        raise error

    real = build_parser

    def parser() -> argparse.ArgumentParser:
        built = real()
        for _path, node in walk(built):
            if node.prog == "enclave store ls":
                node.set_defaults(handler=handler)
        return built

    monkeypatch.setattr("enclave.cli.build_parser", parser)
    got, out, err = run(capsys, "store", "ls", "--json")
    assert got == code and one_error_line(err) == f"enclave: {text}"
    doc = json.loads(out)
    assert doc["exitCode"] == code and doc["ok"] is False and doc["error"]["message"] == text


def test_permission_error_on_out_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_open = os.open

    def deny(path: Any, flags: int, *rest: Any) -> int:
        if str(path).startswith(str(tmp_path / "keys")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *rest)

    monkeypatch.setattr(os, "open", deny)
    code, _out, err = run(
        capsys,
        "keys",
        "generate",
        "--algorithm",
        "ecdsa-p384",
        "--out",
        str(tmp_path / "keys" / "k"),
        "--no-passphrase",
    )
    assert code == 2 and "Permission denied" in one_error_line(err) and str(tmp_path / "keys") in err


def test_a_closed_stdout_is_exit_141_without_a_traceback(root_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave.cli", "trust", "show", str(root_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| true`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == cliout.BROKEN_PIPE_EXIT and "Traceback" not in err and not err


# -- 14: the receipt and the exit code tell one story -----------------------------------------------
def _last_receipt(state_dir: Path) -> dict[str, Any]:
    line = (state_dir / "receipts.log").read_bytes().splitlines()[-1]
    return dict(json.loads(base64.b64decode(json.loads(line)["payload"])))


def test_an_unwritable_receipt_path_changes_nothing(
    build: BuildFn, root_path: Path, state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = build()
    code, _out, err = verify(
        capsys,
        bundle,
        root_path,
        "--extract-to",
        str(tmp_path / "x"),
        "--receipt",
        str(tmp_path / "no" / "r.json"),
    )
    assert code == 2 and "does not exist" in one_error_line(err)
    assert not (state_dir / "rollback.json").exists() and not (state_dir / "receipts.log").exists()
    assert not (tmp_path / "x").exists()


def test_a_receipt_copy_that_fails_late_is_the_recorded_outcome(
    build: BuildFn,
    root_path: Path,
    state_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from enclave.trust import receipts

    def broken(self: receipts.ReceiptFile, data: bytes) -> None:
        raise UsageError(f"{self.path}: cannot write the receipt: Input/output error")

    monkeypatch.setattr(receipts.ReceiptFile, "commit", broken)
    bundle = build()
    code, _out, _err = verify(capsys, bundle, root_path, "--receipt", str(tmp_path / "r.json"))
    receipt = _last_receipt(state_dir)
    assert code == 2 and receipt["result"] == "failed" and receipt["exitCode"] == code
    assert "cannot write the receipt" in receipt["error"]["message"]
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob(".r.json.tmp-*"))


def test_an_interrupted_verification_leaves_a_receipt(
    build: BuildFn,
    root_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt

    bundle = build()
    monkeypatch.setattr("enclave.admission.check_archive", interrupted)  # mid-hashing
    code, _out, err = verify(capsys, bundle, root_path)
    receipt = _last_receipt(state_dir)
    assert code == 130 == receipt["exitCode"] and receipt["result"] == "failed" and "interrupted" in err


def test_a_full_state_directory_keeps_the_failure_and_no_partial_line(
    build: BuildFn,
    keys: Keys,
    root_path: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from enclave.trust import receipts

    good = build()
    assert verify(capsys, good, root_path)[0] == 0
    before = (state_dir / "receipts.log").read_bytes()
    from enclave.trust.state import write_all as real_write_all

    def full(fd: int, data: bytes) -> None:  # the disk fills up part way through the line
        real_write_all(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(receipts, "write_all", full)
    unsigned = build(signers=(keys.ecdsa,))  # fails the hybrid rule: exit 4
    code, _out, err = verify(capsys, unsigned, root_path)
    line = one_error_line(err)
    assert code == 4 and "no receipt was written" in line and "No space left on device" in line
    assert (state_dir / "receipts.log").read_bytes() == before  # the partial line was cut off
    monkeypatch.setattr(receipts, "write_all", real_write_all)

    class Full:  # and a state directory that is full already is refused before anything runs
        f_bavail, f_frsize, f_favail = 0, 4096, 100

    monkeypatch.setattr("enclave.trust.receipts.os.statvfs", lambda _path: Full())
    code, _out, err = verify(capsys, good, root_path)
    assert code == 2 and "filesystem full" in one_error_line(err)
    assert (state_dir / "receipts.log").read_bytes() == before


# -- 15: --json anywhere, errors as documents, one key style -----------------------------------------
SNAKE = re.compile(r"^[a-z0-9]+_[a-z0-9_]+$")


def _keys_of(doc: Any, path: str = "") -> list[str]:
    if isinstance(doc, dict):
        return [k for k in doc if isinstance(k, str)] + [
            key for k, v in doc.items() if k not in cliout.VERBATIM for key in _keys_of(v, k)
        ]
    if isinstance(doc, list):
        return [key for item in doc for key in _keys_of(item, path)]
    return []


def test_json_and_debug_before_the_command(root_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--json", "trust", "show", str(root_path)], ["trust", "show", str(root_path), "--json"]):
        code, out, _err = run(capsys, *argv)
        doc = json.loads(out)
        assert code == 0 and doc["schemaVersion"] == cliout.SCHEMA_VERSION and doc["ok"] is True
        assert doc["exitCode"] == 0 and doc["valid"] is True
        assert not [k for k in _keys_of(doc) if SNAKE.match(k)]
    args = build_parser().parse_args(["--debug", "store", "ls"])
    assert args.debug is True and args.json is False


def test_a_failure_with_json_is_an_error_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--json", "trust", "show", str(tmp_path / "absent.json"))
    doc = json.loads(out)
    assert code == 2 and doc["ok"] is False and doc["exitCode"] == 2 and doc["command"] == "trust show"
    assert doc["error"]["type"] == "UsageError" and "absent.json" in doc["error"]["message"]
    assert set(doc) == {"schemaVersion", "ok", "exitCode", "command", "error", "details"} and err
    code, out, _err = run(capsys, "--json", "bundle", "build")  # a command line argparse refuses
    assert code == 2 and json.loads(out)["error"]["type"] == "CommandLineError"


def test_keys_are_camel_case_but_data_is_verbatim() -> None:
    doc = cliout.success_document(
        {
            "unproven_records": 1,
            "hosts": {"web_1": {"unreachable_reason": "x"}},
            "result": {"finish_reason": 1},
        }
    )
    assert doc["unprovenRecords"] == 1 and doc["hosts"] == {"web_1": {"unreachableReason": "x"}}
    assert doc["result"] == {"finish_reason": 1} and cliout.success_document([1])["items"] == [1]


def test_every_command_is_documented_in_docs_cli() -> None:
    text = (ROOT / "docs" / "CLI.md").read_text()
    for path, node in walk(build_parser()):
        if path and not subcommands(node):
            assert f"enclave {' '.join(path)}`" in text, (
                f"docs/CLI.md does not document enclave {' '.join(path)}"
            )


# -- 16: no small lies -------------------------------------------------------------------------------
def test_trust_show_of_an_invalid_root_exits_4_and_a_bad_at_exits_2(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime, timedelta

    expired = make_root(keys, tmp_path / "old.json", expires=datetime.now(UTC) - timedelta(days=1))
    code, _out, err = run(capsys, "trust", "show", str(expired))
    assert code == 4 and "NOT VALID" in err and "not valid" in one_error_line(err.splitlines()[-1])
    code, out, _err = run(capsys, "trust", "show", str(expired), "--json")
    assert code == 4 and json.loads(out)["details"]["valid"] is False
    code, _out, err = run(
        capsys, "trust", "show", str(make_root(keys, tmp_path / "r.json")), "--at", "yesterday"
    )
    assert code == 2 and "--at" in one_error_line(err)


def test_trust_update_says_what_it_skipped(
    keys: Keys, tmp_path: Path, rotate: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(keys, tmp_path / "root.json")
    two = rotate(root, [keys.root])
    three = rotate(two, [keys.root])
    assert run(capsys, "trust", "update", str(two), str(three), "--trust", str(root))[0] == 0
    code, _out, err = run(capsys, "trust", "update", str(root))  # v1, older than the trusted v3
    assert code == 4 and "skipped: v1 is older than the trusted v3" in one_error_line(err)
    unrelated = make_root(keys, tmp_path / "other.json", bundle=(keys.ecdsa, keys.mldsa))
    code, _out, err = run(capsys, "trust", "update", str(unrelated))
    assert code == 4 and "skipped" in err
    code, out, err = run(capsys, "trust", "update", str(two), str(three), "--json")  # a re-run: fine
    assert code == 0 and "v2 is older" in err and len(json.loads(out)["skipped"]) == 2


def test_store_commands_never_create_a_mistyped_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "stat-dir"
    for action in (["verify"], ["ls"], ["gc", "--keep", "1"]):
        code, _out, err = run(capsys, "store", *action, "--state-dir", str(typo))
        assert code == 2 and "does not exist" in one_error_line(err) and not typo.exists()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_clears_its_line_and_waits_for_a_rate() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream, clock = Tty(), FakeClock()
    progress = Progress("verify", 1000, stream, clock)
    clock.now = 0.3
    progress(1)  # a first instant of work gives no ETA (it was `ETA 5775199 s`)
    assert "ETA --" in stream.getvalue() and stream.getvalue().endswith("\x1b[K")
    clock.now = 2.0
    progress(499)
    assert "ETA 0:02" in stream.getvalue().split("\r")[-1]
    progress(500)
    progress.finish()
    assert stream.getvalue().endswith("\n") and "done" in stream.getvalue()


def test_progress_off_a_terminal_is_a_plain_line_every_interval() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress("split", 100, stream, clock, interval=10)
    for second in range(1, 26):
        clock.now = float(second)
        progress(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("split: ") and "\r" not in line for line in lines)
    progress.finish()
    assert len(stream.getvalue().splitlines()) == 3
    quiet = io.StringIO()
    Progress("x", 10, quiet, clock).finish()  # short work: nothing
    assert quiet.getvalue() == ""

    class Closed(io.StringIO):
        def write(self, _text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    broken = Progress("x", 10, Closed(), clock, interval=0)
    broken(5)  # a closed stderr never fails the work
    assert broken.enabled is False


def test_split_verify_volume_and_cosign_show_progress(
    build: BuildFn,
    keys: Keys,
    root_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("enclave.progress.PLAIN_INTERVAL", 0.0)
    bundle = build(signers=(keys.ecdsa,))
    code, _out, err = run(capsys, "bundle", "sign", str(bundle), "--key", str(keys.path("mldsa")))
    assert code == 0 and "copy: " in err
    code, _out, err = split(
        capsys, bundle, "--key", str(keys.path("ecdsa")), "--key", str(keys.path("mldsa"))
    )
    assert code == 0 and "split: " in err
    volume = next(bundle.parent.glob("*.bundle.000"))
    code, _out, err = run(capsys, "bundle", "verify-volume", str(volume), "--trust", str(root_path))
    assert code == 0 and "verify-volume: " in err


def test_yaml_aliases_are_refused_and_error_lines_are_capped(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "\n".join(levels) + "\n"  # a few hundred bytes, 10^9 nodes when expanded
    (tmp_path / "bundle.yaml").write_text(bomb)
    code, _out, err = run(
        capsys,
        "bundle",
        "build",
        str(tmp_path / "bundle.yaml"),
        "--out",
        str(tmp_path / "o"),
        "--key",
        str(keys.path("ecdsa")),
    )
    line = one_error_line(err)
    assert code == 2 and "anchors and aliases" in line and len(line) < 300
    (tmp_path / "policy.yaml").write_text(bomb)
    code, _out, err = run(capsys, "policy", "test", "x", "--policy", str(tmp_path / "policy.yaml"))
    assert code == 2 and "anchors and aliases" in one_error_line(err)
    assert len(cliout.one_line("x" * 10_000_000)) < cliout.MAX_LINE + 40
    assert cliout.one_line("a\nb") == "a b"


# -- 17: co-signing a differential bundle ------------------------------------------------------------
def test_a_differential_bundle_is_co_signed_against_its_base(
    build: BuildFn, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from enclave.bundle.build import build_bundle

    source = small_source(tmp_path / "src")
    base = build(source=source)
    (source / "bundle.yaml").write_text(MANIFEST.format(name="demo", version="1.1.0", digest="sha384"))
    (source / "policy.yaml").write_text("rules: [changed]\n")
    diff = build_bundle(
        source / "bundle.yaml", tmp_path / "diff", [keys.ecdsa], base=base, show_progress=False
    )
    key = str(keys.path("mldsa"))
    code, _out, err = run(capsys, "bundle", "sign", str(diff), "--key", key)
    assert code == 2 and "give its base" in one_error_line(err)
    other = build(version="0.9.0")
    code, _out, err = run(capsys, "bundle", "sign", str(diff), "--key", key, "--base", str(other))
    assert code == 2 and "not its base" in one_error_line(err)
    statement = tmp_path / "BUNDLE.dsse.json"
    from enclave.bundle.source import ArchiveSource
    from enclave.bundle.verify import read_envelope

    with ArchiveSource([base]) as archive:
        statement.write_bytes(read_envelope(archive).raw)
    code, out, _err = run(
        capsys, "bundle", "sign", str(diff), "--key", key, "--base-statement", str(statement), "--json"
    )
    assert code == 0 and len(json.loads(out)["signatures"]) == 2


# -- 18: help and conventions ------------------------------------------------------------------------
def test_every_option_has_help_and_repeatable_ones_say_so() -> None:
    missing, unmarked = [], []
    for path, node in walk(build_parser()):
        for action in node._actions:
            if isinstance(
                action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
            ):
                continue
            where = f"enclave {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(where)
            if isinstance(action, argparse._AppendAction) and REPEATABLE not in (action.help or ""):
                unmarked.append(where)
    assert not missing, f"options without help: {missing}"
    assert not unmarked, f"repeatable options not marked: {unmarked}"


def test_a_group_alone_lists_its_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, "bundle")
    assert code == 0 and "verify-volume" in out and "co-signature" in out
    code, out, _err = run(capsys, "bundle", "--json")
    assert code == 0 and "sign" in {c["name"] for c in json.loads(out)["subcommands"]}


def test_help_ends_with_the_exit_codes_and_completion_and_man_come_from_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    help_text = build_parser().format_help()
    assert "exit codes:" in help_text and "141" in help_text and "  4  trust" in help_text
    code, script, _err = run(capsys, "completion", "bash")
    assert code == 0 and "complete -o default -F _enclave enclave" in script and "verify-volume" in script
    (tmp_path / "c.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "c.sh")]).returncode == 0
    completed = subprocess.run(
        [
            "bash",
            "-c",
            f"source {tmp_path / 'c.sh'}; COMP_WORDS=(enclave bundle ver); COMP_CWORD=2; _enclave; "
            'echo "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
    )
    assert completed.stdout.split() == ["verify-volume", "verify"]
    code, page, _err = run(capsys, "man")
    assert code == 0 and page.startswith(".TH ENCLAVE 1") and ".SS bundle verify" in page
    assert "\\-\\-extract\\-to" in page and ".SH EXIT STATUS" in page


def test_low_side_trust_warnings(
    keys: Keys, root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = small_source(tmp_path / "src", 1000)

    def build_with(out: str, *names: str) -> tuple[int, str, str]:
        signers = [a for name in names for a in ("--key", str(keys.path(name)))]
        manifest = str(source / "bundle.yaml")
        return run(
            capsys, "bundle", "build", manifest, "--trust", str(root_path), "--out", out, *signers, "--json"
        )

    code, out, err = build_with(str(tmp_path / "a"), "mldsa")
    assert code == 0 and "no OpenSSF model signature" in err and "will not verify" in err
    assert len(json.loads(out)["warnings"]) == 2
    code, _out, err = build_with(str(tmp_path / "b"), "ecdsa", "mldsa")
    assert code == 0 and "warning" not in err
    code, _out, err = build_with(str(tmp_path / "c"), "stranger", "mldsa")
    assert code == 0 and "is not in the bundle role" in err
    bundle = next((tmp_path / "a").glob("*.bundle"))
    code, _out, err = run(
        capsys, "bundle", "sign", str(bundle), "--key", str(keys.path("ecdsa")), "--trust", str(root_path)
    )
    assert code == 0 and "warning" not in err
    code, _out, err = split(capsys, bundle, "--key", str(keys.path("ecdsa")), "--trust", str(root_path))
    assert code == 0 and "the volume index will not verify" in err


def test_inspect_shows_the_digest_sha384sum_prints(
    build: BuildFn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    source = small_source(tmp_path / "s")
    bundle = build(source=source)
    code, out, _err = run(capsys, "bundle", "inspect", str(bundle))
    plain = hashlib.sha384((source / "weights" / "model.gguf").read_bytes()).hexdigest()  # 4 chunks
    assert code == 0 and re.search(rf"{plain}  content/weights/model.gguf", out)


HELD = {
    "object": "enclave.held_request",
    "id": "req-1",
    "status": "pending",
    "rule": "force-employment",
    "rule_description": "Employment of force; two human approvers must sign.",
    "method": "POST",
    "path": "/v1/chat/completions",
    "requester": "ab" * 32,
    "request_hash": "sha256:" + "0" * 64,
    "approvals_required": 2,
    "approvals": [],
    "expires_at": "2030-01-01T00:00:00Z",
    "body": json.dumps({"messages": [{"role": "user", "content": "Fire on grid 123 now."}]}),
}


def test_held_show_and_approve_display_the_rule_and_text_before_signing(
    keys: Keys, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import enclave.runtime.gateway as gateway

    signed: list[Any] = []
    monkeypatch.setattr(gateway, "fetch_held", lambda _id, _url: dict(HELD))

    def approve(*args: Any) -> dict[str, str]:
        signed.append(args)
        return {"status": "pending"}

    monkeypatch.setattr(gateway, "approve", approve)
    code, out, _err = run(capsys, "held", "show", "req-1", "--gateway", "http://gw")
    assert code == 0 and "force-employment" in out and "Fire on grid 123 now." in out
    code, out, _err = run(capsys, "held", "show", "req-1", "--gateway", "http://gw", "--json")
    assert json.loads(out)["ruleDescription"].startswith("Employment")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr("builtins.input", lambda _q: "n")
    argv = ["approve", "req-1", "--key", str(keys.path("ecdsa")), "--gateway", "http://gw"]
    code, _out, err = run(capsys, *argv)
    assert code == 2 and "Fire on grid 123 now." in err and "not confirmed" in err and not signed
    monkeypatch.setattr("builtins.input", lambda _q: "yes")
    assert run(capsys, *argv)[0] == 0 and signed[-1][-1] == HELD["request_hash"]
    monkeypatch.setattr("builtins.input", lambda _q: pytest.fail("--yes asks nothing"))
    assert run(capsys, *argv, "--yes")[0] == 0 and len(signed) == 2


def test_requester_token_command(keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from enclave.runtime.gateway.approvals import REQUESTER_HEADER, NonceCache, verify_requester
    from enclave.runtime.gateway.inspect import request_hash

    body = tmp_path / "body.json"
    body.write_bytes(b'{"messages": []}')
    code, out, _err = run(
        capsys,
        "requester-token",
        "--key",
        str(keys.path("ecdsa")),
        "--method",
        "POST",
        "--path",
        "/v1/chat/completions",
        "--body",
        str(body),
    )
    header, _, token = out.strip().partition(": ")
    assert code == 0 and header == REQUESTER_HEADER
    digest = request_hash("POST", "/v1/chat/completions", body.read_bytes())
    import time

    approvers = {keys.ecdsa.keyid: keys.ecdsa.public}
    assert verify_requester(token, digest, approvers, 120, NonceCache(), time.time()) == keys.ecdsa.keyid
