"""enclave.runtime."""
