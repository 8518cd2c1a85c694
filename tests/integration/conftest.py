"""Integration tests run against real services: this starts the shared Docker engine once."""

from __future__ import annotations

import subprocess

import pytest

from enclave.testbed import ENGINE_SCRIPT


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Install and start the engine if needed (idempotent). If it cannot start, every
    integration test fails: a check that cannot run is a failed check."""
    proc = subprocess.run(
        ["bash", str(ENGINE_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{ENGINE_SCRIPT} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The demo runs last: it is the whole lifecycle, and it needs the testbed's loopback
    addresses that the testbed and provisioning tests use while they run."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/integration/test_demo.py"))
