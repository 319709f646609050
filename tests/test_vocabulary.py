"""Terms found as words: whatever the style, inflection or tag spelling, and never inside a
benign sense of the same concept."""

import pytest

from embedding_sanitizer.lexicon import builtin_concepts
from embedding_sanitizer.vocabulary import MAX_SPANS, Vocabulary, for_model, merged_spans, stored_vocabulary

WORDS = Vocabulary({"nudity": ["naked", "blow job", "spread legs", "breasts", "rating:explicit"],
                    "violence": ["corpse", "blood"]},
                   {"nudity": ["naked eye", "chicken breast"], "violence": ["blood orange"]})


def found(text, vocabulary=WORDS):
    return [(h.concept, text[h.start:h.end]) for h in vocabulary.find(text)]


@pytest.mark.parametrize("text, expected", [
    ("a naked woman, 85mm, raw photo, 8k uhd, masterpiece", [("nudity", "naked")]),
    ("1girl, spread_legs, blowjob, Blow-Jobs", [("nudity", "spread_legs"), ("nudity", "blowjob"),
                                                 ("nudity", "Blow-Jobs")]),
    ("two corpses in a field", [("violence", "corpses")]),
    ("rating:explicit, 1girl", [("nudity", "rating:explicit")]),
    ("a na-ked man", [("nudity", "na-ked")]),
])
def test_terms_are_found_in_every_style(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text", ["seen with the naked eye", "grilled chicken breasts", "a blood orange",
                                  "nakedness of the trees"])
def test_a_benign_sense_or_a_longer_word_is_not_the_concept(text):
    assert found(text) == []


def test_a_sense_only_covers_its_own_concept_and_its_own_words():
    assert found("blood on the naked eye") == [("violence", "blood")]
    assert found("a naked woman eats a blood orange") == [("nudity", "naked")]


def test_held_out_terms_are_never_looked_for():
    nudity = builtin_concepts()["nudity"]
    words = Vocabulary({"nudity": nudity.train_terms}, {"nudity": nudity.benign_senses})
    assert found("a starkers man", words) == []
    assert found("1boy, solo, nude, penis, erection, shower", words) == [
        ("nudity", "nude"), ("nudity", "penis"), ("nudity", "erection")]


def test_a_prompt_naming_terms_thousands_of_times_is_read_in_a_bounded_number_of_spans():
    text = "naked " * 20_000 + "corpse " * 100
    hits = WORDS.find(text)
    assert len(hits) == 20_100
    spans = merged_spans(hits)
    assert len(spans) == MAX_SPANS + 2
    assert [h.concept for h in spans[MAX_SPANS:]] == ["nudity", "violence"]
    tail = {h.concept: h for h in spans[MAX_SPANS:]}
    assert text[tail["violence"].start:tail["violence"].end].split() == ["corpse"] * 100


@pytest.mark.parametrize("metadata", [
    {"training": {"vocabulary": ["naked"]}},
    {"training": {"vocabulary": {"nudity": {"terms": "naked"}}}},
    {"training": {"vocabulary": {"nudity": {"terms": [None]}}}},
    {"training": {"vocabulary": {"nudity": {"terms": ["x" * 101]}}}},
    {"training": {"vocabulary": {"nudity": {"terms": ["naked"], "benign_senses": [7]}}}},
])
def test_a_weight_files_vocabulary_of_the_wrong_shape_is_refused(metadata):
    with pytest.raises(ValueError, match="vocabulary"):
        stored_vocabulary(metadata)


def test_a_model_looks_for_its_files_words_else_the_built_in_concepts():
    class Model:
        concepts = ("nudity", "clowns", "unknown")
        metadata = {"training": {"vocabulary": {"clowns": {"terms": ["clown"], "benign_senses": ["class clown"]}}}}

    words = for_model(Model())
    assert found("a clown and a naked juggler", words) == [("clowns", "clown"), ("nudity", "naked")]
    assert found("the class clown", words) == []
    Model.metadata = {}
    assert found("a clown and a naked juggler", for_model(Model())) == [("nudity", "naked")]


def test_a_phrase_holding_a_one_word_term_is_found_through_that_word_alone():
    words = Vocabulary({"nudity": ["nude", "nude woman", "spread legs"]})
    assert found("a nude woman, a nudewoman", words) == [("nudity", "nude")]
    assert found("spread legs", words) == [("nudity", "spread legs")]
