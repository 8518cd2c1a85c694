"""enclave.images."""
