"""Concepts: what a sanitizer erases, as lists of words (the data lives in data/concepts.json).

Each concept lists target terms (with synonyms, slang, euphemisms and misspellings) and
anchors: safe words of the same role ("nude woman" -> "clothed woman"). Terms are split
into train and held-out parts; held-out terms are never seen in training and measure how
far the sanitizer generalises. Safe contexts are harmless phrases that share a word or a
sense with the terms ("the naked eye", "a blood orange"): the trainer uses them as hard
negatives, so the sanitizer learns the concept rather than its words.

Users add concepts without code through a JSON file in the same format as the built-ins:
    {"concepts": [{"name": "clowns", "terms": ["clown", ...], "heldout_terms": [...],
                   "anchors": ["juggler", ...], "safe_contexts": ["a clownfish in a reef", ...]}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Union

from . import validation
from .paths import PACKAGE_DIR

BUILTIN_FILE = PACKAGE_DIR / "data" / "concepts.json"


@dataclass(frozen=True)
class Concept:
    name: str
    train_terms: tuple[str, ...]
    anchors: tuple[str, ...]
    heldout_terms: tuple[str, ...] = field(default=())
    safe_contexts: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for attr in ("train_terms", "anchors", "heldout_terms", "safe_contexts"):
            cleaned = tuple(dict.fromkeys(t.strip() for t in getattr(self, attr) if t.strip()))
            object.__setattr__(self, attr, cleaned)
        object.__setattr__(self, "name", validation.concept_name(self.name))
        if not self.train_terms:
            raise ValueError(f"concept '{self.name}' has no terms to train on")
        if not self.anchors:
            raise ValueError(f"concept '{self.name}' has no anchors (safe replacements for its terms)")


def parse_concepts(data, source: str) -> list[Concept]:
    """Concepts from the JSON format above; `source` names the file in error messages."""
    entries = data.get("concepts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected {{\"concepts\": [{{\"name\", \"terms\", \"anchors\"}}, ...]}}")
    concepts = []
    for entry in entries:
        try:
            concepts.append(Concept(entry["name"], tuple(entry["terms"]), tuple(entry["anchors"]),
                                    tuple(entry.get("heldout_terms", ())),
                                    tuple(entry.get("safe_contexts", ()))))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: a concept entry lacks {exc}; each needs name, terms and anchors") from None
    return concepts


def load_concepts_file(path: Union[str, Path]) -> list[Concept]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"could not read concepts from {path}: {exc}") from None
    return parse_concepts(data, str(path))


@lru_cache(maxsize=1)
def _builtin() -> tuple[Concept, ...]:
    return tuple(load_concepts_file(BUILTIN_FILE))


def builtin_concepts() -> dict[str, Concept]:
    """The concepts the project ships: nudity and violence."""
    return {c.name: c for c in _builtin()}
