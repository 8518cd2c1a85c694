"""Making and measuring a learned guard, offline: `enclave guard train|eval`.

- `corpus`: the labelled prompts (`bundles/guard/corpus/`);
- `train`: TF-IDF features and logistic regression, thresholds, the guard's files (`write_guard`);
- `evaluate`: the layered decision (policy rules, then the guard) on a labelled set;
- `build`: train, evaluate and write a guard with its model card in one step.

Above enclave.runtime because it measures the gateway's whole decision
(enclave.runtime.gateway.decide); the guard the gateway loads is enclave.guard.
"""
