"""Bundles on the low side: build, sign, split into volumes, inspect (docs/FORMAT.md).

The public API is `__all__`; every other name in this package is an internal of the format.
Admitting a bundle on the high side is `enclave.admission.Admission`; a manifest with image
components is built with `build_bundle(..., images=enclave.images.collect.collect_images)`
(it needs a container engine).
Names are imported on first use, so `import enclave.bundle` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enclave.lazy import exports

__all__ = [
    "BundleStatement",
    "build_bundle",
    "inspect_bundle",
    "sign_bundle",
    "split_bundle",
]

_HOME = {
    "BundleStatement": "enclave.bundle.statement",
    "build_bundle": "enclave.bundle.build",
    "inspect_bundle": "enclave.bundle.inspect",
    "sign_bundle": "enclave.bundle.build",
    "split_bundle": "enclave.bundle.volumes",
}

if TYPE_CHECKING:
    from enclave.bundle.build import build_bundle, sign_bundle
    from enclave.bundle.inspect import inspect_bundle
    from enclave.bundle.statement import BundleStatement
    from enclave.bundle.volumes import split_bundle


__getattr__ = exports(__name__, _HOME)
