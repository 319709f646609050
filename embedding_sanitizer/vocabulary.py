"""Finding a concept's terms in a prompt's text, whatever style surrounds them.

The network reads the encoder's output, and there a prompt's style speaks as loudly as its
content: "1boy, solo, nude, penis, erection, shower" or a nude portrait that ends in
"studio lighting, 85mm, raw photo, 8k uhd" reads as benign tags and tails. The words
themselves do not change with the style, so where the host has the text, each term a
sanitizer was trained on is also looked for as words: plain ("naked woman"), as a tag
("spread_legs", "blow-job", "blowjob"), inflected ("groped", "corpses") and, through
disguise.py's plain reading, spaced out, in look-alikes or misspelled. Its rows then score
TERM_SCORE for the term's concept.

A word can have a harmless sense ("the naked eye", "chicken breast", "a blood orange"):
a concept's benign senses are short phrases, and a term found inside one is not read. Held-out
terms are never looked for: they measure what the network learned beyond the list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Optional, Sequence

# What a found term scores: the network's own top score. Intensity still scales the gate.
TERM_SCORE = 1.0
# Past this many found terms, a prompt's remaining ones are read as one span from the first of
# them to the last: each span costs a tokenization of the prompt, and a hostile prompt could
# name a term ten thousand times.
MAX_SPANS = 32
# Plurals are only added to words this long or longer ("sex" -> "sexes" is another word), verb
# forms to longer ones ("cock" -> "cocked" is another word).
MIN_PLURAL, MIN_VERB = 4, 5
# A term is read across a split ("nu de") only if it is this long: short joins make words by chance.
MIN_SPLIT = 5
# Limits on a vocabulary read from a weight file's metadata, which may be hostile.
MAX_TERMS = 20_000
MAX_TERM_CHARS = 100

_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class Hit:
    concept: str
    start: int          # characters of the text
    end: int
    term: str           # the words found, lower case


def words(text: str) -> list[str]:
    """A term's or a phrase's words, lower case: "Spread_Legs" and "spread-legs" -> [spread, legs]."""
    return [w.lower() for w in _WORD.findall(text)]


def inflections(word: str) -> set[str]:
    """The word and its plural and verb forms: "corpse" -> corpses, corpsed, corpsing."""
    forms = {word}
    if len(word) < MIN_PLURAL or not word.isalpha():
        return forms
    forms |= {word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if len(word) >= MIN_VERB:
        stem = word[:-1] if word.endswith("e") else word
        forms |= {stem + "ed", stem + "ing"}
    return forms


def phrase_keys(phrase: str) -> set[tuple[str, ...]]:
    """Every word sequence that spells `phrase`: its last word inflected, and a multi-word
    phrase also written as one word ("blow job" -> "blowjob", "blowjobs")."""
    parts = words(phrase)
    if not parts:
        return set()
    keys = {tuple(parts[:-1]) + (last,) for last in inflections(parts[-1])}
    if len(parts) > 1:
        keys |= {(joined,) for joined in inflections("".join(parts))}
    return keys


class Vocabulary:
    """Each concept's terms and benign senses, looked up word sequence by word sequence."""

    def __init__(self, terms: Mapping[str, Iterable[str]], benign_senses: Mapping[str, Iterable[str]] = {}):
        self.terms: dict[tuple[str, ...], tuple[str, str]] = {}
        # What a misspelling may be read back to (disguise.respelled): the terms' words as listed.
        self.term_words: frozenset[str] = frozenset()
        for concept, phrases in terms.items():
            phrases = [words(p) for p in phrases]
            self.term_words |= {w for p in phrases for w in p if len(w) >= MIN_PLURAL and w.isalpha()}
            # A phrase holding a one-word term of its concept ("nude woman") is found through that
            # word alone, so its span stays the unsafe word and "woman" is not read as the concept.
            single = {p[0] for p in phrases if len(p) == 1}
            for phrase in phrases:
                if len(phrase) == 1 or not single.intersection(phrase):
                    for key in phrase_keys(" ".join(phrase)):
                        self.terms.setdefault(key, (concept, " ".join(key)))
        self.senses: dict[tuple[str, ...], frozenset[str]] = {}
        for concept, phrases in benign_senses.items():
            for phrase in phrases:
                for key in phrase_keys(phrase):
                    self.senses[key] = self.senses.get(key, frozenset()) | {concept}
        self.longest = max((len(k) for k in (*self.terms, *self.senses)), default=0)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def read(self, text: str) -> tuple[list[Hit], list[Hit]]:
        """The terms in `text` and its benign senses, each in order with its character span; no
        term inside a benign sense of its own concept. One pass, linear in the text's length."""
        found = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
        tokens = [w for w, _, _ in found]
        terms, senses = [], []       # (first word, word after the last, concept, words)
        for i in range(len(tokens)):
            lengths = set()
            for n in range(1, min(self.longest, len(tokens) - i) + 1):
                key = tuple(tokens[i:i + n])
                if key in self.terms:
                    terms.append((i, i + n, *self.terms[key]))
                    lengths.add(n)
                senses += [(i, i + n, concept, " ".join(key)) for concept in sorted(self.senses.get(key, ()))]
            # A word split in two by one character: "nu de", "mas-sacre", "blow_job".
            if i + 1 < len(tokens) and found[i + 1][1] - found[i][2] <= 1:
                joined = (tokens[i] + tokens[i + 1],)
                if len(joined[0]) >= MIN_SPLIT and joined in self.terms and 2 not in lengths:
                    terms.append((i, i + 2, *self.terms[joined]))
        # reach[concept][i]: the furthest word end of that concept's senses that start at or before word i.
        reach: dict[str, list[int]] = {}
        for first, last, concept, _ in senses:
            ends = reach.setdefault(concept, [0] * len(tokens))
            ends[first] = max(ends[first], last)
        for ends in reach.values():
            for i in range(1, len(ends)):
                ends[i] = max(ends[i], ends[i - 1])

        def hit(first, last, concept, term):
            return Hit(concept, found[first][1], found[last - 1][2], term)
        return ([hit(*t) for t in terms if t[2] not in reach or reach[t[2]][t[0]] < t[1]],
                [hit(*sense) for sense in senses])

    def find(self, text: str) -> list[Hit]:
        """The terms in `text` (`read`'s first list)."""
        return self.read(text)[0]


def merged_spans(hits: Sequence[Hit]) -> list[Hit]:
    """At most MAX_SPANS hits (and one per concept more): past that, the rest of each
    concept's hits become one span from the first of them to the last."""
    if len(hits) <= MAX_SPANS:
        return list(hits)
    tail: dict[str, Hit] = {}
    for hit in hits[MAX_SPANS:]:
        first = tail.get(hit.concept, hit)
        tail[hit.concept] = Hit(hit.concept, first.start, max(first.end, hit.end), "...")
    return list(hits[:MAX_SPANS]) + list(tail.values())


def _checked(phrases, where: str) -> tuple[str, ...]:
    if not isinstance(phrases, (list, tuple)) or len(phrases) > MAX_TERMS:
        raise ValueError(f"{where} must be a list of at most {MAX_TERMS} phrases")
    if not all(isinstance(p, str) and 0 < len(p) <= MAX_TERM_CHARS for p in phrases):
        raise ValueError(f"{where} must hold phrases of 1 to {MAX_TERM_CHARS} characters")
    return tuple(phrases)


def stored_vocabulary(metadata: Mapping) -> Optional[dict]:
    """The vocabulary a weight file's training summary records, checked, or None."""
    training = metadata.get("training") if isinstance(metadata, Mapping) else None
    stored = training.get("vocabulary") if isinstance(training, Mapping) else None
    if stored is None:
        return None
    if not isinstance(stored, Mapping):
        raise ValueError("the weight file's training vocabulary must be an object of concepts")
    return {name: {"terms": _checked(entry.get("terms", ()), f"vocabulary '{name:.40}' terms"),
                   "benign_senses": _checked(entry.get("benign_senses", ()), f"vocabulary '{name:.40}' benign senses")}
            for name, entry in stored.items() if isinstance(entry, Mapping)}


def vocabulary_record(concepts) -> dict:
    """What a weight file records of its concepts' words (lexicon.Concept), for `stored_vocabulary`."""
    return {c.name: {"terms": list(c.train_terms), "benign_senses": list(c.benign_senses)} for c in concepts}


@lru_cache(maxsize=16)
def _built(key: tuple) -> Vocabulary:
    return Vocabulary({name: terms for name, terms, _ in key}, {name: senses for name, _, senses in key})


def for_model(model) -> Vocabulary:
    """The words a sanitizer looks for: those its weight file records, else the built-in
    concepts' of the same name. A concept with neither (an older custom file) has none."""
    from .lexicon import builtin_concepts

    stored = stored_vocabulary(getattr(model, "metadata", {}) or {}) or {}
    builtin = builtin_concepts()
    key = []
    for name in model.concepts:
        if name in stored:
            key.append((name, stored[name]["terms"], stored[name]["benign_senses"]))
        elif name in builtin:
            key.append((name, builtin[name].train_terms, builtin[name].benign_senses))
    return _built(tuple(key))
