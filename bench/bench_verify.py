"""Bundle build/verify throughput against the hashing limit and peers, on the same files.

Needs GNU time (Debian package `time`) for peak RSS.

Usage: python3 bench/bench_verify.py [--sizes 4GiB,512MiB,512MiB,512MiB,512MiB] [--runs 3] [--dir DIR]

Prints one table: median wall time of each row over --runs, throughput in GB/s (decimal) of the
weights bytes, ratio to the all-core hashlib limit of the same digest, and peak RSS.
Peers on the same files: coreutils sha256sum/sha384sum, OpenSSF model_signing (file and shard
serialisation, EC P-384 key) when installed, and the disk's own write ceilings (dd conv=fsync
through the page cache, and with oflag=direct). Every row reads its input from the page cache:
the weights are read once after they are made, and the bundle before the verify rows (enclave
writes bundles and extractions with O_DIRECT, which leaves them out of the cache).
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.bundle.manifest import parse_size
from enclave.trust.keys import SigningKey
from tests.conftest import Keys, make_root


def make_weights(directory: Path, sizes: list[int]) -> list[Path]:
    """Random files in which no two 16 MiB chunks are equal (a counter in each block), like
    real weights: the content store then keeps every chunk, as it would for a real model."""
    directory.mkdir(parents=True)
    block = bytearray(os.urandom(16 * 1024 * 1024))
    paths = []
    counter = 0
    for index, size in enumerate(sizes):
        path = directory / f"shard-{index:02d}.bin"
        with path.open("wb") as handle:
            left = size
            while left:
                counter += 1
                block[:8] = counter.to_bytes(8, "big")
                handle.write(block[: min(left, len(block))])
                left -= min(left, len(block))
        paths.append(path)
    return paths


def warm(path: Path) -> None:
    """Read a file once so the rows after it read from the page cache, like the peers."""
    with path.open("rb", buffering=0) as handle:
        while handle.read(16 * 1024 * 1024):
            pass


def hashlib_limit(paths: list[Path], algorithm: str) -> None:
    """All-core hashlib over 16 MiB slices of the files, mapped: the ceiling for hashing them.

    Each slice is hashed straight from the page cache through `mmap` (no copy into a buffer, no
    allocation per slice), by one thread per core. A verifier cannot do better; enclave's does
    more (it copies each chunk into a private buffer first, so the bytes it checks are the bytes
    it writes), so this row is the strict limit.
    """
    chunk = 16 * 1024 * 1024
    jobs = iter([(p, o) for p in paths for o in range(0, p.stat().st_size, chunk)])
    lock = threading.Lock()

    def worker() -> None:
        maps: dict[Path, memoryview] = {}
        while True:
            with lock:
                job = next(jobs, None)
            if job is None:
                break
            path, offset = job
            if path not in maps:
                with path.open("rb") as handle:
                    maps[path] = memoryview(mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ))
            hashlib.new(algorithm, maps[path][offset : offset + chunk]).digest()
        for view in maps.values():
            view.release()

    threads = [threading.Thread(target=worker) for _ in range(os.cpu_count() or 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def timed_process(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command, measured by GNU time in the child.

    (`wait4`'s ru_maxrss would include this benchmark's own memory, inherited at fork.)
    """
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {proc.stderr}")
    return elapsed, int(proc.stderr.strip().splitlines()[-1]) * 1024


MODEL_SIGNING = """
import sys
from model_signing import hashing, signing
config = signing.Config().use_elliptic_key_signer(private_key=sys.argv[2])
hashing_config = hashing.Config()
if sys.argv[4] == "shard":
    hashing_config.use_shard_serialization()
else:
    hashing_config.use_file_serialization()
config.set_hashing_config(hashing_config).sign(sys.argv[1], sys.argv[3])
"""


MODES = {"file": "default, per file", "shard": "shard mode"}
PEER = f"OpenSSF model_signing sign ({MODES['file']})"  # the ratio column's reference


def have_model_signing() -> bool:
    return subprocess.run([sys.executable, "-c", "import model_signing"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4GiB,512MiB,512MiB,512MiB,512MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where weights, bundles and extractions go")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    total = sum(sizes)
    work = Path(tempfile.mkdtemp(prefix="enclave-bench-", dir=args.dir))
    rows: dict[tuple[str, str], tuple[list[float], list[int]]] = {}

    def record(name: str, algorithm: str, seconds: float, rss: int = 0) -> None:
        times, peaks = rows.setdefault((name, algorithm), ([], []))
        times.append(seconds)
        peaks.append(rss)

    try:
        paths = make_weights(work / "weights", sizes)
        for path in paths:
            warm(path)
        algorithms = ["ecdsa-p384", "ecdsa-p384", "ml-dsa-87", "ecdsa-p384", "ecdsa-p384"]
        keys = Keys(*(SigningKey.generate(a) for a in algorithms), dir=work)  # type: ignore[arg-type]
        for name in ("ecdsa", "mldsa"):
            getattr(keys, name).write(work / name, None)
        root = make_root(keys, work / "root.json", threshold=2, bundle=(keys.ecdsa, keys.mldsa))
        enclave = [sys.executable, "-m", "enclave.cli"]
        signing_peer = have_model_signing()
        for run in range(args.runs):
            # The disk's write ceilings: through the page cache, and around it (as verify writes).
            for flags in (["conv=fsync"], ["oflag=direct", "conv=fsync"]):
                blocks = -(-total // (16 << 20))
                dd = ["dd", "if=/dev/zero", f"of={work / 'dd'}", "bs=16M", f"count={blocks}", *flags]
                seconds, _ = timed_process(dd)
                (work / "dd").unlink()
                record(f"disk write ceiling (dd {' '.join(flags)})", "-", seconds)
            for algorithm in ("sha256", "sha384"):
                manifest = work / f"{algorithm}.yaml"
                manifest.write_text(
                    "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: bench, version: 1.0.0}\n"
                    f"spec:\n  digest: {algorithm}\n  components:\n"
                    "    - {name: weights, kind: model, path: ./weights}\n"
                )
                start = time.perf_counter()
                hashlib_limit(paths, algorithm)
                record(f"hashlib all cores ({os.cpu_count()})", algorithm, time.perf_counter() - start)
                record(
                    f"coreutils {algorithm}sum",
                    algorithm,
                    timed_process([f"{algorithm}sum", *map(str, paths)])[0],
                )
                if signing_peer and algorithm == "sha256":
                    for mode in ("file", "shard"):
                        command = [
                            sys.executable,
                            "-c",
                            MODEL_SIGNING,
                            str(work / "weights"),
                            str(work / "ecdsa"),
                            str(work / "model.sig"),
                            mode,
                        ]
                        record(
                            f"OpenSSF model_signing sign ({MODES[mode]})", algorithm, *timed_process(command)
                        )
                        (work / "model.sig").unlink()
                out = work / f"out-{algorithm}-{run}"
                build = [
                    *enclave,
                    "bundle",
                    "build",
                    str(manifest),
                    "--out",
                    str(out),
                    "--key",
                    str(work / "ecdsa"),
                ]
                record("enclave bundle build", algorithm, *timed_process(build))
                bundle = out / "bench-1.0.0.bundle"
                subprocess.run(
                    [*enclave, "bundle", "sign", str(bundle), "--key", str(work / "mldsa")],
                    check=True,
                    capture_output=True,
                )
                warm(bundle)
                state = work / f"state-{algorithm}-{run}"  # each run's bundle is a new build of 1.0.0
                verify = [
                    *enclave,
                    "bundle",
                    "verify",
                    str(bundle),
                    "--trust",
                    str(root),
                    "--state-dir",
                    str(state),
                ]
                record("enclave bundle verify", algorithm, *timed_process(verify))
                # As an admission runs it: the tree is published, and the state directory's content
                # store (on the same disk) keeps it by hard links to the published files.
                target = work / f"x-{algorithm}-{run}"
                record(
                    "enclave bundle verify --extract-to (disk, admission)",
                    algorithm,
                    *timed_process([*verify, "--extract-to", str(target)]),
                )
                shutil.rmtree(target)
                shutil.rmtree(state)
                shutil.rmtree(out)
        print(
            f"weights: {len(sizes)} files, {total / 1e9:.2f} GB;"
            f" median of {args.runs} runs; {os.cpu_count()} cores"
        )
        print(f"| {'row':<50} | digest | seconds | GB/s  | x hash limit | x model_signing | peak RSS MiB |")
        print(f"|{'-' * 52}|--------|---------|-------|--------------|-----------------|--------------|")
        peer = statistics.median(rows[(PEER, "sha256")][0]) if (PEER, "sha256") in rows else None
        limits = {
            alg: statistics.median(t) for (name, alg), (t, _) in rows.items() if name.startswith("hashlib")
        }
        for (name, algorithm), (times, peaks) in sorted(rows.items(), key=lambda item: item[0][1]):
            median = statistics.median(times)
            ratio = f"{limits[algorithm] / median:12.2f}" if algorithm in limits else f"{'-':>12}"
            rss_text = f"{max(peaks) / 2**20:.0f}" if max(peaks) else "-"
            versus = f"{peer / median:15.2f}" if peer and algorithm == "sha256" else f"{'-':>15}"
            print(
                f"| {name:<50} | {algorithm:<6} | {median:7.2f} | {total / median / 1e9:5.2f}"
                f" | {ratio} | {versus} | {rss_text:>12} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
