"""Concepts: what a sanitizer erases, as lists of words (the data lives in data/concepts.json).

Each concept lists target terms (with synonyms, slang, euphemisms and misspellings) and
anchors: safe words of the same role ("nude woman" -> "clothed woman"). Terms are split
into train and held-out parts; held-out terms are never seen in training and measure how
far the sanitizer generalises. Safe contexts are harmless phrases that share a word or a
sense with the terms ("the naked eye", "a blood orange"): the trainer uses them as hard
negatives, so the sanitizer learns the concept rather than its words. Benign senses are the
short phrases in which a term is harmless ("naked eye", "blood orange"): where the host has the
text, vocabulary.py finds the terms as words and skips those inside one.

Users add concepts without code through a JSON file in the same format as the built-ins:
    {"concepts": [{"name": "clowns", "terms": ["clown", ...], "heldout_terms": [...],
                   "anchors": ["juggler", ...], "safe_contexts": ["a clownfish in a reef", ...],
                   "benign_senses": ["class clown", ...]}]}
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
    benign_senses: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for attr in ("train_terms", "anchors", "heldout_terms", "safe_contexts", "benign_senses"):
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
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: concept {number} is not an object with name, terms and anchors")
        missing = [key for key in ("name", "terms", "anchors") if key not in entry]
        if missing:
            raise ValueError(f"{source}: concept {number} lacks '{missing[0]}'; each needs name, terms and anchors")
        if not isinstance(entry["name"], str):
            raise ValueError(f"{source}: concept {number}'s name must be a string, got {entry['name']!r:.40}")
        lists = {}
        for key in ("terms", "anchors", "heldout_terms", "safe_contexts", "benign_senses"):
            value = entry.get(key, [])
            # A bare string would be read letter by letter: "clown" as c, l, o, w, n.
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{source}: concept '{entry['name']:.64}': {key} must be a list of strings "
                                 f"(e.g. [\"clown\", \"jester\"]), got {value!r:.40}")
            lists[key] = tuple(value)
        try:
            concepts.append(Concept(entry["name"], lists["terms"], lists["anchors"], lists["heldout_terms"],
                                    lists["safe_contexts"], lists["benign_senses"]))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    return concepts


def load_concepts_file(path: Union[str, Path]) -> list[Concept]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=validation.unique_keys)
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not read concepts from {path}: {exc}") from None
    return parse_concepts(data, str(path))


@lru_cache(maxsize=1)
def _builtin() -> tuple[Concept, ...]:
    return tuple(load_concepts_file(BUILTIN_FILE))


def builtin_concepts() -> dict[str, Concept]:
    """The concepts the project ships: nudity and violence."""
    return {c.name: c for c in _builtin()}
