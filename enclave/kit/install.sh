#!/bin/sh
# Install this enclave kit into a virtual environment, offline (docs/OPERATIONS.md 15).
# Run it only after the kit passed the bootstrap check, made with a copy of verify-kit.py that
# came with root.json through the trusted channel (not this kit's own copy):
#     python3 -I /media/trusted/verify-kit.py KIT --trust root.json && sh KIT/install.sh [VENV]
# VENV defaults to /opt/enclave; PYTHON chooses the interpreter (default python3), which must be
# the CPython version the kit was built for (3.11 or later: on RHEL 9, whose python3 is 3.9,
# PYTHON=python3.11 or python3.12; Debian and Ubuntu need the python3.X-venv package).
# pip takes only this kit's wheels (--no-index), each only with the SHA-256 that
# requirements.txt pins (--require-hashes). Plain POSIX sh; no network.
set -eu
kit=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
venv=${1:-/opt/enclave}
python=${PYTHON:-python3}
if [ -x "$venv/bin/python" ]; then
    python=$venv/bin/python
fi
# The kit's Python, from its statement (checked by verify-kit.py); this runs on any python3.
want=$("$python" -c 'import base64, json, sys
with open(sys.argv[1], "rb") as f:
    envelope = json.loads(f.read().decode("utf-8"))
print(json.loads(base64.b64decode(envelope["payload"]).decode("utf-8"))["predicate"]["python"])' \
    "$kit/kit.dsse.json")
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$want" ]; then
    if [ "$python" = "$venv/bin/python" ]; then
        hint="give a new VENV"
    else
        hint="set PYTHON=python$want"
    fi
    echo "install.sh: the kit is for CPython $want; $python is Python $have ($hint)" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip --isolated install --no-index --find-links "$kit" --require-hashes \
    --no-cache-dir --disable-pip-version-check --no-input -r "$kit/requirements.txt"
"$venv/bin/enclave" --version
