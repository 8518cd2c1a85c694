"""Peak memory of build and verify as the bundle grows, beside a peer on the same files.

Needs GNU time (Debian package `time`). Usage:

    python3 bench/bench_memory.py [--sizes 1GiB,4GiB,16GiB] [--dir /var/tmp] [--digest sha384]

For each size: one model file of that size (distinct 16 MiB chunks), then, each measured once by
GNU time in the child (peak RSS, wall seconds): coreutils `sha384sum`/`sha256sum`, OpenSSF
`model_signing` signing the directory (when installed), `enclave bundle build`, `enclave bundle
verify` and `enclave bundle verify --extract-to` (an admission: a fresh state directory, whose content
store keeps the chunks).
The weights are deleted once the bundle is built, so the disk needs about twice the largest size.
Prints one table: peak RSS per row and size, and its growth from the smallest size to the largest.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_verify import MODEL_SIGNING, have_model_signing, make_weights, timed_process

from enclave.bundle.manifest import parse_size
from enclave.trust.keys import SigningKey
from tests.conftest import Keys, make_root

ENCLAVE = [sys.executable, "-m", "enclave.cli"]


def measure(work: Path, size: int, algorithm: str, root: Path, peer: bool) -> dict[str, tuple[float, int]]:
    """Every row for one size: {row: (seconds, peak RSS bytes)}."""
    rows: dict[str, tuple[float, int]] = {}
    weights = work / "weights"
    paths = make_weights(weights, [size])
    rows[f"coreutils {algorithm}sum"] = timed_process([f"{algorithm}sum", *map(str, paths)])
    if peer:
        signature = work / "model.sig"
        command = [
            sys.executable,
            "-c",
            MODEL_SIGNING,
            str(weights),
            str(work / "ecdsa"),
            str(signature),
            "file",
        ]
        rows["OpenSSF model_signing sign (sha256)"] = timed_process(command)
        signature.unlink()
    manifest = work / "bundle.yaml"
    manifest.write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: bench, version: 1.0.0}\n"
        f"spec:\n  digest: {algorithm}\n  components:\n"
        "    - {name: weights, kind: model, path: ./weights}\n"
    )
    out = work / "out"
    build = [*ENCLAVE, "bundle", "build", str(manifest), "--out", str(out), "--key", str(work / "ecdsa")]
    rows["enclave bundle build"] = timed_process(build)
    shutil.rmtree(weights)
    bundle = out / "bench-1.0.0.bundle"
    subprocess.run(
        [*ENCLAVE, "bundle", "sign", str(bundle), "--key", str(work / "mldsa")],
        check=True,
        capture_output=True,
    )
    # A fresh state directory per size: each size's bundle is a new build of bench 1.0.0.
    state = work / f"state-{size}"
    verify = [*ENCLAVE, "bundle", "verify", str(bundle), "--trust", str(root), "--state-dir", str(state)]
    rows["enclave bundle verify"] = timed_process(verify)
    target = work / "extracted"
    rows["enclave bundle verify --extract-to"] = timed_process([*verify, "--extract-to", str(target)])
    shutil.rmtree(target)
    shutil.rmtree(state)
    shutil.rmtree(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1GiB,4GiB,16GiB")
    parser.add_argument("--dir", default=None, help="where weights, bundles and extractions go")
    parser.add_argument("--digest", default="sha384", choices=["sha256", "sha384"])
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="enclave-bench-memory-", dir=args.dir))
    try:
        algorithms = ["ecdsa-p384", "ecdsa-p384", "ml-dsa-87", "ecdsa-p384", "ecdsa-p384"]
        keys = Keys(*(SigningKey.generate(a) for a in algorithms), dir=work)  # type: ignore[arg-type]
        for name in ("ecdsa", "mldsa"):
            getattr(keys, name).write(work / name, None)
        root = make_root(keys, work / "root.json", threshold=2, bundle=(keys.ecdsa, keys.mldsa))
        peer = have_model_signing()
        results = [measure(work, size, args.digest, root, peer) for size in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labels = [f"{s / 2**30:g} GiB: s / MiB" for s in sizes]
    header = " | ".join(labels)
    print(f"digest {args.digest}; one model file per size; peak RSS by GNU time")
    print(f"| {'row':<36} | {header} | RSS growth |")
    print(f"|{'-' * 38}|" + "|".join("-" * (len(label) + 2) for label in labels) + "|------------|")
    for row in results[0]:
        cells = " | ".join(
            f"{r[row][0]:>7.1f} / {r[row][1] / 2**20:>4.0f}".ljust(len(label))
            for r, label in zip(results, labels, strict=True)
        )
        growth = results[-1][row][1] / results[0][row][1]
        print(f"| {row:<36} | {cells} | {growth:>9.2f}x |")


if __name__ == "__main__":
    main()
