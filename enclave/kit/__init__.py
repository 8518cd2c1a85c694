"""Offline installation kits (docs/OPERATIONS.md 15): enclave and every dependency as wheels,
pinned with their SHA-256 in a requirements file pip checks (`--require-hashes`), with an SBOM,
an install script and `verify-kit.py`, all listed with their SHA-256 and SHA-384 in an in-toto
statement signed (DSSE) by keys of the bundle role, like a bundle.

- `build.py`: `enclave kit build`, on the low side (pip fetches the wheels).
- `bootstrap.py`: the check a sysadmin runs before any of the kit's code (the kit carries it as
  `verify-kit.py`): the standard library and the openssl command only. It is also the one
  reader of the kit statement and the file check that enclave itself uses.
- `install.py`: `enclave kit verify` and `enclave kit install` (from a kit directory, or from
  a verified bundle that carries the kit as a component of kind `wheelhouse`).
"""
