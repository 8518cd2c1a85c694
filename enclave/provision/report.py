"""The run report: written atomically, summarised for a terminal."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enclave.trust.state import atomic_write


def write_json(path: Path, doc: Mapping[str, Any], sort_keys: bool = True) -> None:
    """The one JSON writer of reports and checklists: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=sort_keys) + "\n").encode("utf-8"))


def summary(report: Mapping[str, Any]) -> str:
    """A few lines per run: the bundle, then one line per host."""
    bundle = report["bundle"]
    lines = [
        f"{bundle['name']} {bundle['version']}: {report['mode']} on {len(report['hosts'])} host(s), "
        f"{report['result']} in {report['seconds']:.1f} s"
    ]
    for name, host in report["hosts"].items():
        controls = host.get("controls") or {}
        findings = (
            ", ".join(f"{n} {status}" for status, n in sorted(controls.items())) or "no controls evaluated"
        )
        state = "ok" if host["result"] == "ok" else f"STOPPED: {host['reason']}"
        lines.append(
            f"  {name:<12} ok {host['ok']:>3}  changed {host['changed']:>3}  failed {host['failed']:>2}  "
            f"skipped {host['skipped']:>3}  [{findings}]  {state}"
        )
    return "\n".join(lines)
