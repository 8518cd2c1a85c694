"""The README's lifecycle, run as written (issue 16, item 17).

Every command of the README's "The lifecycle" section is parsed out of its code blocks and
run, in order, in a temporary directory, unless it needs Docker, SSH or a running service
(SKIPPED). A command the test does not know fails it, so a README edit that adds or breaks a
step fails here. What differs from the README, and why:

- small inputs: `manifests/demo.yaml` is written here (a 4 MiB model, a policy, playbooks; no
  image components: those need Docker), and `--volume-size 4.7GB` becomes 1MiB so the small
  bundle still has the volume `.003` the courier checks;
- `/srv/...` is placed under the temporary directory;
- between the low side and the gap, the courier carries the volumes and their index from
  `out/` to the working directory (the high side's commands name them bare).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.cli import main
from enclave.runtime.gateway.policy import load_policy
from enclave.runtime.gateway.server import check_approvable
from enclave.trust.trusted import TrustedRoot
from tests.conftest import write_inputs

README = Path(__file__).resolve().parents[2] / "README.md"
SHIPPED_POLICY = README.parent / "bundles" / "policy" / "default.yaml"
RUN = {
    "keys generate", "trust init", "trust rotate", "trust update", "bundle build", "bundle sign",
    "bundle split", "bundle inspect", "bundle verify-volume", "bundle verify", "receipts verify", "store ls",
    "ca init", "ca issue",
}  # fmt: skip
SKIPPED = {"images build", "images load", "testbed up", "provision", "gateway serve", "policy test",
           "approve", "agent run", "audit verify", "audit export"}  # fmt: skip
# Other programs in the section, none run here: the kit's own check and installer (pip, a kit).
OTHER_PROGRAMS = {"python3", "sh"}
SUBSTITUTE = {"4.7GB": "1MiB"}
MANIFEST = """\
apiVersion: enclave/v1
kind: Bundle
metadata: {name: assistant, version: 1.0.0}
spec:
  digest: sha384
  chunkSize: 1MiB
  components:
    - {name: weights, kind: model, path: ../src/weights, format: gguf}
    - {name: policy, kind: policy, path: ../src/policy.yaml}
    - {name: site, kind: playbooks, path: ../src/playbooks}
"""


def lifecycle_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(the paragraph before it, its logical lines) for each indented code block of the
    lifecycle section; continuation lines joined."""
    section = text.split("## The lifecycle", 1)[1].split("\n## ", 1)[0]
    blocks: list[tuple[str, list[str]]] = []
    prose: list[str] = []
    current: list[str] | None = None
    for line in section.splitlines():
        if line.startswith("    ") and line.strip():
            if current is None:
                current = []
                blocks.append((" ".join(prose), current))
                prose = []
            if current and current[-1].endswith("\\"):
                current[-1] = current[-1][:-1] + " " + line.strip()
            elif line.strip().startswith("#") and current:
                continue  # a comment line under a command
            else:
                current.append(line.strip())
        elif line.strip():
            current = None
            prose.append(line.strip())
    return blocks


def commands(line: str) -> list[list[str]]:
    """The commands of one logical line: `;`- or `&&`-separated, comments dropped, and a
    `for V in WORDS; do CMD; done` loop unrolled."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    tokens = list(lexer)
    if tokens[:1] == ["for"]:
        variable, words_end = tokens[1], tokens.index(";")
        body = tokens[tokens.index("do") + 1 : tokens.index("done") - 1]
        return [[t.replace(f"${variable}", word) for t in body] for word in tokens[3:words_end]]
    found: list[list[str]] = []
    command: list[str] = []
    for token in [*tokens, ";"]:
        if token in (";", "&&"):
            if command:
                found.append(command)
            command = []
        else:
            command.append(token)
    return found


def name_of(argv: list[str]) -> str:
    words = [w for w in argv[1:] if not w.startswith("-")]
    two = " ".join(words[:2])
    return two if two in RUN | SKIPPED else words[0]


def test_the_readme_lifecycle_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENCLAVE_KEY_PASSPHRASE", "readme")
    write_inputs(tmp_path / "src", weights_size=4 * 1024 * 1024 + 77)
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "demo.yaml").write_text(MANIFEST)
    (tmp_path / "srv" / "enclave").mkdir(parents=True)
    blocks = lifecycle_blocks(README.read_text())
    assert len(blocks) >= 4, "the lifecycle section lost its code blocks"
    ran: list[str] = []
    carried = False
    for prose, lines in blocks:
        if "courier" in prose and not carried:  # the volumes and their index cross the gap
            for volume in sorted((tmp_path / "out").iterdir()):
                if re.search(r"\.bundle\.\d{3}$|\.volumes\.dsse\.json$", volume.name):
                    shutil.copy(volume, tmp_path / volume.name)
            carried = True
        for line in lines:
            for argv in commands(line):
                if argv[0] in OTHER_PROGRAMS:
                    continue
                assert argv[0] == "enclave", f"README: {argv[0]!r} is new to this test: classify it"
                name = name_of(argv)
                assert name in RUN | SKIPPED, f"README: {name!r} is new to this test: classify it"
                if name in SKIPPED:
                    continue
                args = [SUBSTITUTE.get(a, a) for a in argv[1:]]
                args = [str(tmp_path) + a if a.startswith("/srv/") else a for a in args]
                code = main(args)
                err = capsys.readouterr().err
                assert code == 0, f"README command failed with exit {code}: {' '.join(argv)}\n{err}"
                ran.append(name)
                if name == "bundle build" and "--trust" in args:  # 1 of the 2 signatures the root needs
                    assert "warning" in err and "co-sign" in err
    assert set(ran) == RUN, f"never ran: {sorted(RUN - set(ran))}"
    assert carried and os.path.isdir(tmp_path / "srv" / "enclave" / "assistant-1.0.0")
    assert (tmp_path / "receipt.json").is_file()
    # The root the README makes must let the shipped policy and guard start a gateway (its hold
    # rules need their approvers from the root's approver role): as `gateway serve` checks it.
    trusted = TrustedRoot.load(tmp_path / "root.json", datetime.now(UTC))  # what gateway serve is given
    root = trusted.root
    approvers, threshold = root.role_keys("approver"), root.roles["approver"].threshold
    check_approvable(load_policy(SHIPPED_POLICY), approvers, threshold, trusted, guarded=True)
