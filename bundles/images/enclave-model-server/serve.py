"""enclave-model-server: serve one GGUF file with llama.cpp's OpenAI-compatible server.

The server runs in-process through the xllamacpp wheel. Weights are never in the image: the
GGUF file is mounted read-only (default path /models/model.gguf). Binds 127.0.0.1 unless told
otherwise; the safety gateway is the only client meant to reach it. Runs until SIGTERM/SIGINT.
Exit codes: 0 stopped by a signal, 2 bad arguments or no model file, 1 the server failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

STOP = {signal.SIGTERM, signal.SIGINT}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="enclave-model-server", description=__doc__)
    parser.add_argument("--model", default="/models/model.gguf", help="GGUF file (mounted read-only)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ctx-size", type=int, default=2048, help="context length in tokens")
    parser.add_argument("--parallel", type=int, default=1, help="requests served at once")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--alias", help="model name reported by /v1/models")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if not os.path.isfile(args.model):
        print(f"enclave-model-server: {args.model}: no such file (mount the GGUF read-only)", file=sys.stderr)
        return 2
    # Block the stop signals before llama.cpp starts its threads, so only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP)
    # Idle OpenMP workers sleep instead of spinning: the gateway's guard shares these cores, and
    # spinning workers would take its time slices between tokens. Read once, when the runtime loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    if args.alias:
        params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = True
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:  # the wheel raises plain exceptions for a bad model or a busy port
        print(f"enclave-model-server: cannot serve {args.model}: {exc}", file=sys.stderr)
        return 1
    print(f"enclave-model-server: serving {args.model} at {server.listening_address}", flush=True)
    received = signal.sigwait(STOP)
    print(f"enclave-model-server: {signal.Signals(received).name}, stopping", flush=True)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
