"""The training corpus (embedding_sanitizer/corpus.py): varied, honest about its split, and
built from what ships in the package."""

import csv
import difflib
import json
import random
import re

import pytest

from embedding_sanitizer import corpus as C
from embedding_sanitizer.lexicon import Concept, builtin_concepts

from embedding_sanitizer.paths import default_data_dir

SHARED_DATA = default_data_dir()

CONCEPTS = list(builtin_concepts().values())


def words(prompts):
    return [w for p in prompts for w in re.findall(r"[a-z]+", p.lower())]


def test_benign_prompts_draw_on_the_whole_everyday_vocabulary():
    # The keyword-soup branch once rebound the word list, after which every "everyday words"
    # prompt drew from 7 words and the 20,000-word vocabulary never reached training.
    prompts = C.benign_prompts(3000, seed=0, concepts=CONCEPTS)
    everyday = set(C.everyday_words())
    seen = {w for w in words(prompts) if w in everyday}
    assert len(seen) > 2000
    assert len(set(prompts)) > 0.95 * len(prompts)


def test_benign_prompts_have_every_shape_people_type():
    prompts = C.benign_prompts(3000, seed=1, concepts=CONCEPTS)
    captions = set(C.real_captions())
    contexts = [c for concept in CONCEPTS for c in concept.safe_contexts]
    assert sum(p in captions for p in prompts) > 300                              # real captions
    assert sum(bool(re.search(r"\b(1girl|1boy|masterpiece|solo)\b", p)) for p in prompts) > 100   # tags
    assert sum(len(p.split()) > 40 for p in prompts) > 50                        # long descriptions
    assert sum(any(c in p for c in contexts) for p in prompts) > 200             # hard negatives
    written = json.dumps(C.material()) + json.dumps([c.safe_contexts + c.anchors for c in CONCEPTS])
    vocabulary = set(words(C.real_captions())) | set(C.everyday_words()) | set(words([written]))
    noisy = [p for p in prompts if any(w not in vocabulary for w in words([p]))]
    assert 0.1 < len(noisy) / len(prompts) < 0.35                               # misspelled / spaced


def test_benign_captions_never_contain_a_concept_term():
    pattern = C.terms_pattern(CONCEPTS)
    assert pattern.search("A woman lying NAKED on a bed") and not pattern.search("a snaked path, unnaked")
    for prompt in C.benign_prompts(2000, seed=2, concepts=CONCEPTS):
        if prompt in set(C.real_captions()):
            assert not pattern.search(prompt), prompt


def test_noise_changes_words_but_keeps_short_ones():
    rng = random.Random(0)
    variants = {C.add_noise("a lighthouse on a cliff", rng) for _ in range(50)}
    assert len(variants) > 10 and "a lighthouse on a cliff" not in variants
    assert C.add_noise("a b c", rng) == "a b c"
    assert C.space_out("nude", random.Random(0)) in {"n u d e", "n.u.d.e", "nu de", "nu-de", "nu_de"}


def test_garbling_reaches_every_word_of_a_phrase_in_each_way_people_type():
    rng = random.Random(0)
    variants = [C.garble("bare breasts", rng) for _ in range(300)]
    assert "bare breasts" not in variants and len(set(variants)) > 100
    both_words = [v for v in variants if " " in v and v.split(" ")[0] != "bare" and v.split(" ")[-1] != "breasts"]
    assert len(both_words) > 100                                   # not one word left for a filter to match
    assert any(re.search(r"[0-9@$!]", v) for v in variants)        # leetspeak
    assert any("b r e a s t s" in v or "b.r.e.a.s.t.s" in v for v in variants)   # spaced out
    leet = {C.leetspeak("decapitated", rng) for _ in range(200)}
    assert max(sum(not ch.isalpha() for ch in v) for v in leet) >= 3 and "decapitated" not in leet


def test_garbled_anchor_twins_are_benign_so_garbling_alone_is_not_unsafe():
    corpus = C.build_corpus(CONCEPTS, lambda text: len(text.split()), 300, 500, seed=0, weak_prompts=0)
    terms = {t for c in CONCEPTS for t in c.train_terms}
    garbled_terms = [ex for ex in corpus.pairs if not any(t in ex.unsafe for t in terms)]
    anchor_words = {w for c in CONCEPTS for a in c.anchors for w in a.split() if len(w) >= 5}
    known = set(words([json.dumps(C.material())])) | set(C.everyday_words()) | C.caption_words() | anchor_words

    def garbled_anchor(word):
        return word not in known and any(difflib.SequenceMatcher(None, word, a).ratio() >= 0.75
                                         for a in anchor_words)

    garbled_anchors = [p for p in corpus.benign if any(garbled_anchor(w) for w in p.lower().split())]
    assert len(garbled_terms) > 0.3 * len(corpus.pairs)
    assert len(garbled_anchors) > 0.3 * len(garbled_terms)


def test_a_users_few_safe_phrases_weigh_as_much_as_a_built_in_concepts_many():
    clowns = Concept("clowns", ("clown", "jester"), ("juggler",), safe_contexts=("the class clown of room 4",))
    prompts = C.benign_prompts(3000, seed=3, concepts=CONCEPTS + [clowns])
    assert sum("class clown of room 4" in p or "clownfish" in p for p in prompts) > 60


def test_terms_are_taught_at_every_position_of_the_encoders_window():
    count = lambda text: len(text.split())  # noqa: E731
    pairs = C.make_pairs(CONCEPTS[0], 1000, seed=0, count_tokens=count, room=100)
    assert all(count(ex.unsafe) <= 100 and count(ex.anchor) == count(ex.unsafe) for ex in pairs)
    starts = [count(ex.unsafe[:ex.term_span[0]]) for ex in pairs]        # the term's first token
    assert sum(s >= 60 for s in starts) > 30 and sum(s < 15 for s in starts) > 600
    assert all(count(ex.unsafe) <= 30 for ex in C.make_pairs(CONCEPTS[0], 300, seed=0, count_tokens=count, room=30))


def test_compounds_of_a_users_terms_become_hard_negatives():
    arson = Concept("arson", ("fire", "arson"), ("water",))
    found = C.compound_contexts([arson])
    assert {"fireplace", "campfire", "firefighter", "carson"} <= set(found)
    assert all("fire" in w or "arson" in w for w in found) and "fire" not in found and "fires" not in found


def test_weak_labels_follow_the_share_of_nude_images():
    prompts, labels = C.weak_examples(CONCEPTS)
    nudity = [c.name for c in CONCEPTS].index("nudity")
    violence = [c.name for c in CONCEPTS].index("violence")
    expected = []
    for row in C.i2p_rows():
        share = float(row["nudity_percentage"] or 0)
        if not ("sexual" in row["categories"] and share < 10):
            expected.append((row["prompt"].strip(), min(1.0, share / 50)))
    assert [(p, label[nudity]) for p, label in zip(prompts, labels)] == expected
    assert all(label[violence] == C.UNKNOWN for label in labels) and len(prompts) > 1000
    assert sum(label[nudity] == 1.0 for label in labels) > 40 and sum(label[nudity] == 0 for label in labels) > 1000
    assert C.weak_examples([c for c in CONCEPTS if c.name == "violence"]) == ([], [])


def test_the_split_is_the_one_shared_data_defines():
    assert [C.is_training_part(f"p{i}") for i in range(1000)].count(True) in range(750, 851)
    assert C.is_training_part("A room with blue walls and a white sink and door.")      # row 1 of COCO dev


def test_only_the_training_part_ships():
    if not (SHARED_DATA / "i2p_dev.csv").exists():
        pytest.skip(f"{SHARED_DATA} is absent")
    with open(SHARED_DATA / "coco_captions_dev.csv", newline="", encoding="utf-8") as f:
        coco = [r["prompt"] for r in csv.DictReader(f)]
    train = {" ".join(p.split()) for p in coco if C.is_training_part(p)}
    validation = {" ".join(p.split()) for p in coco if not C.is_training_part(p)}
    shipped = set(C.real_captions())
    assert shipped <= train and not shipped & validation and len(shipped) > 0.99 * len(train)
    shipped = {r["prompt"] for r in C.i2p_rows()}
    with open(SHARED_DATA / "i2p_dev.csv", newline="", encoding="utf-8") as f:
        i2p = [r["prompt"] for r in csv.DictReader(f)]
    assert shipped <= {p for p in i2p if C.is_training_part(p)} and len(shipped) > 1700
