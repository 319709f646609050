"""Reading a prompt through what hides its words from the encoder: spaced-out letters,
look-alike characters and misspellings.

A text encoder reads "n u d e", "s.l.a.s.h.e.d" or "n4k3d" as a handful of unrelated
tokens, and "nakde" as pieces of nothing, so the sanitizer, which reads the encoder's output,
sees noise there. Where the host has the prompt's text, the text is read plainly ("nude",
"slashed", "naked"), the plain text is encoded and scored, and each changed span's score is
given to the rows that spell it as typed. The erasure still acts on the prompt's own
embedding with its own deltas, and every other row keeps its own score: a prompt without a
disguise is sanitized exactly as before.

A spaced-out or look-alike span is certainly a disguise, so its plain score replaces the
rows' own: read plainly, a harmless one ("h3ll0", "s.t.a.n.d.i.n.g") is harmless too, where
the encoder's reading of stray letters is noise that sometimes looks unsafe. A word missing
from the spelling lists may be a misspelling or a rare word ("starkers"), so there the rows
keep the larger of the two scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import vocabulary

# Digits and symbols that stand in for letters. A "1" stands for an "l" or an "i" (see _one).
LOOKALIKES = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
              "@": "a", "$": "s", "!": "i", "()": "o"}
# A prompt past this many disguised spans is read through its first ones only: each span
# costs a few tokenizations of the prompt, and a hostile prompt could hold thousands.
MAX_SPANS = 32

_CHAR = r"[A-Za-z0-9@$!]"
# Three or more single characters split by one separator, standing alone: "n u d e", "g.o.r.e".
# A run stops short of a character that starts another run ("s h o t d.e.a.d").
_RUNS = [re.compile(rf"(?<![\w.\-]){_CHAR}(?:{sep}{_CHAR}){{2,}}(?!\w)(?![.\-_]\w)")
         for sep in (r"\.", "-", "_", " ")]
# A word with a look-alike in it: "n4k3d", "7or7ure", "b!tch", "()rgy". A trailing "!" is
# punctuation, stripped after the match: a pattern that refused to end on "!" would backtrack
# through a whole run of them from each of its characters, quadratic on "!!!!...". A word of
# fewer than two letters ("8k", "2021") or a number with its unit ("35mm", "1990s") is no disguise.
_MEASURE = re.compile(r"\d{2,}[A-Za-z]+")
_WORD = re.compile(r"(?:[A-Za-z0-9@$!]|\(\))+")
_LOOKALIKE = re.compile(r"[01345789@$!]|\(\)")
_VOWELS = set("aeiouAEIOU")
# A misspelled word: four letters or more, in neither word list (data/*_words.txt).
# Past this many unknown words a prompt's spelling is not looked at further: each costs a few
# hundred look-ups.
_LETTERS = re.compile(r"(?<![\w@$!])[A-Za-z]{4,20}(?![\w@$!])")
MAX_UNKNOWN_WORDS = 200
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _words(name: str) -> list[str]:
    return (Path(__file__).resolve().parent / "data" / name).read_text(encoding="utf-8").split()


@lru_cache(maxsize=1)
def spelling_ranks() -> dict[str, int]:
    """What a misspelling is read back to: word -> rank, commonest first (tools/make_spelling_words.py)."""
    return {word: rank for rank, word in enumerate(_words("spelling_words.txt"))}


@lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """Every word that is spelled right as it is."""
    return frozenset(spelling_ranks()) | frozenset(_words("known_words.txt"))


def respelled(word: str, term_words: frozenset[str] = frozenset()) -> Optional[str]:
    """The commonest listed word one edit away (a letter dropped, doubled, swapped, replaced or
    added: "nakde", "nudde", "stret"), or None for a known word or one with no such neighbour.

    A word of a sanitizer's terms (`term_words`) comes first where the typing slip is a plain one:
    a letter left out ("breats", "shoting"), doubled ("gorry") or swapped past the first letter
    ("nued" is "nude", not the commoner "need"). The other edits turn real words into terms too
    often ("drapes", "gorey", "ogre"), and so does a replaced letter, which never makes a term."""
    ranks, word = spelling_ranks(), word.lower()
    if word in known_words():
        return None
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    slips = {a + c + b for a, b in splits for c in _ALPHABET}
    slips |= {a + b[1] + b[0] + b[2:] for a, b in splits if a and len(b) > 1}
    slips |= {a + b[1:] for a, b in splits if b and (a[-1:] == b[0] or b[1:2] == b[0])}
    typo = [w for w in slips if w in term_words]
    if typo:
        return min(typo, key=lambda w: ranks.get(w, len(ranks)))
    near = slips | {a + b[1:] for a, b in splits if b}
    near |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    near |= {a + c + b[1:] for a, b in splits if b for c in _ALPHABET}
    known = [w for w in near if w in ranks]
    return min(known, key=ranks.__getitem__) if known else None


def _one(before: str, after: str) -> str:
    """What a "1" stands for, from its neighbours read plainly: "l" after a vowel ("ki1l1ng",
    "p3acefu1") or between a consonant and a vowel ("s1ashed", "b1ood"), else "i" ("n1pple")."""
    if before in _VOWELS or (after in _VOWELS and before not in _VOWELS):
        return "l"
    return "i"


def _plain_word(word: str) -> str:
    chars = [LOOKALIKES.get(piece, piece) for piece in re.findall(r"\(\)|.", word)]
    for i, c in enumerate(chars):
        if c == "1":
            chars[i] = _one(chars[i - 1] if i else "", chars[i + 1] if i + 1 < len(chars) else "")
    return "".join(chars)


@dataclass(frozen=True)
class Span:
    typed: tuple[int, int]       # characters of the text as typed
    plain: tuple[int, int]       # the same span's characters in the plain text
    certain: bool = True         # a disguise for sure (spacing, look-alikes), not a possible misspelling


@dataclass(frozen=True)
class Undisguised:
    text: str
    plain: str
    spans: tuple[Span, ...]


def _run_edit(match: re.Match, separator: str) -> tuple[int, int, str]:
    start, run = match.start(), match.group()
    # "a n u d e woman": the article stays a word of its own.
    if separator == " " and run[0] in "aAiI" and len(run) > 6:
        start, run = start + 2, run[2:]
    return start, match.end(), run.replace(separator, "")


def undisguise(text: str, term_words: frozenset[str] = frozenset()) -> Optional[Undisguised]:
    """The plain reading of `text` and where it differs, or None when nothing is disguised.
    `term_words`: the words of a sanitizer's terms, which a misspelling is read back to first (respelled)."""
    edits: list[tuple[int, int, str, bool]] = []
    # Which characters an edit already covers: checking a span costs its length, not the
    # number of edits so far, which a hostile prompt makes as large as it likes.
    covered = bytearray(len(text))

    def free(start, end):
        return covered.find(1, start, end) < 0

    def add(start, end, plain, certain):
        edits.append((start, end, plain, certain))
        covered[start:end] = b"\1" * (end - start)

    for separator, pattern in zip(".-_ ", _RUNS):
        for match in pattern.finditer(text):
            start, end, joined = _run_edit(match, separator)
            if free(start, end):
                add(start, end, joined, True)
    for match in _WORD.finditer(text):
        word = match.group().rstrip("!")
        end = match.start() + len(word)
        if sum(c.isalpha() for c in word) >= 2 and _LOOKALIKE.search(word) and not _MEASURE.fullmatch(word) \
                and free(match.start(), end):
            add(match.start(), end, _plain_word(word), True)
    unknown = 0
    for match in _LETTERS.finditer(text):
        if unknown >= MAX_UNKNOWN_WORDS:
            break
        if match.group().lower() in known_words() or not free(match.start(), match.end()):
            continue
        unknown += 1
        plain = respelled(match.group(), term_words)
        if plain is not None:
            add(match.start(), match.end(), plain, False)
    if not edits:
        return None
    edits.sort()
    pieces, spans, cursor, length = [], [], 0, 0
    for start, end, new, certain in edits[:MAX_SPANS]:
        length += start - cursor
        pieces += [text[cursor:start], new]
        spans.append(Span((start, end), (length, length + len(new)), certain))
        length += len(new)
        cursor = end
    pieces.append(text[cursor:])
    return Undisguised(text, "".join(pieces), tuple(spans))


@dataclass
class PlainReading:
    """What the text says of some rows of its embedding, for `EmbeddingSanitizer.sanitize`."""
    rows: torch.Tensor        # (B, T) bool: rows a changed span covers
    replace: torch.Tensor     # (B, T) bool: of those, the ones whose own score is discarded
    scores: torch.Tensor      # (B, T, C) float32: each span's scores read plainly
    harmless: Optional[torch.Tensor] = None   # (B, T, C) bool: rows of a concept's benign sense, scored 0 for it

    def repeat(self, batch: int) -> "PlainReading":
        """The reading of one text for a batch of images of it."""
        return PlainReading(*(None if t is None else t.expand(batch, *t.shape[1:])
                              for t in (self.rows, self.replace, self.scores, self.harmless)))


def _typed_offset(u: Optional[Undisguised], offset: int, end: bool) -> int:
    """Where a character offset of the plain text lies in the text as typed; an offset inside a
    changed span stands for the whole span."""
    shift = 0
    for span in u.spans if u is not None else ():
        (plain_start, plain_end), (typed_start, typed_end) = span.plain, span.typed
        if offset < plain_start or (end and offset == plain_start):
            break
        if offset < plain_end or (end and offset == plain_end):
            return typed_end if end else typed_start
        shift = typed_end - plain_end
    return offset + shift


def _respelled_into_another_word(u: Optional[Undisguised], hit) -> bool:
    """A term found only because a word was respelled by a replaced letter: "catgirl" read as
    "camgirl", "stubbing" as "stabbing". Replacing a letter is the edit that most often turns one
    real word into another, so such a term is left to the network's own plain score."""
    for span in u.spans if u is not None else ():
        if span.certain or span.plain[1] <= hit.start or hit.end <= span.plain[0]:
            continue
        typed, plain = u.text[slice(*span.typed)].lower(), u.plain[slice(*span.plain)].lower()
        if len(typed) == len(plain) and sum(a != b for a, b in zip(typed, plain)) == 1:
            return True
    return False


def found_words(words: vocabulary.Vocabulary, text: str, u: Optional[Undisguised] = None) -> tuple[list, list]:
    """The terms and the benign senses of a sanitizer's vocabulary (vocabulary.for_model) in `text`
    read plainly, as spans of the text as typed: at most vocabulary.MAX_SPANS of each (and one
    per concept more of terms), since each costs a tokenization. `u` is undisguise(text), where
    already known."""
    if not words:
        return [], []
    terms, senses = words.read(u.plain if u is not None else text)
    terms = vocabulary.merged_spans([h for h in terms if not _respelled_into_another_word(u, h)])
    return [_as_typed(u, h) for h in terms], [_as_typed(u, h) for h in senses[:vocabulary.MAX_SPANS]]


def _as_typed(u: Optional[Undisguised], hit):
    return replace(hit, start=_typed_offset(u, hit.start, False), end=_typed_offset(u, hit.end, True))


def has_reading(model, text: str) -> bool:
    """Whether `plain_reading` would say anything of `text`: a disguise, a term or a benign sense in it."""
    words = vocabulary.for_model(model)
    u = undisguise(text, words.term_words)
    return u is not None or any(found_words(words, text, u))


@torch.no_grad()
def plain_reading(model, encoder, texts: Sequence[str], rows: int) -> Optional[PlainReading]:
    """What the texts say of the rows of `encoder.encode([text])`: each disguised span's scores
    are the largest over its plain tokens, and each term found scores TERM_SCORE for its concept
    (vocabulary.py). None when no text holds either, so that nothing is encoded twice. A plain
    text the encoder gives NaN or infinite values for is not read (seen in A1111 with a
    random-weight checkpoint): its rows keep their own scores, rather than the whole prompt
    going unsanitized.

    `encoder` needs `encode(prompts)` and `span_positions(text, start, end)` (TextEncoder)."""
    words = vocabulary.for_model(model)
    undisguised = [undisguise(t, words.term_words) for t in texts]
    terms, senses = zip(*(found_words(words, t, u) for t, u in zip(texts, undisguised)))
    if not any(u is not None or found or sense for u, found, sense in zip(undisguised, terms, senses)):
        return None
    reading = PlainReading(torch.zeros(len(texts), rows, dtype=torch.bool),
                           torch.zeros(len(texts), rows, dtype=torch.bool),
                           torch.zeros(len(texts), rows, len(model.concepts)),
                           torch.zeros(len(texts), rows, len(model.concepts), dtype=torch.bool))
    disguised = [(i, u) for i, u in enumerate(undisguised) if u is not None]
    if disguised:
        _read_disguises(model, encoder, disguised, rows, reading)
    for i, hits in enumerate(terms):
        for hit in hits:
            typed_rows = [r for r in encoder.span_positions(texts[i], hit.start, hit.end) if r < rows]
            concept = model.concepts.index(hit.concept)
            reading.rows[i, typed_rows] = True
            reading.scores[i, typed_rows, concept] = reading.scores[i, typed_rows, concept].clamp_min(
                vocabulary.TERM_SCORE)
    # A benign sense ("nude lipstick") is harmless whatever the network reads into its words.
    for i, text_senses in enumerate(senses):
        for sense in text_senses:
            typed_rows = [r for r in encoder.span_positions(texts[i], sense.start, sense.end) if r < rows]
            reading.harmless[i, typed_rows, model.concepts.index(sense.concept)] = True
    return reading if reading.rows.any() or reading.harmless.any() else None


def _read_disguises(model, encoder, found, rows: int, reading: PlainReading) -> None:
    plain = encoder.encode([u.plain for _, u in found])
    device = next(model.parameters()).device
    scores, _, _ = model(plain.embedding.to(device), plain.attention_mask.to(device))
    scores = scores.float().cpu()
    readable = torch.isfinite(plain.embedding).flatten(1).all(1) & torch.isfinite(scores).flatten(1).all(1)
    for (i, u), plain_scores, ok in zip(found, scores, readable.tolist()):
        for span in u.spans if ok else ():
            typed_rows = [r for r in encoder.span_positions(u.text, *span.typed) if r < rows]
            plain_rows = [r for r in encoder.span_positions(u.plain, *span.plain) if r < len(plain_scores)]
            if typed_rows and plain_rows:
                reading.rows[i, typed_rows] = True
                reading.replace[i, typed_rows] = span.certain
                reading.scores[i, typed_rows] = plain_scores[plain_rows].amax(0)


def sanitize_texts(model, encoder, prompts: Sequence[str], **settings):
    """(encoder.encode(prompts), the SanitizeResult): prompts encoded and sanitized as the hosts
    do where they have the text, read through their disguises. `settings` go to `sanitize`."""
    encoded = encoder.encode(list(prompts))
    return encoded, model.sanitize(encoded.embedding, encoded.pooled, attention_mask=encoded.attention_mask,
                                   plain_reading=plain_reading(model, encoder, prompts, encoded.embedding.shape[1]),
                                   **settings)
