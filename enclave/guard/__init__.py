"""The learned guard as the gateway loads and runs it: `features` (TF-IDF over the policy
normaliser's tokens, enclave.normalise) and `model` (the artefact, its pins and self-test,
judging). Training and evaluating a guard is enclave.guardtools."""
