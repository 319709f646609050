"""The training corpus: every prompt a sanitizer learns from, made offline from data/.

Three kinds of example, each with the labels it can honestly give:

1. Pairs (token labels). An unsafe prompt and its anchor twin that differ only in the
   term ("a nude woman on a beach" / "a clothed woman on a beach"), with equal token
   counts so positions line up. The term's tokens are labelled with its concept; the
   erase loss pulls the sanitized unsafe embedding onto the anchor's.
2. Benign prompts (every token 0 for every concept): what people really type. Template
   captions, real COCO captions, booru-style tag lists, long descriptive prompts, runs of
   everyday words, hard negatives (the concepts' words in their harmless senses: "the
   naked eye", "a blood orange", and compounds of a user's terms: "clownfish"), and noisy
   copies of all of these (misspelled, leetspeak, odd spacing), so that noise alone never
   reads as unsafe.
3. Weak prompts (one label per prompt and concept, or unknown): real prompts whose
   concept is known only for the whole prompt (the I2P training part, labelled by the
   share of nude images it produced). They train the prompt score, the maximum token
   score, so the sanitizer learns the implicit and euphemistic prompts no word list holds.

Only the training part of each real prompt set ships (tools/make_corpus.py);
`is_training_part` is the fixed split of shared/data/README.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from .lexicon import Concept
from .paths import PACKAGE_DIR

DATA_DIR = PACKAGE_DIR / "data"
I2P_COLUMNS = ("prompt", "categories", "nudity_percentage")
UNKNOWN = -1.0      # a label (of a token or a prompt) that says nothing about a concept

# I2P labels (shared/data/README.md): a prompt is "nudity" at nudity_percentage >= 50.
NUDITY_PERCENT = 50.0


def is_training_part(prompt: str) -> bool:
    """The fixed split of the development prompt sets: about 80% train, 20% validation."""
    return int(hashlib.sha1(prompt.encode("utf-8")).hexdigest(), 16) % 5 != 0


# ---------------------------------------------------------------- material


@lru_cache(maxsize=1)
def material() -> dict:
    """Word lists and templates of the synthetic prompts (data/prompt_material.json)."""
    return json.loads((DATA_DIR / "prompt_material.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def everyday_words() -> tuple[str, ...]:
    """20,000 common words with no unsafe ones (made by tools/make_benign_words.py)."""
    return tuple((DATA_DIR / "benign_words.txt").read_text(encoding="utf-8").split())


@lru_cache(maxsize=1)
def real_captions() -> tuple[str, ...]:
    """COCO captions, training part (CC BY 4.0)."""
    path = DATA_DIR / "coco_captions_train.txt"
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@lru_cache(maxsize=1)
def caption_words() -> frozenset[str]:
    """Every lower-case word of the shipped captions (read once: each corpus build asks)."""
    return frozenset(w for c in real_captions() for w in re.findall(r"[a-z]+", c.lower()))


@lru_cache(maxsize=1)
def i2p_rows() -> tuple[dict, ...]:
    """I2P prompts, training part (MIT): prompt, categories, nudity_percentage."""
    with open(DATA_DIR / "i2p_train.csv", newline="", encoding="utf-8") as f:
        return tuple(csv.DictReader(f))


def fill(template: str, rng: random.Random, term: str = "") -> str:
    m = material()
    styles, artists = rng.sample(m["STYLES"], 2), rng.sample(m["ARTISTS"], 2)
    nouns, adjectives = rng.sample(m["NOUNS"], 3), rng.sample(m["ADJECTIVES"], 2)
    return template.format(term=term, subject=rng.choice(m["SUBJECTS"]), setting=rng.choice(m["SETTINGS"]),
                           style=styles[0], style2=styles[1], thing=rng.choice(m["THINGS"]),
                           action=rng.choice(m["ACTIONS"]), noun=nouns[0], noun2=nouns[1], noun3=nouns[2],
                           adj=adjectives[0], adj2=adjectives[1], verb=rng.choice(m["VERBS"]),
                           place=rng.choice(m["SETTINGS"]), artist=artists[0], artist2=artists[1])


# ---------------------------------------------------------------- noise

LEETSPEAK = {"a": "4@", "e": "3", "i": "1!", "o": "0", "s": "5$", "t": "7", "l": "1"}


def misspell(term: str, rng: random.Random) -> str:
    """A noisy spelling of a term: a dropped, doubled or swapped letter, or leetspeak."""
    letters = [i for i, ch in enumerate(term) if ch.isalpha()]
    if len(letters) < 3:
        return term
    for _ in range(10):     # some edits leave the word as it was (swapping equal letters)
        i = rng.choice(letters[1:])
        variant = rng.choice((
            term[:i] + term[i + 1:],
            term[:i] + term[i] + term[i:],
            term[:i] + term[i + 1:i + 2] + term[i] + term[i + 2:],
            term[:i] + rng.choice(LEETSPEAK.get(term[i].lower(), term[i])) + term[i + 1:],
        ))
        if variant != term:
            return variant
    return term


def leetspeak(word: str, rng: random.Random) -> str:
    """'naked' -> 'n4k3d': one to half of the letters that have a look-alike replaced."""
    spots = [i for i, ch in enumerate(word) if ch.lower() in LEETSPEAK]
    if not spots:
        return word
    chars = list(word)
    for i in rng.sample(spots, rng.randint(1, max(1, len(spots) // 2))):
        chars[i] = rng.choice(LEETSPEAK[chars[i].lower()])
    return "".join(chars)


def space_out(word: str, rng: random.Random) -> str:
    """'nude' -> 'n u d e', 'n.u.d.e' or 'nu-de'."""
    if len(word) < 3:
        return word
    style = rng.randrange(3)
    if style == 0:
        return " ".join(word)
    if style == 1:
        return ".".join(word)
    half = len(word) // 2
    return word[:half] + rng.choice(" -_") + word[half:]


def garble(text: str, rng: random.Random) -> str:
    """Every longer word of a phrase misspelled, in leetspeak or spaced out, one way for the
    whole phrase: how a term is typed to slip past a word filter, and how a harmless phrase
    comes out of a hurried hand. Both sides of the line are garbled alike, so the garbling
    alone never tells them apart."""
    how = rng.choices((misspell, leetspeak, space_out), (0.45, 0.3, 0.25))[0]
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if sum(ch.isalpha() for ch in w) >= 3]
    if how is space_out and long_words:     # a spaced-out phrase is unreadable: one word is enough
        long_words = [max(long_words, key=lambda i: len(words[i]))]
    for i in long_words:
        words[i] = how(words[i], rng)
    return " ".join(words)


def add_noise(text: str, rng: random.Random) -> str:
    """One or two longer words misspelled, in leetspeak or spaced out, as people type them."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(re.sub(r"[^A-Za-z]", "", w)) >= 4]
    if not candidates:
        return text
    for i in rng.sample(candidates, min(len(candidates), rng.choice((1, 1, 2)))):
        words[i] = garble(words[i], rng)
    return " ".join(words)


# ---------------------------------------------------------------- benign prompts


def tag_prompt(rng: random.Random) -> str:
    """A booru-style tag list: quality tags, a character, features, a scene, a style."""
    tags = material()["TAGS"]
    picks = []
    for group, (low, high) in (("quality", (0, 3)), ("count", (0, 1)), ("character", (0, 1)),
                               ("feature", (0, 4)), ("clothing", (0, 2)), ("pose", (0, 2)),
                               ("object", (0, 2)), ("scene", (1, 3)), ("style", (1, 3)), ("artist", (0, 2))):
        picks += rng.sample(tags[group], rng.randint(low, high))
    if rng.random() < 0.3:
        rng.shuffle(picks)
    return ", ".join(picks)


def caption_run(rng: random.Random, fewest: int, most: int) -> list[str]:
    """Between `fewest` and `most` real captions, their full stops dropped, to chain into one prompt."""
    return [rng.choice(real_captions()).rstrip(" .") for _ in range(rng.randint(fewest, most))]


def long_prompt(rng: random.Random) -> str:
    """A long descriptive prompt: two or three captions and a style tail."""
    return ", ".join(caption_run(rng, 2, 3)) + ", " + rng.choice(material()["LONG_TAILS"])


def hard_negative(rng: random.Random, contexts: Sequence[Sequence[str]]) -> str:
    """A harmless sense of a concept's word, inside a caption, a tag list or a template.
    `contexts` holds each concept's harmless phrases; every concept gets the same share, so a
    user's five safe phrases weigh as much as a built-in concept's hundred."""
    context = rng.choice(rng.choice(contexts))
    shape = rng.random()
    if shape < 0.35:
        return context
    if shape < 0.55:
        return f"{context}, {tag_prompt(rng)}"
    if shape < 0.7:
        return f"{rng.choice(real_captions()).rstrip(' .')} with {context}"
    return fill(rng.choice(material()["TEMPLATES"]), rng, context)


def benign_prompts(count: int, seed: int, concepts: Sequence[Concept] = (), noisy_share: float = 0.3,
                   real_share: float = 0.3) -> list[str]:
    """Benign prompts of every shape people type, a share of them noisy (see the module)."""
    rng = random.Random(seed)
    m = material()
    contexts = [group for group in (list(c.safe_contexts) + compound_contexts([c]) for c in concepts) if group]
    mentions = terms_pattern(concepts)
    captions = [c for c in real_captions() if not mentions.search(c)]
    makers: list[tuple[float, Callable[[], str]]] = [
        (real_share, lambda: rng.choice(captions)),
        (0.1, lambda: fill(rng.choice(m["BENIGN_TEMPLATES"]), rng)),
        (0.1, lambda: fill(rng.choice(m["CAPTION_TEMPLATES"]), rng)),
        (0.15, lambda: tag_prompt(rng)),
        (0.07, lambda: long_prompt(rng)),
        (0.07, lambda: camera_tail_prompt(rng)),
        (0.08, lambda: rng.choice((" ", ", ")).join(rng.choice(everyday_words())
                                                    for _ in range(rng.randint(3, 12)))),
        (0.05, lambda: ", ".join(rng.sample(m["NOUNS"], 2) + rng.sample(m["ADJECTIVES"], 2)
                                 + rng.sample(m["STYLES"] + m["ARTISTS"], 3))),
    ]
    if contexts:
        makers.append((0.15, lambda: hard_negative(rng, contexts)))
    total = sum(weight for weight, _ in makers)
    prompts = []
    for _ in range(count):
        pick = rng.random() * total
        for weight, make in makers:
            pick -= weight
            if pick <= 0:
                break
        prompt = make()
        prompts.append(add_noise(prompt, rng) if rng.random() < noisy_share else prompt)
    return prompts


def terms_pattern(concepts: Sequence[Concept]) -> re.Pattern:
    """Finds any of the concepts' terms as a whole word or phrase (case-insensitive)."""
    terms = sorted({t for c in concepts for t in c.train_terms + c.heldout_terms}, key=len, reverse=True)
    if not terms:
        return re.compile(r"(?!)")
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, terms)) + r")(?!\w)", re.IGNORECASE)


def compound_contexts(concepts: Sequence[Concept]) -> list[str]:
    """Everyday words that contain a single-word term without being one ("clownfish" for
    "clown"): harmless senses a user's concept file rarely lists."""
    vocabulary = sorted(set(everyday_words()) | caption_words())
    found = []
    for concept in concepts:
        terms = {t.lower() for t in concept.train_terms + concept.heldout_terms}
        roots = [t for t in terms if " " not in t and len(t) >= 4 and t.isalpha()]
        for word in vocabulary:
            low = word.lower()
            if low not in terms and any(root in low and low != root + "s" for root in roots):
                found.append(word)
    return found


# ---------------------------------------------------------------- unsafe prompts


@dataclass
class Example:
    """An unsafe prompt, its anchor twin (same token count) and where the term sits."""
    concept: str
    unsafe: str
    anchor: str
    term_span: tuple[int, int]     # unsafe[start:end] is the term (characters: every tokenizer finds it)


def styled(marked: str, rng: random.Random) -> str:
    """A prompt dressed as people write them: a tag list around it, or a quality and camera tail
    after it. The twins of a pair share the dressing, and benign prompts wear the same
    (`camera_tail_prompt`, `tag_prompt`), so that style says nothing of a concept."""
    if rng.random() < 0.5:
        return f"{marked}, {rng.choice(material()['CAMERA_TAILS'])}"
    tags = material()["TAGS"]
    before = rng.sample(tags["quality"], rng.randint(0, 2)) + rng.sample(tags["count"], rng.randint(0, 1))
    after = rng.sample(tags["feature"] + tags["scene"], rng.randint(1, 3)) + rng.sample(tags["style"], 1)
    return ", ".join(before + [marked] + after)


def camera_tail_prompt(rng: random.Random) -> str:
    """A benign prompt ending in a quality and camera tail."""
    return f"{fill(rng.choice(material()['BENIGN_TEMPLATES']), rng)}, {rng.choice(material()['CAMERA_TAILS'])}"


def make_pairs(concept: Concept, count: int, seed: int, count_tokens, heldout: bool = False,
               noisy_share: float = 0.4, long_share: float = 0.2, styled_share: float = 0.3,
               room: int = 75) -> list[Example]:
    """Unsafe/anchor prompt pairs that differ only in the term, with equal token counts.

    count_tokens(text) -> number of tokens without specials, under the encoder's tokenizer.
    A `long_share` of the pairs sits behind a long description, so that a term is known at every
    position a prompt of up to `room` tokens (the encoder's window) can put it; a `styled_share`
    is dressed as tags or with a camera tail (`styled`).
    """
    rng = random.Random(seed)
    terms = concept.heldout_terms if heldout else concept.train_terms
    if not terms:
        return []
    by_length: dict[int, list[str]] = {}
    for anchor in concept.anchors:
        by_length.setdefault(count_tokens(anchor), []).append(anchor)
    templates = material()["TEMPLATES"]
    examples, tries = [], 0
    while len(examples) < count and tries < count * 20:
        tries += 1
        term = rng.choice(terms)
        if not heldout and rng.random() < noisy_share:
            term = garble(term, rng)
        anchor_phrase = _anchor_of_length(count_tokens(term), by_length, rng)
        if anchor_phrase is None:
            continue
        marked = fill(rng.choice(templates), rng, "\x00")   # the twins share everything but the term
        if rng.random() < styled_share:
            marked = styled(marked, rng)
        if rng.random() < long_share:
            marked = ", ".join(caption_run(rng, 1, 8) + [marked])
            if count_tokens(marked.replace("\x00", term)) > room:
                continue
        unsafe, anchor = marked.replace("\x00", term), marked.replace("\x00", anchor_phrase)
        start = marked.index("\x00")
        examples.append(Example(concept.name, unsafe, anchor, (start, start + len(term))))
    return examples


def _anchor_of_length(length: int, by_length: dict[int, list[str]], rng: random.Random):
    if length in by_length:
        return rng.choice(by_length[length])
    for first in rng.sample(sorted(by_length), len(by_length)):   # two anchors joined
        if length - first in by_length:
            return f"{rng.choice(by_length[first])} {rng.choice(by_length[length - first])}"
    shortest = min(by_length)
    if length > shortest:   # pad a short anchor with a neutral word until lengths match
        return " ".join([rng.choice(by_length[shortest])] + ["very"] * (length - shortest))
    return None


def garbled_anchor_prompt(rng: random.Random, concepts: Sequence[Concept]) -> str:
    """A pair template filled with a garbled anchor: the benign twin of a garbled term."""
    concept = rng.choice([c for c in concepts if c.anchors])
    return fill(rng.choice(material()["TEMPLATES"]), rng, garble(rng.choice(concept.anchors), rng))


def weak_examples(concepts: Sequence[Concept]) -> tuple[list[str], list[list[float]]]:
    """I2P training prompts with a prompt-level label per concept (UNKNOWN where I2P says nothing).

    nudity: nudity_percentage / 50, capped at 1 (the share of nude images the prompt produced,
    so 50% and more is certain); prompts I2P files under 'sexual' that produced few nude
    images are left unknown, and a prompt neither sexual nor nude is a 0. I2P's other
    categories are too broad to name a concept of ours, so they label nothing.
    """
    names = [c.name for c in concepts]
    if "nudity" not in names:
        return [], []
    prompts, labels = [], []
    for row in i2p_rows():
        try:
            nudity = float(row["nudity_percentage"] or 0)
        except ValueError:
            continue
        sexual = "sexual" in row["categories"]
        if sexual and nudity < 10:
            continue
        label = [UNKNOWN] * len(names)
        label[names.index("nudity")] = min(1.0, nudity / NUDITY_PERCENT)
        prompts.append(row["prompt"].strip())
        labels.append(label)
    return prompts, labels


def heldout_sets(count_tokens, concepts: Sequence[Concept], pairs_per_concept: int, benign: int,
                 seed: int, seen: set) -> tuple[list[Example], list[str]]:
    """Unsafe examples built from held-out terms only, and benign prompts not in `seen`."""
    unsafe = [ex for i, c in enumerate(concepts)
              for ex in make_pairs(c, pairs_per_concept, seed + 100 + i, count_tokens, heldout=True)]
    pool = benign_prompts(benign * 3, seed + 7, concepts, noisy_share=0.2)
    return unsafe, [p for p in dict.fromkeys(pool) if p not in seen][:benign]


@dataclass
class Corpus:
    pairs: list[Example]
    benign: list[str]
    weak: list[str]
    weak_labels: list[list[float]]


def build_corpus(concepts: Sequence[Concept], count_tokens, pairs_per_concept: int, benign: int,
                 seed: int, weak_prompts: int, room: int = 75) -> Corpus:
    pairs = [ex for i, c in enumerate(concepts)
             for ex in make_pairs(c, pairs_per_concept, seed + i, count_tokens, room=room)]
    # Anchor twins are benign too: they teach that the rest of an unsafe prompt is harmless,
    # and, garbled, that a garbled word where a term could stand is not a term by that alone.
    rng = random.Random(seed + 3)
    twins = [ex.anchor for ex in pairs[::4]]
    garbled_twins = [garbled_anchor_prompt(rng, concepts) for _ in range(len(pairs) // 3)]
    benign_list = list(dict.fromkeys(benign_prompts(benign, seed, concepts) + twins + garbled_twins))
    weak, weak_labels = weak_examples(concepts)
    if len(weak) > weak_prompts:
        keep = sorted(random.Random(seed).sample(range(len(weak)), weak_prompts))
        weak, weak_labels = [weak[i] for i in keep], [weak_labels[i] for i in keep]
    return Corpus(pairs, benign_list, weak, weak_labels)
