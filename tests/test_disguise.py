"""Reading a prompt through spaced-out letters and look-alikes (embedding_sanitizer.disguise)."""

import pytest
import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig, SanitizerShapeError
from embedding_sanitizer.disguise import MAX_SPANS, PlainReading, plain_reading, respelled, undisguise

PLAIN = {
    "a n u d e woman": "a nude woman",
    "a s.l.a.s.h.e.d t h r o a t, n4k3d": "a slashed throat, naked",
    "t_o_p_l_e_s_s, g-o-r-e": "topless, gore",
    "s h o t d.e.a.d, n.o.t w e a r i n g a.n.y": "shot dead, not wearing any",
    # A "1" reads as "l" after a vowel or before one, else as "i".
    "ki1l1ng b1ood s1ut n1pple p3acefu1 1us7ful 1n7ercour$e": "killing blood slut nipple peaceful lustful intercourse",
    "7or7ure ()rgy brea$t$ amazing!": "torture orgy breasts amazing!",
    "(n u d e:1.2), 5ex": "(nude:1.2), sex",
    # A misspelling reads as the commonest word one edit away.
    "a nakde woman in a stret at nigth": "a naked woman in a street at night",
}
UNDISGUISED = ["a photo of a cat", "8k, 35mm, 1990s, 2021, 4k uhd", "masterpiece, best quality, 2girls, 3d",
               "a dog, a cat", "lewd, by alphonse mucha and greg rutkowski, bouguereau"]


@pytest.mark.parametrize("typed", PLAIN)
def test_undisguise_reads_the_plain_words_and_maps_every_span(typed):
    found = undisguise(typed)
    assert found is not None and found.text == typed and found.plain == PLAIN[typed]
    # Outside the spans the two texts are the same, piece by piece.
    typed_at = plain_at = 0
    for span in found.spans:
        (a, b), (c, d) = span.typed, span.plain
        assert typed[typed_at:a] == found.plain[plain_at:c]
        assert typed[a:b] != found.plain[c:d]
        typed_at, plain_at = b, d
    assert typed[typed_at:] == found.plain[plain_at:]


@pytest.mark.parametrize("text", UNDISGUISED)
def test_numbers_tags_and_plain_words_hold_no_disguise(text):
    assert undisguise(text) is None


def test_only_a_possible_misspelling_is_uncertain():
    found = undisguise("a n4k3d woman, toppless")
    assert [s.certain for s in found.spans] == [True, False]
    assert respelled("topless") is None and respelled("xqzvw") is None


def test_a_hostile_prompt_is_read_through_its_first_spans_only():
    found = undisguise(" ".join(["h3ll0"] * 5000 + ["qwzrtplk"] * 5000) + " n4k3d")
    assert len(found.spans) == MAX_SPANS and found.plain.startswith("hello hello")
    assert found.spans[-1].typed == (6 * (MAX_SPANS - 1), 6 * MAX_SPANS - 1)


# Each once took time quadratic in its length (seconds at 20,000 characters, minutes at these
# lengths): a run of "!" backtracked from each of its characters, and every edit was checked
# against every earlier one. benchmarks/disguise.py measures the time.
def test_a_long_run_of_exclamation_marks_is_punctuation():
    assert undisguise("!" * 100_000) is None
    found = undisguise("b!tch" + "!" * 100_000)
    assert found.plain == "bitch" + "!" * 100_000 and [s.typed for s in found.spans] == [(0, 5)]


def test_tens_of_thousands_of_disguised_spans_keep_the_first_ones():
    found = undisguise("a.b.c " * 20_000)
    assert len(found.spans) == MAX_SPANS and found.plain.startswith("abc abc abc")
    assert found.plain.endswith("a.b.c ") and found.spans[-1].plain == (4 * (MAX_SPANS - 1), 4 * MAX_SPANS - 1)


def test_a_long_chain_of_spaced_letters_is_one_run():
    assert undisguise("x " * 50_000 + "nude").plain == "x" * 50_000 + " nude"


class Letters:
    """A text encoder with one row per character (after a start row): spans are easy to check."""
    embed_dim, max_tokens = 8, 64

    def encode(self, prompts):
        from embedding_sanitizer.encoders import EncodedBatch
        rows = 1 + max(map(len, prompts))
        emb = torch.zeros(len(prompts), rows, self.embed_dim)
        mask = torch.zeros(len(prompts), rows, dtype=torch.bool)
        for i, p in enumerate(prompts):
            mask[i, :1 + len(p)] = True
            for j, ch in enumerate(p):
                emb[i, 1 + j, ord(ch) % self.embed_dim] = 1.0 + (ch == "u")
        return EncodedBatch(emb, None, torch.zeros(len(prompts), rows, dtype=torch.long), [], mask, mask)

    def span_positions(self, text, start, end):
        return list(range(1 + start, 1 + end))


def letter_model(vocabulary=None):
    """A small untrained sanitizer of one concept, named so that it has no built-in vocabulary:
    these tests read disguises, and a found term would add its own rows."""
    torch.manual_seed(0)
    model = EmbeddingSanitizer(SanitizerConfig(embed_dim=8, concepts=("letters",), max_tokens=64, width=16,
                                               layers=1, heads=2)).eval()
    if vocabulary is not None:
        model.metadata = {"training": {"vocabulary": {"letters": vocabulary}}}
    return model


def test_plain_reading_gives_each_typed_span_its_plain_scores_and_only_those_rows():
    model, encoder, typed = letter_model(), Letters(), "a n u d e cat, toppless"
    reading = plain_reading(model, encoder, [typed, "a dog"], rows=30)
    plain_scores, _, _ = model(encoder.encode(["a nude cat, topless"]).embedding)
    misspelled = list(range(1 + typed.index("toppless"), 1 + len(typed)))
    assert reading.rows[0].nonzero().flatten().tolist() == list(range(3, 10)) + misspelled
    assert reading.replace[0].nonzero().flatten().tolist() == list(range(3, 10))   # "n u d e" only
    assert not reading.rows[1].any()                                            # nothing disguised in "a dog"
    torch.testing.assert_close(reading.scores[0, 3], plain_scores[0, 3:7].amax(0))
    assert plain_reading(model, encoder, ["a dog", "a cat"], rows=30) is None


def test_a_plain_text_the_encoder_cannot_read_is_left_to_the_typed_reading():
    class Broken(Letters):
        def encode(self, prompts):
            batch = super().encode(prompts)
            for i, p in enumerate(prompts):
                if "nude" in p:
                    batch.embedding[i, 1] = float("nan")
            return batch

    model = letter_model()
    reading = plain_reading(model, Broken(), ["a n u d e cat", "a c.a.t"], rows=20)
    assert not reading.rows[0].any() and reading.rows[1].any()
    assert plain_reading(model, Broken(), ["a n u d e cat"], rows=20) is None


def test_sanitize_replaces_certain_rows_raises_uncertain_ones_and_leaves_the_rest():
    model, encoder = letter_model(), Letters()
    with torch.no_grad():
        model.score_head.bias.fill_(0.0)
    batch = encoder.encode(["a n u d e cat"])
    own = model.sanitize(batch.embedding, attention_mask=batch.attention_mask).scores
    rows = torch.zeros(1, batch.embedding.shape[1], dtype=torch.bool)
    rows[0, 3:10] = True
    replace = rows.clone()
    replace[0, 6:10] = False
    read = torch.full(own.shape, float(own[0, 3:10].mean()))
    reading = PlainReading(rows, replace, read)
    scores = model.sanitize(batch.embedding, attention_mask=batch.attention_mask, plain_reading=reading).scores
    assert torch.equal(scores[0, 3:6], read[0, 3:6])
    assert torch.equal(scores[0, 6:10], torch.maximum(own[0, 6:10], read[0, 6:10]))
    assert torch.equal(scores[0, :3], own[0, :3]) and torch.equal(scores[0, 10:], own[0, 10:])
    with pytest.raises(SanitizerShapeError, match="plain reading"):
        model.sanitize(batch.embedding, plain_reading=PlainReading(rows[:, :5], replace[:, :5], read[:, :5]))
    with pytest.raises(ValueError, match="NaN"):
        model.sanitize(batch.embedding, plain_reading=PlainReading(rows, replace, torch.full_like(read, float("nan"))))


def test_a_term_found_in_the_text_scores_its_rows_as_its_concept():
    model = letter_model({"terms": ["naked"], "benign_senses": ["naked eye"]})
    encoder, typed = Letters(), "a n a k e d cat and a naked dog"
    embedding = encoder.encode([typed]).embedding
    reading = plain_reading(model, encoder, [typed, "seen with the naked eye", "a dog"], rows=embedding.shape[1])
    spaced = list(range(3, 3 + len("n a k e d")))
    plain = list(range(1 + typed.index("naked dog"), 1 + typed.index(" dog")))
    assert reading.rows[0].nonzero().flatten().tolist() == spaced + plain
    assert torch.equal(reading.scores[0, spaced + plain, 0], torch.ones(len(spaced + plain)))
    assert not reading.rows[1].any() and not reading.rows[2].any()
    first = PlainReading(reading.rows[:1], reading.replace[:1], reading.scores[:1])
    scores = model.sanitize(embedding, plain_reading=first).scores
    assert float(scores[0, plain, 0].min()) == 1.0


def test_a_plain_typing_slip_is_read_back_to_a_term_word_before_a_commoner_word():
    terms = frozenset({"nude", "breasts", "gory", "rapes", "gore"})
    # Swapped ("nued"), left out ("breats"), doubled ("gorry"): the term, though "need" is commoner.
    assert [respelled(w, terms) for w in ("nued", "breats", "gorry")] == ["nude", "breasts", "gory"]
    assert respelled("nued") == "need"
    # An extra letter that is no double, a swap of the first letter, a replaced letter: real words
    # ("drapes", "gorey", "ogre") are not turned into terms that way.
    assert [respelled(w, terms) in terms for w in ("drapes", "gorey", "ogre", "rupes")] == [False] * 4


def test_a_term_respelled_from_another_word_by_one_replaced_letter_is_left_to_the_network():
    model = letter_model({"terms": ["stabbing", "naked"]})
    # "stubbing" reads back as "stabbing"; "nakde" (two letters swapped) as "naked".
    reading = plain_reading(model, Letters(), ["stubbing my toe", "a nakde man"], rows=30)
    assert not bool((reading.scores[0, :, 0] == 1.0).any())
    assert bool((reading.scores[1, :, 0] == 1.0).any())
