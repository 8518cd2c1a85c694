"""Bundle build/verify throughput against the hashing limit and peers, on the same files.

Usage: python3 bench/bench_verify.py [--sizes 4GiB,512MiB,512MiB,512MiB,512MiB] [--runs 3] [--dir DIR]

Prints one table: median wall time of each row over --runs, throughput in GB/s (decimal) of the
weights bytes, ratio to the all-core hashlib limit of the same digest, and peak RSS.
Peers: coreutils sha256sum/sha384sum over the files. (OpenSSF model_signing joins with the
performance work.)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.bundle.manifest import parse_size
from enclave.trust.keys import SigningKey
from tests.conftest import Keys, make_root


def make_weights(directory: Path, sizes: list[int]) -> list[Path]:
    directory.mkdir(parents=True)
    block = os.urandom(16 * 1024 * 1024)
    paths = []
    for index, size in enumerate(sizes):
        path = directory / f"shard-{index:02d}.bin"
        with path.open("wb") as handle:
            left = size
            while left:
                handle.write(block[: min(left, len(block))])
                left -= min(left, len(block))
        paths.append(path)
    return paths


def hashlib_limit(paths: list[Path], algorithm: str) -> None:
    """All-core hashlib over 16 MiB chunks: the ceiling any verifier in Python can reach."""
    chunk = 16 * 1024 * 1024

    def one(path: Path, offset: int) -> bytes:
        with path.open("rb", buffering=0) as handle:
            handle.seek(offset)
            return hashlib.new(algorithm, handle.read(chunk)).digest()

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        jobs = [pool.submit(one, p, o) for p in paths for o in range(0, p.stat().st_size, chunk)]
        for job in jobs:
            job.result()


def timed_process(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4GiB,512MiB,512MiB,512MiB,512MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    total = sum(sizes)
    work = Path(tempfile.mkdtemp(prefix="enclave-bench-", dir=args.dir))
    try:
        paths = make_weights(work / "weights", sizes)
        keys = Keys(
            *(
                SigningKey.generate(a)
                for a in ["ecdsa-p384", "ecdsa-p384", "ml-dsa-87", "ecdsa-p384", "ecdsa-p384"]
            ),
            dir=work,
        )  # type: ignore[arg-type]
        for name in ("ecdsa", "mldsa"):
            getattr(keys, name).write(work / name, None)
        root = make_root(keys, work / "root.json", threshold=2, bundle=(keys.ecdsa, keys.mldsa))
        env = dict(os.environ)
        rows: list[tuple[str, str, list[float], int]] = []
        enclave = [sys.executable, "-m", "enclave.cli"]
        for algorithm in ("sha256", "sha384"):
            (work / f"{algorithm}.yaml").write_text(
                "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: bench, version: 1.0.0}\n"
                f"spec:\n  digest: {algorithm}\n  components:\n"
                "    - {name: weights, kind: model, path: ./weights}\n"
            )
            limit, peer, build, verify, extract = [], [], [], [], []
            rss = {"build": 0, "verify": 0, "extract": 0}
            for run in range(args.runs):
                start = time.perf_counter()
                hashlib_limit(paths, algorithm)
                limit.append(time.perf_counter() - start)
                peer.append(timed_process([f"{algorithm}sum", *map(str, paths)])[0])
                out = work / f"out-{algorithm}-{run}"
                t, m = timed_process(
                    [
                        *enclave,
                        "bundle",
                        "build",
                        str(work / f"{algorithm}.yaml"),
                        "--out",
                        str(out),
                        "--key",
                        str(work / "ecdsa"),
                    ],
                    env,
                )
                build.append(t)
                rss["build"] = max(rss["build"], m)
                bundle = out / "bench-1.0.0.bundle"
                subprocess.run(
                    [*enclave, "bundle", "sign", str(bundle), "--key", str(work / "mldsa")],
                    check=True,
                    capture_output=True,
                )
                t, m = timed_process([*enclave, "bundle", "verify", str(bundle), "--trust", str(root)], env)
                verify.append(t)
                rss["verify"] = max(rss["verify"], m)
                target = work / f"x-{algorithm}-{run}"
                t, m = timed_process(
                    [
                        *enclave,
                        "bundle",
                        "verify",
                        str(bundle),
                        "--trust",
                        str(root),
                        "--extract-to",
                        str(target),
                    ],
                    env,
                )
                extract.append(t)
                rss["extract"] = max(rss["extract"], m)
                shutil.rmtree(target)
                shutil.rmtree(out)
            rows += [
                (f"hashlib all cores ({os.cpu_count()})", algorithm, limit, 0),
                (f"coreutils {algorithm}sum", algorithm, peer, 0),
                ("enclave bundle build", algorithm, build, rss["build"]),
                ("enclave bundle verify", algorithm, verify, rss["verify"]),
                ("enclave bundle verify --extract-to", algorithm, extract, rss["extract"]),
            ]
        print(
            f"weights: {len(sizes)} files, {total / 1e9:.2f} GB;"
            f" median of {args.runs} runs; {os.cpu_count()} cores"
        )
        print(f"| {'row':<36} | digest | seconds | GB/s  | x limit | peak RSS MiB |")
        print(f"|{'-' * 38}|--------|---------|-------|---------|--------------|")
        limits = {alg: statistics.median(t) for name, alg, t, _ in rows if name.startswith("hashlib")}
        for name, algorithm, times, peak in rows:
            median = statistics.median(times)
            rss_text = f"{peak / 2**20:.0f}" if peak else "-"
            print(
                f"| {name:<36} | {algorithm} | {median:7.2f} | {total / median / 1e9:5.2f}"
                f" | {limits[algorithm] / median:7.2f} | {rss_text:>12} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
