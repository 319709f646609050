"""Operator enforcement, host-free: the operator's configuration, and the record a sanitized
conditioning carries so that enforcement can tell what was already done to it.

The configuration is a JSON file that only the operator can write (see docs/comfyui.md, "Operators"):

    {"sanitizers": {"sd1-clip-l": "sd15.safetensors",
                    "sdxl-clip-lg": {"file": "/srv/sanitizers/sdxl.safetensors", "sha256": "..."}},
     "min_intensity": 1.0,
     "threshold": 0.5,
     "concepts": ["nudity", "violence"]}

Relative file names are resolved against the configuration file's folder, never against a folder
the host lets users write to. Every value is checked: a typo must not silently weaken enforcement.

The record (a `SanitizedMark` under the conditioning dict's MARK_KEY) vouches only for the exact
tensor objects it was made with: a conditioning edited afterwards (concatenated, averaged, a
pooled output swapped in) carries new tensors and is therefore sanitized again.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..model import DEFAULT_THRESHOLD
from .. import validation
from ..enforcement import enforced_strength, is_strong_enough

MARK_KEY = "embedding_sanitizer"
_KEYS = {"sanitizers", "min_intensity", "threshold", "concepts"}


class OperatorConfigError(ValueError):
    """The operator's configuration is missing, unreadable or invalid."""


@dataclass(frozen=True)
class SanitizerSpec:
    path: Path
    sha256: Optional[str] = None      # pinned digest of the file, lower-case hex


@dataclass(frozen=True)
class OperatorPolicy:
    sanitizers: Mapping[str, SanitizerSpec]      # encoder family -> weight file; others: the built-in one
    min_intensity: float
    threshold: float                             # the highest threshold allowed (lower is stronger)
    concepts: Optional[tuple[str, ...]]          # None = every concept of each weight file
    source: Path                                 # the configuration file


MAX_CONFIG_BYTES = 64 * 1024     # a real configuration is a few hundred bytes


def read_operator_config(path: os.PathLike | str) -> OperatorPolicy:
    """The operator's policy from `path`. Every failure, whatever the file holds (not UTF-8, a
    number of thousands of digits, brackets nested past the recursion limit), is an
    OperatorConfigError: the caller must be able to fail closed instead of failing to import."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise OperatorConfigError(f"cannot read the operator configuration {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise OperatorConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not an operator configuration")
    try:
        text = raw.decode("utf-8-sig")       # a UTF-8 byte-order mark, as some editors write, is allowed
    except UnicodeDecodeError as exc:
        raise OperatorConfigError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=validation.unique_keys)
        return parse_operator_config(data, path)
    except OperatorConfigError:
        raise
    except validation.InvalidValue as exc:   # a key given twice: json would silently take its last value
        raise OperatorConfigError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise OperatorConfigError(f"{path} is not valid JSON ({exc})") from None
    except (ValueError, RecursionError, OverflowError, TypeError) as exc:
        # JSONDecodeError, Python's limit on digits in an integer, nesting deeper than the recursion limit
        raise OperatorConfigError(f"{path} is not a valid operator configuration "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None


def parse_operator_config(data: Any, source: os.PathLike | str) -> OperatorPolicy:
    source = Path(source)
    where = f"operator configuration {source}"
    if not isinstance(data, dict):
        raise OperatorConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise OperatorConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
    # Families without a file are sanitized by the built-in sanitizer (builtin.py), so none is required.
    table = data.get("sanitizers", {})
    if not isinstance(table, dict):
        raise OperatorConfigError(f"{where}: 'sanitizers' must map encoder families "
                                  f"(e.g. \"sd1-clip-l\") to weight files")
    sanitizers = {}
    for family, entry in table.items():
        if not family.strip():
            raise OperatorConfigError(f"{where}: an encoder family name is empty")
        sanitizers[family] = _spec(entry, source.parent, f"{where}: sanitizers.{family}")
    try:
        min_intensity = validation.minimum_intensity(data.get("min_intensity", 1.0))
        threshold = validation.threshold_ceiling(data.get("threshold", DEFAULT_THRESHOLD))
    except validation.InvalidValue as exc:
        raise OperatorConfigError(f"{where}: {exc}") from None
    # A null is refused like any other wrong type: read as "absent" it would mean every concept.
    concepts = data.get("concepts")
    if "concepts" in data:
        if not isinstance(concepts, list) or not concepts:
            raise OperatorConfigError(f"{where}: 'concepts' must be a non-empty list of concept names "
                                      f"(or absent for every concept of each weight file)")
        try:
            concepts = validation.concepts(concepts)
        except validation.InvalidValue as exc:
            raise OperatorConfigError(f"{where}: 'concepts': {exc}") from None
    return OperatorPolicy(sanitizers, min_intensity, threshold, concepts, source)


def _spec(entry: Any, base: Path, where: str) -> SanitizerSpec:
    if isinstance(entry, str):
        entry = {"file": entry}
    if not isinstance(entry, dict) or set(entry) - {"file", "sha256"} or not isinstance(entry.get("file"), str) \
            or not entry["file"].strip():
        raise OperatorConfigError(f"{where}: expected a file name or {{\"file\": ..., \"sha256\": ...}}")
    digest = entry.get("sha256")
    if "sha256" in entry and (not isinstance(digest, str) or len(digest) != 64
                               or any(ch not in "0123456789abcdefABCDEF" for ch in digest)):
        raise OperatorConfigError(f"{where}: 'sha256' must be 64 hexadecimal digits")
    path = Path(os.path.expanduser(entry["file"].strip()))
    return SanitizerSpec(path if path.is_absolute() else base / path, digest.lower() if digest else None)


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A digest of a sanitizer's weights: two copies of one file have the same one, whoever
    loaded them. Cached per model object (a loaded sanitizer is never trained further)."""
    cached = _FINGERPRINTS.get(model)
    if cached is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        cached = _FINGERPRINTS[model] = digest.hexdigest()
    return cached


@dataclass(frozen=True, eq=False)      # identity equality: hosts may compare conditioning dicts
class SanitizedMark:
    """What was done to one conditioning entry, and to which tensors."""
    embedding: torch.Tensor                 # the sanitized tensor this mark vouches for
    pooled: Optional[torch.Tensor]          # the sanitized pooled output (None: not sanitized)
    source: torch.Tensor                    # the embedding before sanitizing
    source_pooled: Optional[torch.Tensor]
    uses_pooled: bool                       # the sanitizer rewrites the pooled output
    fingerprint: str
    encoder_family: str
    intensity: float
    threshold: float
    concepts: Optional[tuple[str, ...]]     # None = every concept of the weight file
    by: str = "node"                        # "node" (a workflow's node) or "operator"
    file: str = ""                          # the weight file's name, when known

    def vouches_for(self, embedding, pooled) -> bool:
        return embedding is self.embedding and (not self.uses_pooled or pooled is self.pooled)

    def record(self) -> dict:
        return {"by": self.by, "file": self.file, "weights_sha256": self.fingerprint[:16],
                "encoder_family": self.encoder_family, "intensity": self.intensity,
                "threshold": self.threshold, "concepts": list(self.concepts) if self.concepts else "all"}


def mark_sanitized(extras: dict, model, source, source_pooled, result, intensity: float, threshold: float,
                   concepts=None) -> None:
    """Record in a (new) conditioning dict that its embedding is `result`'s, made from `source`."""
    uses_pooled = source_pooled is not None and result.pooled is not None
    extras[MARK_KEY] = SanitizedMark(
        result.embedding, result.pooled if uses_pooled else None, source, source_pooled, uses_pooled,
        weights_fingerprint(model), model.config.encoder_family, float(intensity), float(threshold),
        tuple(concepts) if concepts is not None else None)


def with_operator(mark: SanitizedMark, file: str) -> SanitizedMark:
    return replace(mark, by="operator", file=file)


@dataclass(frozen=True)
class Plan:
    """What enforcement does to one conditioning entry."""
    keep: bool                               # already sanitized well enough: pass it on as it is
    embedding: torch.Tensor                  # what to sanitize (the unsanitized original if known)
    pooled: Optional[torch.Tensor]
    intensity: float
    threshold: float
    mark: Optional[SanitizedMark]            # the mark that vouches for the entry, if any


def enforcement_plan(mark: Any, embedding, pooled, fingerprint: str, policy: OperatorPolicy) -> Plan:
    """Keep an entry a workflow's node sanitized with the operator's own weights, at least the
    minimum intensity, at most the operator's threshold and every required concept; otherwise
    sanitize again, from the original embedding when a mark vouches for the entry (so sanitizing
    is never stacked), at the strength enforcement.enforced_strength gives."""
    minimum = Plan(False, embedding, pooled, policy.min_intensity, policy.threshold, None)
    if not isinstance(mark, SanitizedMark) or not mark.vouches_for(embedding, pooled):
        return minimum
    base_pooled = mark.source_pooled if mark.uses_pooled else pooled
    if mark.fingerprint != fingerprint:     # another sanitizer (perhaps one a user trained)
        return replace(minimum, embedding=mark.source, pooled=base_pooled, mark=mark)
    concepts = policy.concepts
    covers = mark.concepts is None or (concepts is not None and set(concepts) <= set(mark.concepts))
    if is_strong_enough(policy.min_intensity, policy.threshold, mark.intensity, mark.threshold) and covers:
        return Plan(True, embedding, pooled, mark.intensity, mark.threshold, mark)
    intensity, threshold = enforced_strength(policy.min_intensity, policy.threshold, mark.intensity, mark.threshold)
    return Plan(False, mark.source, base_pooled, intensity, threshold, mark)
