#!/bin/sh
# Install this enclave kit into a virtual environment, offline (docs/OPERATIONS.md 15).
# Run it only after the kit passed the bootstrap check, made with a copy of verify-kit.py that
# came with root.json through the trusted channel (not this kit's own copy):
#     python3 /media/trusted/verify-kit.py KIT --trust root.json && sh KIT/install.sh [VENV]
# VENV defaults to /opt/enclave; PYTHON chooses the interpreter (default python3), which must be
# the CPython version the kit was built for. pip takes only this kit's wheels (--no-index),
# each only with the SHA-256 that requirements.txt pins (--require-hashes).
set -eu
kit=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
venv=${1:-/opt/enclave}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip --isolated install --no-index --find-links "$kit" --require-hashes \
    --no-cache-dir --disable-pip-version-check --no-input -r "$kit/requirements.txt"
"$venv/bin/enclave" --version
