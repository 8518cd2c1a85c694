"""Running containers against signed image IDs (the Docker SDK's answers stubbed: unit level)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from enclave.bundle.statement import BundleStatement, ComponentEntry, ImageRecord, Member
from enclave.errors import IntegrityError
from enclave.runtime.agent.images import (
    Container,
    check_images,
    compare_images,
    running_containers,
    signed_image_ids,
)
from enclave.runtime.agent.integrity import VerifiedStatement

GATEWAY_ID = "sha256:" + "1" * 64
MODEL_ID = "sha256:" + "2" * 64
OTHER_ID = "sha256:" + "9" * 64


def statement(*images: tuple[str, str]) -> VerifiedStatement:
    members = tuple(Member(f"content/{name}/image.tar", 1, 0o644, "0" * 96) for name, _ in images)
    components = tuple(
        ComponentEntry(
            name, "image", (f"content/{name}/image.tar",), None,
            ImageRecord(image_id, "sha256:" + "3" * 64, "linux/amd64", f"enclave-{name}:0.1.0"),
        )
        for name, image_id in images
    )  # fmt: skip
    plain = BundleStatement("b", "1.0.0", "2026-01-01T00:00:00Z", "sha384", 1 << 20, components, members)
    return VerifiedStatement(plain, "0" * 64, ("k",))


@dataclass
class FakeContainer:
    attrs: dict[str, Any]


class FakeEngine:
    """What docker.from_env() returns, as far as the check uses it."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.closed = False
        self.containers = self

    def list(self, sparse: bool = False) -> list[FakeContainer]:
        assert sparse, "one list call, no per-container inspect"
        return [FakeContainer(r) for r in self.rows]

    def close(self) -> None:
        self.closed = True


def row(name: str, image_id: str) -> dict[str, Any]:
    return {"Id": name * 8, "Names": [f"/{name}"], "ImageID": image_id, "Image": f"{name}:latest"}


def test_signed_ids_come_from_image_components() -> None:
    verified = statement(("gateway", GATEWAY_ID), ("model", MODEL_ID))
    assert signed_image_ids(verified.statement) == {"gateway": GATEWAY_ID, "model": MODEL_ID}
    assert signed_image_ids(statement().statement) == {}


def test_no_signed_images_is_explicitly_not_applicable() -> None:
    def never() -> Any:
        raise AssertionError("the engine is not asked when nothing is signed")

    result = check_images(statement(), never)
    assert result.result == "not_applicable" and not result.failed and "no image component" in result.summary


def test_running_signed_images_pass_and_idle_ones_are_reported() -> None:
    engine = FakeEngine([row("gw", GATEWAY_ID)])
    result = check_images(statement(("gateway", GATEWAY_ID), ("model", MODEL_ID)), lambda: engine)
    assert result.result == "pass" and result.data["not_running"] == ["model"]
    assert engine.closed


def test_a_container_on_an_unsigned_image_fails_by_name() -> None:
    engine = FakeEngine([row("gw", GATEWAY_ID), row("miner", OTHER_ID)])
    result = check_images(statement(("gateway", GATEWAY_ID)), lambda: engine)
    assert result.result == "fail" and result.error is IntegrityError
    assert [(f.kind, f.name) for f in result.findings] == [("unsigned-image", "miner")]
    assert OTHER_ID in result.findings[0].detail and "miner:latest" in result.findings[0].detail


def test_an_unreachable_engine_fails_closed() -> None:
    def down() -> Any:
        raise ConnectionError("Error while fetching server API version: connection refused")

    result = check_images(statement(("gateway", GATEWAY_ID)), down)
    assert result.result == "error" and result.failed and "cannot list containers" in result.summary


def test_without_a_verified_statement_the_check_cannot_run() -> None:
    result = check_images(None, lambda: FakeEngine([]))
    assert result.result == "error" and result.failed


def test_compare_and_parse_are_pure() -> None:
    running = running_containers(FakeEngine([row("a", GATEWAY_ID), {"Id": "x" * 64, "ImageID": OTHER_ID}]))
    assert running[1] == Container("xxxxxxxxxxxx", "x" * 64, OTHER_ID, "")
    findings, idle = compare_images({"gateway": GATEWAY_ID}, running)
    assert [f.name for f in findings] == ["xxxxxxxxxxxx"] and idle == []
    # IDs compare exactly: a look-alike (here upper case) is not the signed image.
    findings, _ = compare_images({"g": GATEWAY_ID}, [replace(running[0], image_id=GATEWAY_ID.upper())])
    assert len(findings) == 1
