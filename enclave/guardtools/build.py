"""Train, evaluate and write a guard in one step (`enclave guard train`), and the text reports."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enclave.errors import UsageError
from enclave.guard.model import CLASSES, Guard
from enclave.guardtools.corpus import load_corpus, text_key
from enclave.guardtools.evaluate import evaluate, overlap
from enclave.guardtools.train import Settings, train, write_guard
from enclave.runtime.gateway.policy import Policy


def build_guard(
    corpus_dir: Path,
    out: Path,
    policy: Policy,
    eval_dir: Path | None = None,
    settings: Settings | None = None,
    version: str = "1.0.0",
) -> tuple[Guard, list[Any]]:
    """Fit on `corpus_dir`, evaluate the layered decision on `eval_dir` (written apart from
    training), and write the guard with its model card to `out` (a new directory)."""
    settings = settings or Settings()
    corpus = load_corpus(corpus_dir)
    held_out = load_corpus(eval_dir) if eval_dir is not None else None
    if held_out is not None:
        trained = {text_key(e.text): e.source for e in corpus.examples}
        for example in held_out.examples:
            if text_key(example.text) in trained:
                also = trained[text_key(example.text)]
                raise UsageError(f"{example.source}: also in the training corpus ({also})")
    fitted, thresholds, oof = train(corpus, settings)
    misses: list[Any] = []

    def card_for(guard: Guard) -> dict[str, Any]:
        card: dict[str, Any] = {"out_of_fold": oof, "thresholds": thresholds, "policy": policy.digest}
        if held_out is not None:
            evaluation = evaluate(policy, guard, held_out.examples)
            misses.extend(evaluation.pop("misses"))
            rules_only = evaluate(policy, None, held_out.examples)
            rules_only.pop("misses")
            card["evaluation_corpus"] = {"digest": held_out.digest, "counts": held_out.counts()}
            card["overlap"] = overlap([e.text for e in corpus.examples], [e.text for e in held_out.examples])
            card["evaluation"] = evaluation
            card["evaluation_rules_only"] = rules_only
        return card

    guard = write_guard(out, fitted, thresholds, corpus, settings, card_for, version=version)
    return guard, misses


def format_evaluation(report: Mapping[str, Any]) -> str:
    """Per-class recall, right action, benign false stops and the band, with 95% intervals."""

    def line(name: str, r: Mapping[str, Any]) -> str:
        low, high = r["ci95"]
        value = "n/a" if r["rate"] is None else f"{100 * r['rate']:5.1f}%"
        return f"  {name:<34} {value}  [{100 * low:5.1f}, {100 * high:5.1f}]  ({r['k']}/{r['n']})"

    lines = ["stopped (refuse or hold), per class:"]
    for klass, r in report["classes"].items():
        lines.append(line(klass, r["stopped"]))
    lines.append(line("all stop classes", report["stopped"]))
    lines.append("right action (refuse vs hold):")
    for klass, r in report["classes"].items():
        lines.append(line(klass, r["right_action"]))
    lines.append(line("all stop classes", report["right_action"]))
    lines.append("benign requests stopped (false stops, band included):")
    lines.append(line("all allow", report["benign_stopped"]))
    for kind, r in report["allow"].items():
        lines.append(line(f"allow/{kind}", r))
    lines.append(line("benign in the uncertain band", report["benign_band"]))
    lines.append("confusion (rows: true label; columns: decided class):")
    lines.append("  " + " " * 26 + "".join(f"{c[:12]:>14}" for c in CLASSES))
    for truth, row in report["confusion"].items():
        lines.append(f"  {truth:<26}" + "".join(f"{row[c]:>14}" for c in CLASSES))
    lines.append("deciding layer: " + ", ".join(f"{k} {v}" for k, v in report["layers"].items()))
    return "\n".join(lines)
