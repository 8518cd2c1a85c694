"""The learned guard: a TF-IDF + multinomial logistic regression model shipped as plain data.

A guard is a directory of four data files and a manifest, never code and never a pickle:

    guard.json        manifest: classes, actions, thresholds, features, the SHA-256 of every other file
    vocabulary.json   feature terms (index order) and their IDF weights
    weights.npy       float32 array, (terms + 1) x classes; the last row is the bias
    selftest.jsonl    prompts with the exact decision and score the guard must give them
    card.json         the model card: data digests, out-of-fold and held-out evaluation

The guard's digest is the SHA-256 of guard.json, which pins the other files, so one digest names
the whole guard. `load_guard` refuses a guard whose files do not match their pins or whose
self-test changed (PolicyError, exit 8): start-up fails closed. `Guard.judge` is pure.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from enclave.errors import PolicyError
from enclave.guard import features
from enclave.normalise import NORMALISATION

API_VERSION = "enclave/v1"
KIND = "Guard"
MANIFEST = "guard.json"
VOCABULARY = "vocabulary.json"
WEIGHTS = "weights.npy"
SELFTEST = "selftest.jsonl"
CARD = "card.json"
DATA_FILES = (VOCABULARY, WEIGHTS, SELFTEST, CARD)
ALLOW = "allow"
# The label set and what each stop class does; refuse beats hold, as in the rules.
ACTIONS: Mapping[str, Literal["allow", "refuse", "hold"]] = {
    ALLOW: "allow",
    "refuse-surveillance": "refuse",
    "refuse-autonomous-force": "refuse",
    "hold-targeting": "hold",
}
CLASSES = tuple(ACTIONS)
# Per-request texts scored at most (each message, plus all of them joined): a bound on work.
MAX_TEXTS = 64
# A text this short is judged only inside the joined whole, not alone: "yes", "go ahead" or a
# one-line reply in a conversation says nothing on its own, and scores on it are noise.
MIN_TOKENS_ALONE = 8
SCORE_TOLERANCE = 1e-6  # self-test: float sums may differ in the last bits across CPUs
EVIDENCE_TERMS = 5

GuardAction = Literal["allow", "refuse", "hold"]


@dataclass(frozen=True)
class Thresholds:
    band: float  # p(stop) at or above this and below `stop`: held for humans (uncertain)
    stop: float  # p(stop) at or above this: the stop class's own action

    def as_dict(self) -> dict[str, float]:
        return {"band": self.band, "stop": self.stop}


@dataclass(frozen=True)
class GuardVerdict:
    action: GuardAction
    label: str  # the most likely stop class when stopping, else "allow"
    layer: Literal["guard", "guard-band"]
    p_stop: float  # 1 - p(allow), of the text that scored highest
    scores: dict[str, float]  # class -> probability, of that text
    # which candidate decided: i < n the i-th distinct non-blank text, n all n joined, n + 1 + k
    # the k-th decoded view of the whole (features.decoded_views)
    text_index: int
    evidence: tuple[tuple[str, float], ...] = field(default=())  # (term, contribution) for `label`

    def record(self) -> dict[str, Any]:
        """What an audit record keeps of the verdict (rounded so logs stay short and stable)."""
        return {
            "action": self.action,
            "class": self.label,
            "layer": self.layer,
            "p_stop": round(self.p_stop, 6),
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
        }


class Guard:
    """A loaded guard. `judge` is pure and safe to call from any thread."""

    def __init__(
        self,
        manifest: Mapping[str, Any],
        terms: Sequence[str],
        idf: Sequence[float],
        weights: np.ndarray[Any, np.dtype[np.float32]],
        digest: str,
        source: str,
    ) -> None:
        self.manifest = dict(manifest)
        self.name = str(manifest["name"])
        self.version = str(manifest["version"])
        self.thresholds = Thresholds(
            float(manifest["thresholds"]["band"]), float(manifest["thresholds"]["stop"])
        )
        self.deadline_ms = int(manifest.get("deadline_ms", 250))
        self.terms = tuple(terms)
        self.vocabulary = {term: i for i, term in enumerate(self.terms)}
        self.idf = tuple(idf)
        self.weights = weights.astype(np.float64)  # (terms + 1) x classes
        self.digest = digest
        self.source = source
        self._allow = CLASSES.index(ALLOW)
        self._words: features.WordCache = {}

    def probabilities(self, text: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        indices, values = features.vectorise(text, self.vocabulary, self.idf, self._words)
        logits = self.weights[-1].copy()
        if indices:
            logits += np.asarray(values) @ self.weights[indices]
        logits -= logits.max()
        exp = np.exp(logits)
        result: np.ndarray[Any, np.dtype[np.float64]] = exp / exp.sum()
        return result

    def judge(self, texts: Iterable[str], explain: bool = False) -> GuardVerdict:
        """Score each text and all of them joined; the highest p(stop) decides. A non-finite
        score raises GuardFailure (the caller holds the request)."""
        items = [t for t in dict.fromkeys(texts) if t.strip()][:MAX_TEXTS]
        whole = "\n".join(items)
        candidates = list(enumerate(items or [""]))  # (index into texts, text); len(items): joined
        if len(items) > 1:
            candidates = [(i, t) for i, t in candidates if len(features.tokens(t)) >= MIN_TOKENS_ALONE]
            candidates.append((len(items), whole))
        # Then what the whole says once decoded (features.decoded_views): indices after the joined one.
        if whole:
            views = features.decoded_views(whole)
            candidates.extend((len(items) + 1 + k, view) for k, view in enumerate(views))
        best: tuple[float, int, np.ndarray[Any, np.dtype[np.float64]]] | None = None
        for index, text in candidates:
            probs = self.probabilities(text)
            if not np.all(np.isfinite(probs)):
                raise GuardFailure(f"non-finite guard score for text {index}")
            p_stop = float(1.0 - probs[self._allow])
            if best is None or p_stop > best[0]:
                best = (p_stop, index, probs)
        assert best is not None
        p_stop, index, probs = best
        stop_classes = [i for i in range(len(CLASSES)) if i != self._allow]
        top = max(stop_classes, key=lambda i: (probs[i], -i))
        if p_stop >= self.thresholds.stop:
            action, label, layer = ACTIONS[CLASSES[top]], CLASSES[top], "guard"
        elif p_stop >= self.thresholds.band:
            action, label, layer = "hold", CLASSES[top], "guard-band"
        else:
            action, label, layer = "allow", ALLOW, "guard"
        evidence = self.evidence(dict(candidates)[index], top) if explain else ()
        scores = {c: float(p) for c, p in zip(CLASSES, probs, strict=True)}
        return GuardVerdict(action, label, layer, p_stop, scores, index, evidence)  # type: ignore[arg-type]

    def evidence(self, text: str, klass: int) -> tuple[tuple[str, float], ...]:
        """The terms that pushed `text` most towards class `klass` rather than allow."""
        indices, values = features.vectorise(text, self.vocabulary, self.idf)
        pull = self.weights[indices, klass] - self.weights[indices, self._allow]
        contributions = sorted(
            zip((self.terms[i] for i in indices), np.asarray(values) * pull, strict=True),
            key=lambda item: -item[1],
        )
        return tuple((term, round(float(c), 4)) for term, c in contributions[:EVIDENCE_TERMS] if c > 0)

    def self_test(self, cases: bytes) -> None:
        """Every prompt of the signed self-test (the bytes checked against their pin, not a
        second read of the file) must get exactly its recorded decision."""
        path = Path(self.source) / SELFTEST
        for number, line in enumerate(cases.decode("utf-8").splitlines(), 1):
            case = json.loads(line)
            verdict = self.judge([case["text"]])
            if (
                verdict.action != case["action"]
                or verdict.label != case["class"]
                or not math.isclose(verdict.p_stop, case["p_stop"], abs_tol=SCORE_TOLERANCE)
            ):
                raise PolicyError(
                    f"{path}:{number}: guard self-test changed: expected {case['action']} "
                    f"({case['class']}, p_stop {case['p_stop']}), got {verdict.action} "
                    f"({verdict.label}, p_stop {verdict.p_stop:.6f})"
                )


class GuardFailure(Exception):
    """The guard could not give a verdict; the gateway holds the request for humans."""


def file_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_guard(directory: Path, expected_digest: str | None = None) -> Guard:
    """Load, check every pin, then run the self-test; any failure is a PolicyError naming the file."""
    manifest_path = directory / MANIFEST
    manifest_bytes = _read(manifest_path)
    digest = file_digest(manifest_bytes)
    if expected_digest is not None:
        _check_pin(manifest_path, manifest_bytes, expected_digest)
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise PolicyError(f"{manifest_path}: not a guard manifest: {exc}") from None
    _check_manifest(manifest_path, manifest)
    blobs = {}
    for name in DATA_FILES:
        data = _read(directory / name)
        if file_digest(data) != manifest["files"][name]:
            raise PolicyError(f"{directory / name}: digest does not match {MANIFEST}: the guard was altered")
        blobs[name] = data
    try:
        vocabulary = json.loads(blobs[VOCABULARY])
        terms, idf = vocabulary["terms"], vocabulary["idf"]
        weights = load_weights(directory / WEIGHTS)
    except (ValueError, KeyError, TypeError) as exc:
        raise PolicyError(f"{directory}: guard data unreadable: {exc}") from None
    if (
        not isinstance(terms, list)
        or not isinstance(idf, list)
        or len(terms) != len(idf)
        or weights.shape != (len(terms) + 1, len(CLASSES))
        or not np.all(np.isfinite(weights))
    ):
        raise PolicyError(f"{directory}: guard data shapes do not agree or weights are not finite")
    guard = Guard(manifest, terms, idf, weights, digest, str(directory))
    guard.self_test(blobs[SELFTEST])
    return guard


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read guard file: {exc.strerror}") from None


def _check_pin(path: Path, data: bytes, expected: str) -> None:
    algorithm, _, want = expected.partition(":")
    if algorithm not in ("sha256", "sha384", "sha512") or not want:
        raise PolicyError(f"guard digest {expected!r}: expected sha256:HEX, sha384:HEX or sha512:HEX")
    if hashlib.new(algorithm, data).hexdigest() != want.lower():
        raise PolicyError(f"{path}: does not match the pinned guard digest {expected}: the guard was altered")


def _check_manifest(path: Path, manifest: Any) -> None:
    problems = []
    if not isinstance(manifest, dict):
        raise PolicyError(f"{path}: a guard manifest is a JSON object")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        problems.append(f"apiVersion/kind must be {API_VERSION}/{KIND}")
    if manifest.get("classes") != list(CLASSES):
        problems.append(f"classes must be {list(CLASSES)}")
    if manifest.get("normalisation") != NORMALISATION:
        problems.append(
            f"trained with normalisation {manifest.get('normalisation')!r}, "
            f"this gateway uses {NORMALISATION!r}"
        )
    if manifest.get("features") != features_config():
        problems.append(f"feature settings {manifest.get('features')!r} are not {features_config()!r}")
    thresholds = manifest.get("thresholds")
    if not (
        isinstance(thresholds, dict)
        and all(isinstance(thresholds.get(k), float) for k in ("band", "stop"))
        and 0.0 < thresholds["band"] <= thresholds["stop"] < 1.0
    ):
        problems.append("thresholds must be floats with 0 < band <= stop < 1")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(DATA_FILES):
        problems.append(f"files must pin exactly {list(DATA_FILES)}")
    if problems:
        raise PolicyError(f"{path}: {'; '.join(problems)}")


def features_config() -> dict[str, list[int] | list[str]]:
    return {
        "word_ngrams": list(features.WORD_NGRAMS),
        "char_ngrams": list(features.CHAR_NGRAMS),
        "decoded_views": list(features.DECODED_VIEWS),
    }


def load_weights(path: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
    array = np.load(path, allow_pickle=False)  # plain data only: a pickled array is refused
    if array.dtype != np.float32 or array.ndim != 2:
        raise ValueError(f"{path.name}: expected a 2-D float32 array, got {array.dtype} {array.ndim}-D")
    result: np.ndarray[Any, np.dtype[np.float32]] = array
    return result
