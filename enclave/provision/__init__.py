"""enclave.provision."""
