"""The run report: written atomically, summarised for a terminal."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Temp file + fsync + rename: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(doc, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


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
