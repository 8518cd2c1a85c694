"""Differential vs full bundle for a new version that changes a fraction of a large file's chunks.

Usage: python3 bench/bench_differential.py [--size 2GiB] [--changed 0.05]

Builds v1 (full), then v2 both full and differential against v1 after rewriting --changed of
the weights file's 16 MiB chunks; verifies v1 then the differential v2 (with the content
store), and the full v2 in a fresh state; prints bytes carried and verify times side by side.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.bundle.manifest import DEFAULT_CHUNK_SIZE, parse_size
from enclave.trust.keys import SigningKey
from tests.conftest import Keys, make_root

MANIFEST = (
    "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {{name: bench, version: {version}}}\n"
    "spec:\n  components:\n    - {{name: weights, kind: model, path: ./weights}}\n"
)


def run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="2GiB")
    parser.add_argument("--changed", type=float, default=0.05)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="enclave-bench-diff-", dir=args.dir))
    enclave = [sys.executable, "-m", "enclave.cli"]
    try:
        algorithms = ["ecdsa-p384", "ecdsa-p384", "ml-dsa-87", "ecdsa-p384", "ecdsa-p384"]
        keys = Keys(*(SigningKey.generate(a) for a in algorithms), dir=work)  # type: ignore[arg-type]
        keys.ecdsa.write(work / "ec", None)
        keys.mldsa.write(work / "pq", None)
        root = make_root(keys, work / "root.json", threshold=2, bundle=(keys.ecdsa, keys.mldsa))
        (work / "weights").mkdir()
        weights = work / "weights" / "model.bin"
        with weights.open("wb") as handle:
            for _ in range(0, size, 64 << 20):
                handle.write(os.urandom(min(64 << 20, size - handle.tell())))
        sign = ["--key", str(work / "ec"), "--key", str(work / "pq")]
        (work / "v1.yaml").write_text(MANIFEST.format(version="1.0.0"))
        run([*enclave, "bundle", "build", str(work / "v1.yaml"), "--out", str(work / "v1"), *sign])
        chunks = -(-size // DEFAULT_CHUNK_SIZE)
        touched = sorted(random.Random(7).sample(range(chunks), max(1, round(chunks * args.changed))))
        with weights.open("r+b") as handle:
            for index in touched:
                handle.seek(index * DEFAULT_CHUNK_SIZE + 4096)
                handle.write(os.urandom(4096))
        (work / "v2.yaml").write_text(MANIFEST.format(version="2.0.0"))
        v1 = work / "v1" / "bench-1.0.0.bundle"
        run([*enclave, "bundle", "build", str(work / "v2.yaml"), "--out", str(work / "full"), *sign])
        run(
            [
                *enclave,
                "bundle",
                "build",
                str(work / "v2.yaml"),
                "--out",
                str(work / "diff"),
                *sign,
                "--base",
                str(v1),
            ]
        )
        full, diff = work / "full" / "bench-2.0.0.bundle", work / "diff" / "bench-2.0.0.bundle"
        verify = [*enclave, "bundle", "verify", "--trust", str(root)]
        run([*verify, str(v1), "--state-dir", str(work / "high"), "--extract-to", str(work / "p1")])
        t_diff = run(
            [*verify, str(diff), "--state-dir", str(work / "high"), "--extract-to", str(work / "p2")]
        )
        t_full = run(
            [*verify, str(full), "--state-dir", str(work / "fresh"), "--extract-to", str(work / "p3")]
        )
        same = (
            subprocess.run(
                [
                    "cmp",
                    str(work / "p2/content/weights/model.bin"),
                    str(work / "p3/content/weights/model.bin"),
                ]
            ).returncode
            == 0
        )
        print(
            f"weights {size / 2**30:.1f} GiB, {chunks} chunks of 16 MiB,"
            f" {len(touched)} changed ({args.changed:.0%})"
        )
        print("| bundle | bytes carried | x full | verify + extract s | x full |")
        print("|---|---|---|---|---|")
        print(f"| full v2 | {full.stat().st_size:,} | 1.000 | {t_full:.2f} | 1.00 |")
        print(
            f"| differential v2 | {diff.stat().st_size:,} | {diff.stat().st_size / full.stat().st_size:.3f}"
            f" | {t_diff:.2f} | {t_diff / t_full:.2f} |"
        )
        print(f"published trees identical: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
