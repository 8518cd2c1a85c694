"""enclave.trust."""
