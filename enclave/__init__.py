"""enclave: carry an AI model and its safety stack across an air gap, verified before load."""

__version__ = "0.1.0"
