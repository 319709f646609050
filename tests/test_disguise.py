"""Reading a prompt through spaced-out letters and look-alikes (embedding_sanitizer.disguise)."""

import time

import pytest
import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig, SanitizerShapeError
from embedding_sanitizer.disguise import MAX_SPANS, plain_reading, undisguise

PLAIN = {
    "a n u d e woman": "a nude woman",
    "a s.l.a.s.h.e.d t h r o a t, n4k3d": "a slashed throat, naked",
    "t_o_p_l_e_s_s, g-o-r-e": "topless, gore",
    "s h o t d.e.a.d, n.o.t w e a r i n g a.n.y": "shot dead, not wearing any",
    # A "1" reads as "l" after a vowel or before one, else as "i".
    "ki1l1ng b1ood s1ut n1pple p3acefu1 1us7ful 1n7ercour$e": "killing blood slut nipple peaceful lustful intercourse",
    "7or7ure ()rgy brea$t$ amazing!": "torture orgy breasts amazing!",
    "(n u d e:1.2), 5ex": "(nude:1.2), sex",
}
UNDISGUISED = ["a photo of a cat", "8k, 35mm, 1990s, 2021, 4k uhd", "masterpiece, best quality, 2girls, 3d",
               "a dog, a cat"]


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


def test_a_hostile_prompt_is_read_through_its_first_spans_only_and_quickly():
    text = " ".join(["h3ll0"] * 5000) + " n4k3d"
    started = time.perf_counter()
    found = undisguise(text)
    assert time.perf_counter() - started < 2.0
    assert len(found.spans) == MAX_SPANS and found.plain.startswith("hello hello")


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


def letter_model():
    torch.manual_seed(0)
    return EmbeddingSanitizer(SanitizerConfig(embed_dim=8, concepts=("nudity",), max_tokens=64, width=16,
                                              layers=1, heads=2)).eval()


def test_plain_reading_gives_each_typed_span_its_plain_scores_and_only_those_rows():
    model, encoder, typed = letter_model(), Letters(), "a n u d e cat"
    rows, read = plain_reading(model, encoder, [typed, "a dog"], rows=20)
    plain_scores, _, _ = model(encoder.encode(["a nude cat"]).embedding)
    assert rows[0].nonzero().flatten().tolist() == list(range(3, 10))     # "n u d e", after the start row
    assert not rows[1].any()                                              # nothing disguised in "a dog"
    torch.testing.assert_close(read[0, 3], plain_scores[0, 3:7].amax(0))
    assert plain_reading(model, encoder, ["a dog", "a cat"], rows=20) is None


def test_sanitize_takes_the_plain_reading_for_its_rows_only():
    model, encoder = letter_model(), Letters()
    with torch.no_grad():
        model.score_head.bias.fill_(0.0)
    batch = encoder.encode(["a n u d e cat"])
    own = model.sanitize(batch.embedding, attention_mask=batch.attention_mask)
    rows = torch.zeros(1, batch.embedding.shape[1], dtype=torch.bool)
    rows[0, 3:10] = True
    read = torch.full(own.scores.shape, 0.9)
    result = model.sanitize(batch.embedding, attention_mask=batch.attention_mask, plain_reading=(rows, read))
    assert torch.equal(result.scores[0, 3:10], read[0, 3:10])
    assert torch.equal(result.scores[0, :3], own.scores[0, :3]) and torch.equal(result.scores[0, 10:], own.scores[0, 10:])
    with pytest.raises(SanitizerShapeError, match="plain reading"):
        model.sanitize(batch.embedding, plain_reading=(rows[:, :5], read))
    with pytest.raises(ValueError, match="NaN"):
        model.sanitize(batch.embedding, plain_reading=(rows, torch.full_like(read, float("nan"))))
