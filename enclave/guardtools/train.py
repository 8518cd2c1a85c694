"""`enclave guard train`: a deterministic fit of the guard from the labelled corpus.

No network and no randomness beyond one seed: the same corpus, seed and settings give the same
bytes. The model is multinomial logistic regression (L2, class-balanced) over the TF-IDF
features of `enclave.guard.features`, fitted by full-batch Adam on sparse rows.

Thresholds are not set by hand. Five-fold cross-validation gives an out-of-fold p(stop) for every
training example, and the two thresholds are read off it as target rates:
- `stop`: the lowest p(stop) at which at most `benign_stop_rate` of the allow examples stop;
- `band`: the highest p(stop) at which at least `stop_recall` of the stop examples are stopped
  (decisively or in the band), never above `stop`.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enclave.errors import UsageError
from enclave.fileio import published_directory
from enclave.guard import features
from enclave.guard.model import (
    ALLOW,
    API_VERSION,
    CARD,
    CLASSES,
    DATA_FILES,
    KIND,
    MANIFEST,
    SELFTEST,
    VOCABULARY,
    WEIGHTS,
    Guard,
    features_config,
    file_digest,
    load_guard,
    load_weights,
)
from enclave.guardtools.corpus import Corpus, Example
from enclave.normalise import NORMALISATION

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class Settings:
    seed: int = 20261204
    min_df: int = 2
    l2: float = 1e-5  # L2 penalty on the weights (chosen on out-of-fold rates: 1e-5 < 1e-4 < 1e-3)
    epochs: int = 300
    learning_rate: float = 0.05
    folds: int = 5
    stop_recall: float = 0.98  # out-of-fold share of stop examples that must be stopped
    benign_stop_rate: float = 0.01  # out-of-fold share of allow examples stopped decisively
    deadline_ms: int = 250
    selftest_per_class: int = 16

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Fitted:
    terms: list[str]
    idf: list[float]
    weights: FloatArray  # (terms + 1) x classes, last row bias


class _Rows:
    """Sparse rows (CSR pieces) for the fit."""

    def __init__(self, rows: IntArray, cols: IntArray, vals: FloatArray, n_rows: int, n_cols: int) -> None:
        self.rows, self.cols, self.vals, self.n_rows, self.n_cols = rows, cols, vals, n_rows, n_cols

    def times(self, weights: FloatArray) -> FloatArray:
        out = np.empty((self.n_rows, weights.shape[1]))
        for c in range(weights.shape[1]):
            out[:, c] = np.bincount(
                self.rows, weights=self.vals * weights[self.cols, c], minlength=self.n_rows
            )
        return out

    def transpose_times(self, grad: FloatArray) -> FloatArray:
        out = np.empty((self.n_cols, grad.shape[1]))
        for c in range(grad.shape[1]):
            out[:, c] = np.bincount(self.cols, weights=self.vals * grad[self.rows, c], minlength=self.n_cols)
        return out


def vocabulary_of(texts: Sequence[str], min_df: int) -> tuple[list[str], list[float]]:
    df: Counter[str] = Counter()
    for text in texts:
        words, chars = features.terms(text)
        df.update(set(words) | set(chars))
    terms = sorted(t for t, n in df.items() if n >= min_df)
    total = len(texts)
    idf = [math.log((1 + total) / (1 + df[t])) + 1.0 for t in terms]
    return terms, idf


def _rows(texts: Sequence[str], terms: Sequence[str], idf: Sequence[float]) -> _Rows:
    vocabulary = {t: i for i, t in enumerate(terms)}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for r, text in enumerate(texts):
        indices, values = features.vectorise(text, vocabulary, idf)
        rows.extend([r] * len(indices))
        cols.extend(indices)
        vals.extend(values)
    return _Rows(
        np.asarray(rows, dtype=np.int64),
        np.asarray(cols, dtype=np.int64),
        np.asarray(vals),
        len(texts),
        len(terms),
    )


def fit(texts: Sequence[str], labels: Sequence[int], settings: Settings) -> Fitted:
    terms, idf = vocabulary_of(texts, settings.min_df)
    x = _rows(texts, terms, idf)
    y = np.asarray(labels, dtype=np.int64)
    n, k = len(texts), len(CLASSES)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    sample_weight = (n / (k * np.maximum(counts, 1)))[y] / n  # class-balanced, mean 1/n
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    w = np.zeros((len(terms), k))
    b = np.zeros(k)
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, settings.epochs + 1):
        logits = x.times(w) + b
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        residual = (probs - onehot) * sample_weight[:, None]
        grad_w = x.transpose_times(residual) + settings.l2 * w
        grad_b = residual.sum(axis=0)
        for param, grad, m, v in ((w, grad_w, m_w, v_w), (b, grad_b, m_b, v_b)):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= settings.learning_rate * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
    return Fitted(terms, idf, np.vstack([w, b]))


def predict_stop(fitted: Fitted, texts: Sequence[str]) -> FloatArray:
    x = _rows(texts, fitted.terms, fitted.idf)
    logits = x.times(fitted.weights[:-1]) + fitted.weights[-1]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    result: FloatArray = 1.0 - probs[:, CLASSES.index(ALLOW)]
    return result


def folds_of(labels: Sequence[int], folds: int, seed: int) -> IntArray:
    """Stratified fold number per example, from one seeded permutation per class."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    y = np.asarray(labels)
    for klass in range(len(CLASSES)):
        members = np.flatnonzero(y == klass)
        members = members[rng.permutation(len(members))]
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def out_of_fold(texts: Sequence[str], labels: Sequence[int], settings: Settings) -> FloatArray:
    assignment = folds_of(labels, settings.folds, settings.seed)
    result = np.zeros(len(texts))
    for fold in range(settings.folds):
        train = np.flatnonzero(assignment != fold)
        test = np.flatnonzero(assignment == fold)
        fitted = fit([texts[int(i)] for i in train], [labels[int(i)] for i in train], settings)
        result[test] = predict_stop(fitted, [texts[int(i)] for i in test])
    return result


def thresholds_from(
    p_stop: FloatArray, is_stop: np.ndarray[Any, np.dtype[np.bool_]], settings: Settings
) -> dict[str, float]:
    benign = np.sort(p_stop[~is_stop])
    stops = np.sort(p_stop[is_stop])
    # stop: just above the benign score that would make the benign stop rate exceed the target.
    allowed = math.floor(settings.benign_stop_rate * len(benign))
    stop = float(np.nextafter(benign[len(benign) - allowed - 1], 1.0)) if allowed < len(benign) else 0.5
    # band: the score of the stop example at the recall target's quantile.
    missed = math.floor((1 - settings.stop_recall) * len(stops))
    band = float(stops[missed])
    stop = min(max(stop, 1e-6), 1 - 1e-6)
    band = min(max(band, 1e-6), stop)
    return {"band": round(band, 6), "stop": round(stop, 6)}


def train(corpus: Corpus, settings: Settings) -> tuple[Fitted, dict[str, float], dict[str, Any]]:
    """Fit on the whole corpus with thresholds from out-of-fold predictions; returns the oof report."""
    texts = [e.text for e in corpus.examples]
    labels = [CLASSES.index(e.label) for e in corpus.examples]
    missing = [c for c in CLASSES if c not in {e.label for e in corpus.examples}]
    if missing:
        raise UsageError(f"corpus has no examples of {', '.join(missing)}")
    oof = out_of_fold(texts, labels, settings)
    is_stop = np.asarray([e.label != ALLOW for e in corpus.examples])
    thresholds = thresholds_from(oof, is_stop, settings)
    oof_report = {
        "stop_recall": float(np.mean(oof[is_stop] >= thresholds["band"])),
        "stop_decisive": float(np.mean(oof[is_stop] >= thresholds["stop"])),
        "benign_stopped": float(np.mean(oof[~is_stop] >= thresholds["band"])),
        "benign_band": float(
            np.mean((oof[~is_stop] >= thresholds["band"]) & (oof[~is_stop] < thresholds["stop"]))
        ),
    }
    return fit(texts, labels, settings), thresholds, oof_report


def selftest_cases(
    guard: Guard, examples: Sequence[Example], per_class: int, seed: int
) -> list[dict[str, Any]]:
    """A seeded sample per class, with the exact verdict the guard gives each prompt."""
    rng = np.random.default_rng(seed + 1)
    cases = []
    for klass in CLASSES:
        members = [e for e in examples if e.label == klass]
        for i in sorted(rng.permutation(len(members))[:per_class].tolist()):
            verdict = guard.judge([members[i].text])
            cases.append(
                {
                    "text": members[i].text,
                    "action": verdict.action,
                    "class": verdict.label,
                    "p_stop": round(verdict.p_stop, 6),
                }
            )
    return cases


def write_guard(
    out: Path,
    fitted: Fitted,
    thresholds: dict[str, float],
    corpus: Corpus,
    settings: Settings,
    card_for: Callable[[Guard], dict[str, Any]],
    name: str = "enclave-guard",
    version: str = "1.0.0",
) -> Guard:
    """Write the guard into a staging directory, self-test it, then rename it into place.
    `card_for` gets the guard exactly as it will load (float32 weights) and returns the model
    card (its evaluation), which is pinned with the rest."""
    if out.exists():
        raise UsageError(f"{out}: already exists; choose a new directory")
    with published_directory(out) as staging:
        blobs: dict[str, bytes] = {
            VOCABULARY: _json({"terms": fitted.terms, "idf": fitted.idf}),
            WEIGHTS: _npy(fitted.weights.astype(np.float32)),
        }
        manifest: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": name,
            "version": version,
            "classes": list(CLASSES),
            "normalisation": NORMALISATION,
            "features": features_config(),
            "thresholds": thresholds,
            "deadline_ms": settings.deadline_ms,
            "files": {},
        }
        # The self-test is taken from the guard as it will load: weights at float32.
        blobs[SELFTEST] = b""
        blobs[CARD] = b"{}"
        provisional = _assemble(staging, manifest, blobs)
        blobs[SELFTEST] = "".join(
            json.dumps(c, ensure_ascii=False) + "\n"
            for c in selftest_cases(provisional, corpus.examples, settings.selftest_per_class, settings.seed)
        ).encode("utf-8")
        card = {
            **card_for(provisional),
            "corpus": {"digest": corpus.digest, "counts": corpus.counts()},
            "settings": settings.as_dict(),
        }
        blobs[CARD] = _json(card)
        _assemble(staging, manifest, blobs)
        load_guard(staging)  # the pins and the self-test hold before anything is published
    return load_guard(out)


def _assemble(directory: Path, manifest: dict[str, Any], blobs: dict[str, bytes]) -> Guard:
    for name in DATA_FILES:
        (directory / name).write_bytes(blobs[name])
    manifest["files"] = {name: file_digest(blobs[name]) for name in DATA_FILES}
    (directory / MANIFEST).write_bytes(_json(manifest))
    vocabulary = json.loads(blobs[VOCABULARY])
    weights = load_weights(directory / WEIGHTS)
    return Guard(
        manifest,
        vocabulary["terms"],
        vocabulary["idf"],
        weights,
        file_digest(_json(manifest)),
        str(directory),
    )


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
