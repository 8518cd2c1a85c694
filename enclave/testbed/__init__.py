"""enclave.testbed: a local simulated enclave of N hardened-host containers over loopback SSH.

`up(dir, hosts)`, `down(dir)`, `status(dir)`; `ENGINE_SCRIPT` starts the shared Docker engine.
"""

from enclave.testbed.hosts import ENGINE_SCRIPT, address_of, down, status, up
from enclave.testbed.state import HostState, TestbedState

__all__ = ["ENGINE_SCRIPT", "HostState", "TestbedState", "address_of", "down", "status", "up"]
