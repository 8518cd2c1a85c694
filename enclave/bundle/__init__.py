"""enclave.bundle."""
