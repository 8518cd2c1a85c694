"""Running containers against the image IDs the bundle signed.

The signed IDs are read from the verified statement: a component of kind `image` carries
`image.id` (`sha256:HEX`, Docker's image ID: the digest of the image's config; FORMAT.md).
A statement without such components makes the check "not applicable", said explicitly in
the log. When
it has some, every running container must run one of them: on an enclave host nothing runs
that was not signed. A signed image with no running container is reported, not failed (it
may run on another host).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enclave.bundle.statement import BundleStatement
from enclave.runtime.agent.integrity import VerifiedStatement
from enclave.runtime.agent.results import CheckResult, Finding, could_not_run, failed, not_applicable, passed

DOCKER_TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class Container:
    name: str
    id: str
    image_id: str  # sha256:HEX
    image: str  # the reference it was started from, for people


def signed_image_ids(statement: BundleStatement) -> dict[str, str]:
    """Component name -> signed image ID (the statement parser has checked their form)."""
    return {c.name: c.image.id for c in statement.components if c.kind == "image" and c.image is not None}


def running_containers(client: Any) -> list[Container]:
    """Running containers from the engine's list call (one request, no per-container inspect)."""
    found = []
    for container in client.containers.list(sparse=True):
        attrs: Mapping[str, Any] = container.attrs
        names = attrs.get("Names") or [attrs.get("Id", "?")[:12]]
        found.append(
            Container(
                name=str(names[0]).lstrip("/"),
                id=str(attrs.get("Id", "")),
                image_id=str(attrs.get("ImageID", "")),
                image=str(attrs.get("Image", "")),
            )
        )
    return found


def compare_images(
    signed: Mapping[str, str], running: Sequence[Container]
) -> tuple[list[Finding], list[str]]:
    """Findings for containers running unsigned images; names of signed images not running."""
    allowed = set(signed.values())
    findings = [
        Finding(
            "unsigned-image",
            c.name,
            f"runs image {c.image_id or '(unknown)'} ({c.image}), which the bundle did not sign",
        )
        for c in running
        if c.image_id not in allowed
    ]
    in_use = {c.image_id for c in running}
    idle = sorted(name for name, image_id in signed.items() if image_id not in in_use)
    return findings, idle


def default_client() -> Any:
    """The engine from the environment (DOCKER_HOST, else the local socket)."""
    import docker

    return docker.from_env(timeout=DOCKER_TIMEOUT_SECONDS)


def check_images(verified: VerifiedStatement | None, client_factory: Callable[[], Any]) -> CheckResult:
    if verified is None:
        return could_not_run(
            "images",
            Finding("statement", "BUNDLE.dsse.json", "no verified statement this round (see integrity)"),
        )
    signed = signed_image_ids(verified.statement)
    if not signed:
        return not_applicable("images", "the bundle signs no image IDs (no image component with image.id)")
    try:
        client = client_factory()
        try:
            running = running_containers(client)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
    except Exception as exc:  # the SDK raises DockerException, requests errors, OSError...
        return could_not_run("images", Finding("engine", "docker", f"cannot list containers: {exc}"))
    findings, idle = compare_images(signed, running)
    data: dict[str, Any] = {
        "signed": dict(sorted(signed.items())),
        "running": len(running),
        "not_running": idle,
    }
    if findings:
        return failed(
            "images",
            f"{len(findings)} of {len(running)} running containers run unsigned images",
            findings,
            **data,
        )
    idle_note = f"; signed but not running here: {', '.join(idle)}" if idle else ""
    return passed("images", f"{len(running)} running containers, all on signed images{idle_note}", **data)
