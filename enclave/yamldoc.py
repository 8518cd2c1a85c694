"""The one YAML loader for the documents enclave reads as data: manifests, policies, canaries.

Safe construction only, one document, and no anchors or aliases (`&a`, `*a`): a document of a
few hundred bytes can otherwise expand, alias by alias, into billions of nodes (the "billion
laughs" bomb) before any schema check runs. These documents never need them, so the composer
refuses the first anchor or alias it meets, before anything is expanded.
"""

from __future__ import annotations

from typing import Any

import yaml

from enclave.errors import UsageError


class PlainLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors and aliases as it composes."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&, *) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml_document(text: bytes, source: str, what: str) -> tuple[yaml.Node, Any]:
    """One YAML document as its node (for line numbers and duplicate keys) and its data; a
    file that is empty, not UTF-8, not YAML or that uses anchors or aliases is a UsageError
    naming `source` (and the line)."""
    try:
        loader = PlainLoader(text.decode("utf-8"))
        try:
            node = loader.get_single_node()
            if node is None:
                raise UsageError(f"{source}: empty {what}")
            return node, loader.construct_document(node)
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise UsageError(f"{source}: {what} is not UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UsageError(f"{source}{where}: invalid YAML: {problem}") from None
