"""enclave.testbed."""
