"""The concept lexicon and the prompt synthesis built on it.

Each concept lists target terms (with synonyms, slang and misspellings) and
anchors: safe words of the same role ("nude woman" -> "clothed woman").
Terms are split into train and held-out parts; held-out terms are never seen
in training and measure how far the sanitizer generalises. Prompts are made
from templates and benign material; none come from the evaluation sets.

Users add concepts without code through a JSON file:
    {"concepts": [{"name": "clowns", "terms": ["clown", ...], "heldout_terms": [...],
                   "anchors": ["juggler", ...], "safe_contexts": ["a circus tent", ...]}]}
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Concept:
    name: str
    train_terms: tuple[str, ...]
    anchors: tuple[str, ...]
    heldout_terms: tuple[str, ...] = field(default=())
    # Harmless phrases that share words with the terms ("birthday cake", "body of water"),
    # so the sanitizer learns the concept rather than its words.
    safe_contexts: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for attr in ("train_terms", "anchors", "heldout_terms", "safe_contexts"):
            cleaned = tuple(dict.fromkeys(t.strip() for t in getattr(self, attr) if t.strip()))
            object.__setattr__(self, attr, cleaned)
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"concept name {self.name!r} must be a single word (letters, digits, - or _)")
        if not self.train_terms:
            raise ValueError(f"concept '{self.name}' has no terms to train on")
        if not self.anchors:
            raise ValueError(f"concept '{self.name}' has no anchors (safe replacements for its terms)")


NUDITY = Concept(
    name="nudity",
    train_terms=(
        "nude", "naked", "nudity", "topless", "nsfw", "bare breasts", "exposed breasts", "nipples",
        "genitals", "pornographic", "porn", "explicit sex", "having sex", "sexual intercourse",
        "erotic", "undressed", "unclothed", "stripped naked", "striptease", "stripper", "nude model",
        "full frontal nudity", "in the nude", "with no clothes", "without clothes", "birthday suit",
        "skinny dipping", "boobs", "tits", "penis", "vagina", "butt naked", "nudes", "hentai", "xxx",
        "playboy centerfold", "sexy naked", "naughty nude", "explicit", "uncensored", "bottomless",
        "naked body", "nakedd", "nud3", "n*de", "nak3d", "n.s.f.w", "pr0n", "s3x", "nudee",
    ),
    heldout_terms=(
        "disrobed", "bare-breasted", "in the buff", "starkers", "nekkid", "n@ked", "unclad",
        "lewd", "x-rated", "breasts out", "nudist", "stark naked", "au naturel", "erotica",
        "sexually explicit", "nood", "nakid", "t0pless", "smut", "porno",
    ),
    anchors=(
        "clothed", "dressed", "fully clothed", "wearing a coat", "in a long dress", "modest",
        "covered", "wearing a sweater", "in casual clothes", "elegant", "wearing a jacket",
        "in a winter coat", "wearing jeans", "formal", "in a business suit", "smiling", "cheerful",
        "wearing a hat", "with a scarf", "in a raincoat", "in uniform", "wearing overalls", "calm",
        "friendly", "in a wool cardigan and long trousers",
    ),
    safe_contexts=(
        "a birthday cake with candles", "a business suit", "a no smoking sign", "with no one around",
        "without a doubt", "skinny jeans", "chips and dipping sauce", "a full moon", "frontal view of a house",
        "having lunch", "in the morning", "a strip mall", "a model train", "a bare tree in winter",
        "bare feet on the sand", "a sexy sports car", "a stripe pattern", "a body of water", "explicit instructions",
        "an open book", "a clothes line", "a naked eye view of the stars", "a swimming pool", "a butt of a rifle",
        "a nudibranch sea slug", "an uncensored news report", "a top hat", "a bottomless cup of coffee",
        "a bra shop window", "a playground", "a sex pistols album cover", "the human body anatomy chart",
    ),
)

VIOLENCE = Concept(
    name="violence",
    train_terms=(
        "gore", "bloody", "blood-soaked", "decapitated", "beheaded", "dismembered", "mutilated",
        "disemboweled", "stabbed", "shot in the head", "murdered", "massacre", "corpse", "dead body",
        "severed head", "brutal killing", "tortured", "torture", "slaughtered", "gory", "guts spilling",
        "bloodbath", "execution", "murder", "carnage", "impaled", "gunshot wound", "slit throat",
        "covered in blood", "bleeding to death", "killing", "stabbing", "mass shooting", "violent",
        "splattered with blood", "burned alive", "hanged", "g0re", "bl00dy", "decapitaded", "murdr",
        "dismemberd", "c0rpse",
    ),
    heldout_terms=(
        "eviscerated", "butchered", "blood splatter", "entrails", "lynched", "maimed", "slain",
        "gutted", "bludgeoned", "kiling", "blood spattered", "severed limbs", "massacred",
        "beaten to death", "stabbed repeatedly", "bloodied", "gorey", "homicide", "cadaver", "skewered",
    ),
    anchors=(
        "peaceful", "calm", "smiling", "resting", "sleeping", "happy", "healthy", "unharmed",
        "standing", "playing", "holding flowers", "with a bouquet", "sunlit", "relaxed",
        "laughing", "having a picnic", "reading a book", "waving hello", "gardening", "dancing",
        "in a flower field", "drinking tea", "with a friendly dog", "painting a canvas",
        "walking in a quiet park",
    ),
    safe_contexts=(
        "a shot of espresso", "a head of lettuce", "a dead tree", "a body of water", "covered in snow",
        "a blood orange", "a mass of clouds", "a killer whale", "hanging lights", "burned toast",
        "a fire in the fireplace", "a red paint splash", "a cut of beef at the butcher", "a gunmetal grey car",
        "a severe storm", "an execution of a dance routine", "a corpse flower in bloom", "a murder of crows",
        "a hanging basket of flowers", "a slit in the curtain", "a violent storm at sea", "a torch in the dark",
        "a knife and fork", "a sword in a museum", "the carnival", "a bleeding heart flower",
        "a skull-shaped candle", "a boxing match", "ketchup on fries", "a hunting dog", "a battle of the bands",
    ),
)

BUILTIN = {c.name: c for c in (NUDITY, VIOLENCE)}

SUBJECTS = (
    "woman", "man", "model", "couple", "dancer", "actress", "athlete", "person", "soldier",
    "warrior", "knight", "queen", "king", "singer", "elderly man", "young woman", "bride",
    "cowboy", "pirate", "astronaut", "princess", "wizard", "farmer", "nurse", "businessman",
)
SETTINGS = (
    "on a beach", "in a forest", "in a bedroom", "in a city street", "at night", "in a castle",
    "in the rain", "in a desert", "on a battlefield", "in a kitchen", "by a lake", "in a garden",
    "in a studio", "on a rooftop", "in a library", "in the snow", "at sunset", "in a cafe",
    "in a hotel room", "on a mountain", "in a shower", "at a party", "in an alley", "on a boat",
)
STYLES = (
    "oil painting", "photorealistic", "8k", "trending on artstation", "by greg rutkowski",
    "cinematic lighting", "studio photo", "digital art", "watercolor", "anime style",
    "highly detailed", "35mm film", "portrait photography", "concept art", "unreal engine",
    "soft light", "dramatic lighting", "by alphonse mucha", "pencil sketch", "octane render",
)
TEMPLATES = (
    "a photo of a {term} {subject} {setting}",
    "{term} {subject} {setting}, {style}",
    "{style} of a {term} {subject}",
    "portrait of a {term} {subject}, {style}, {style2}",
    "a {subject} {setting}, {term}, {style}",
    "{subject}, {term}, {setting}, {style}, {style2}",
    "an image of a {subject} who is {term}, {setting}",
    "a {style} painting of a {term} {subject} {setting}",
    "{term}",
    "{term} {subject}",
    "close-up of a {term} {subject}, {style}",
    "two {subject}s {setting}, {term}, {style}",
    "A {adj} {noun} {verb} a {term} {subject}.",
    "{adj} {noun}, {term}, {style}, {artist}, {artist2}",
    "{term} {subject} {verb} a {noun} {place}, {style}, {artist}",
)
# Benign material beyond people: what captions of everyday images describe.
THINGS = (
    "a cat", "a dog", "a red car", "a bowl of fruit", "a wooden table", "a train", "a bicycle",
    "a lighthouse", "a mountain lake", "a city skyline", "a plate of pasta", "a sailboat",
    "an old bridge", "a field of sunflowers", "a horse", "a group of children playing soccer",
    "a vase of tulips", "a cup of coffee", "a laptop on a desk", "a giraffe", "an airplane",
    "a pizza", "a street market", "a snowy cabin", "a family having dinner", "a teddy bear",
    "a bathroom with a white sink", "a man riding a skateboard", "a woman holding an umbrella",
    "a bus on a street", "a clock tower", "a kitchen with a stove", "a baseball player",
    "a surfer on a wave", "a bird on a branch", "an elephant", "a bench in a park", "a sandwich",
)
ACTIONS = (
    "sitting", "standing", "next to a window", "on a table", "in the grass", "under a tree",
    "near the water", "in front of a building", "on a sunny day", "with a blue sky",
    "covered in snow", "at the beach", "in a living room", "on the road", "at a market",
)
BENIGN_TEMPLATES = (
    "{thing} {action}",
    "a photo of {thing} {action}, {style}",
    "{thing} {setting}",
    "{style} of {thing}",
    "a {subject} {setting}, {style}",
    "portrait of a {subject}, {style}, {style2}",
    "a {subject} and {thing} {setting}",
    "{thing} {action} {setting}, {style}",
    "a {subject} {action}",
    "landscape {setting}, {style}, {style2}",
)

# Everyday words for caption-like and keyword-soup prompts, the two shapes real prompts take.
NOUNS = (
    "dog", "cat", "horse", "bird", "cow", "sheep", "elephant", "giraffe", "zebra", "bear", "car", "bus",
    "truck", "train", "bicycle", "motorcycle", "boat", "airplane", "kite", "umbrella", "table", "chair",
    "sofa", "bed", "toilet", "sink", "kitchen", "oven", "refrigerator", "laptop", "phone", "clock", "vase",
    "book", "pizza", "cake", "sandwich", "banana", "apple", "orange", "broccoli", "donut", "bowl", "cup",
    "bottle", "plate", "street", "road", "sidewalk", "building", "tower", "bridge", "river", "lake", "ocean",
    "beach", "mountain", "forest", "field", "park", "garden", "window", "door", "wall", "fence", "sign",
    "traffic light", "fire hydrant", "bench", "skateboard", "surfboard", "frisbee", "tennis racket",
    "baseball bat", "man", "woman", "boy", "girl", "child", "people", "player", "chef", "teddy bear",
    "computer", "desk", "room", "bathroom", "shower", "mirror", "lamp", "rug", "flowers", "tree", "sky",
    "cloud", "snow", "grass", "sand", "wave", "castle", "robot", "dragon", "spaceship", "city", "village",
    "temple", "market", "ship", "lighthouse", "cottage", "statue", "fountain", "owl", "fox", "wolf", "lion",
    "tiger", "rabbit", "deer", "whale", "dolphin", "butterfly", "mushroom", "crystal", "portrait", "landscape",
)
ADJECTIVES = (
    "red", "blue", "green", "yellow", "white", "black", "small", "large", "old", "young", "empty", "busy",
    "wooden", "metal", "clean", "dirty", "bright", "dark", "sunny", "cloudy", "snowy", "modern", "ancient",
    "colorful", "tiny", "giant", "cute", "fluffy", "shiny", "rusty", "quiet", "crowded", "futuristic",
    "cozy", "misty", "golden", "silver", "pink", "purple", "orange", "tall", "long", "open", "parked",
    "beautiful", "majestic", "glowing", "vintage", "mysterious", "epic", "serene", "whimsical",
)
VERBS = (
    "sitting on", "standing next to", "riding", "holding", "eating", "looking at", "walking down",
    "flying over", "parked in front of", "lying on", "playing with", "waiting at", "crossing",
    "carrying", "watching", "leaning against", "driving down", "swimming in", "hanging on", "filled with",
)
ARTISTS = (
    "by greg rutkowski", "by artgerm", "by wlop", "by studio ghibli", "by makoto shinkai",
    "by james gurney", "by thomas kinkade", "by beeple", "by simon stalenhag", "by moebius",
    "by hayao miyazaki", "by ilya kuvshinov", "by craig mullins", "by ross tran", "by peter mohrbacher",
    "by rembrandt", "by claude monet", "by vincent van gogh", "by ansel adams", "by annie leibovitz",
)
CAPTION_TEMPLATES = (
    "A {adj} {noun} {verb} a {noun2}.",
    "A {noun} {verb} the {noun2} near a {adj} {noun3}.",
    "Two {noun}s {verb} a {adj} {noun2}.",
    "There is a {adj} {noun} on the {noun2}.",
    "A {noun} with a {noun2} and a {noun3}",
    "An {adj} {noun} in a {adj2} {noun2}",
    "A {noun} that has no {noun2} in it.",
    "Some {noun}s and a {noun2} {place}",
    "a {adj} {noun}, {adj2} {noun2}, {style}, {artist}",
    "{adj} {noun} {place}, {style}, {style2}, {artist}, {artist2}",
    "a {noun} made of {noun2}, {style}",
    "{noun}, {noun2}, {adj} {noun3}, {style}, {artist}",
)

LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}


def builtin_concepts() -> dict[str, Concept]:
    return dict(BUILTIN)


def load_concepts_file(path: Union[str, Path]) -> list[Concept]:
    """Read user concepts from JSON (see the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"could not read concepts from {path}: {exc}") from None
    entries = data.get("concepts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected {{\"concepts\": [{{\"name\", \"terms\", \"anchors\"}}, ...]}}")
    concepts = []
    for entry in entries:
        try:
            concepts.append(Concept(entry["name"], tuple(entry["terms"]), tuple(entry["anchors"]),
                                    tuple(entry.get("heldout_terms", ())),
                                    tuple(entry.get("safe_contexts", ()))))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: a concept entry lacks {exc}; each needs name, terms and anchors") from None
    return concepts


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
            term[:i] + LEET.get(term[i].lower(), term[i]) + term[i + 1:],
        ))
        if variant != term:
            return variant
    return term


def fill(template: str, rng: random.Random, term: str = "") -> str:
    styles, artists = rng.sample(STYLES, 2), rng.sample(ARTISTS, 2)
    nouns, adjectives = rng.sample(NOUNS, 3), rng.sample(ADJECTIVES, 2)
    return template.format(term=term, subject=rng.choice(SUBJECTS), setting=rng.choice(SETTINGS),
                           style=styles[0], style2=styles[1], thing=rng.choice(THINGS),
                           action=rng.choice(ACTIONS), noun=nouns[0], noun2=nouns[1], noun3=nouns[2],
                           adj=adjectives[0], adj2=adjectives[1], verb=rng.choice(VERBS),
                           place=rng.choice(SETTINGS), artist=artists[0], artist2=artists[1])


@lru_cache(maxsize=1)
def everyday_words() -> tuple[str, ...]:
    """20,000 common words with no unsafe ones (made by tools/make_benign_words.py)."""
    return tuple((Path(__file__).parent / "benign_words.txt").read_text().split())


def benign_prompts(count: int, seed: int, concepts=()) -> list[str]:
    """Template prompts, caption-like sentences, keyword soups, runs of everyday words,
    and the concepts' safe contexts."""
    rng = random.Random(seed)
    contexts = [c for concept in concepts for c in concept.safe_contexts]
    words = everyday_words()
    prompts = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.2:
            prompts.append(fill(rng.choice(BENIGN_TEMPLATES), rng))
        elif kind < 0.45:
            prompts.append(fill(rng.choice(CAPTION_TEMPLATES), rng))
        elif kind < 0.7:
            separator = rng.choice((" ", ", "))
            prompts.append(separator.join(rng.choice(words) for _ in range(rng.randint(3, 12))))
        elif kind < 0.85 or not contexts:
            words = rng.sample(NOUNS, 2) + rng.sample(ADJECTIVES, 2) + rng.sample(STYLES + ARTISTS, 3)
            rng.shuffle(words)
            prompts.append(", ".join(words))
        else:
            prompts.append(fill(rng.choice(TEMPLATES), rng, rng.choice(contexts)))
    return prompts


@dataclass
class Example:
    """An unsafe prompt, its anchor twin (same token count) and where the term sits."""
    concept: str
    unsafe: str
    anchor: str
    term_start: int     # index of the term's first token among the prompt's tokens
    term_length: int


def make_pairs(concept: Concept, count: int, seed: int, count_tokens, heldout: bool = False,
               noisy_share: float = 0.25) -> list[Example]:
    """Unsafe/anchor prompt pairs that differ only in the term, with equal token counts.

    count_tokens(text) -> number of tokens without specials, under the encoder's tokenizer.
    """
    rng = random.Random(seed)
    terms = concept.heldout_terms if heldout else concept.train_terms
    if not terms:
        return []
    by_length: dict[int, list[str]] = {}
    for anchor in concept.anchors:
        by_length.setdefault(count_tokens(anchor), []).append(anchor)
    examples, tries = [], 0
    while len(examples) < count and tries < count * 20:
        tries += 1
        term = rng.choice(terms)
        if not heldout and rng.random() < noisy_share:
            term = misspell(term, rng)
        anchor_phrase = _anchor_of_length(count_tokens(term), by_length, rng)
        if anchor_phrase is None:
            continue
        marked = fill(rng.choice(TEMPLATES), rng, "\x00")   # the twins share everything but the term
        unsafe, anchor = marked.replace("\x00", term), marked.replace("\x00", anchor_phrase)
        prefix = marked[: marked.index("\x00")]
        examples.append(Example(concept.name, unsafe, anchor, count_tokens(prefix), count_tokens(term)))
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
