"""The built-in sanitizer (embedding_sanitizer/builtin.py) over a tiny fake host encoder: one row
per word, so an anchor of another word count shifts the rows after it."""

from __future__ import annotations

import re
import zlib

import pytest
import torch

from embedding_sanitizer.builtin import BuiltinSanitizer, FlaggedSpan, NoTextError, align_rows
from embedding_sanitizer.encoders import EncodedBatch

ROWS, DIM = 12, 8


class WordEncoder:
    """Row 0 is BOS, then one row per word (its own random vector plus a running sum, so later rows
    carry earlier words like a causal encoder), then padding rows that all equal one vector."""

    def __init__(self):
        self.encoded: list[str] = []

    @staticmethod
    def word_vector(word: str) -> torch.Tensor:
        return torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(word.encode())))

    def encode(self, prompts):
        self.encoded += list(prompts)
        rows = []
        for prompt in prompts:
            running, out = torch.zeros(DIM), [torch.full((DIM,), 0.5)]
            for word in re.findall(r"\S+", prompt)[:ROWS - 1]:
                running = running + self.word_vector(word)
                out.append(running.clone())
            out += [torch.full((DIM,), -1.0)] * (ROWS - len(out))
            rows.append(torch.stack(out))
        embedding = torch.stack(rows)
        valid = torch.ones(embedding.shape[:2], dtype=torch.bool)
        return EncodedBatch(embedding, embedding.mean(1), torch.zeros(embedding.shape[:2], dtype=torch.long),
                            [], valid, valid)

    def span_positions(self, text, start, end):
        return [1 + i for i, m in enumerate(re.finditer(r"\S+", text)) if m.start() < end and start < m.end()]


class FixedJudge(BuiltinSanitizer):
    """Flags the given words, as the MiniLM judge would, without loading MiniLM."""

    def __init__(self, flagged: dict[str, float]):
        super().__init__()
        self.flagged = flagged

    def flagged_spans(self, text, *, intensity=1.0, threshold=0.0, concepts=None):
        out = []
        for m in re.finditer(r"\S+", text):
            score = self.flagged.get(m.group())
            gate = min(1.0, intensity * score) if score is not None else 0.0
            if gate > 0 and score >= threshold:
                out.append(FlaggedSpan(m.start(), m.end(), "nudity", torch.tensor([score, 0.0]), gate))
        return out


def encoded(encoder, text, batch=1):
    found = encoder.encode([text])
    return found.embedding.expand(batch, -1, -1).clone(), found.pooled.expand(batch, -1).clone()


def test_intensity_zero_and_unflagged_prompts_are_bit_identical_and_not_encoded_again():
    encoder, builtin = WordEncoder(), FixedJudge({"nude": 0.9})
    for text, intensity in (("a nude woman", 0.0), ("a cat on a sofa", 1.0)):
        embedding, pooled = encoded(encoder, text)
        encoder.encoded.clear()
        result = builtin.sanitize(embedding, pooled, text=text, encoder=encoder, intensity=intensity)
        assert torch.equal(result.embedding, embedding) and torch.equal(result.pooled, pooled)
        assert result.embedding is not embedding and not result.gates.any()
        assert encoder.encoded == []


def test_rows_align_through_an_anchor_of_another_word_count_and_pooled_moves():
    encoder = WordEncoder()
    builtin = FixedJudge({"nude": 1.0})
    builtin.anchors["nudity"] = "fully clothed"        # two words for one: rows after shift by one
    text = "a nude woman on grass"
    embedding, pooled = encoded(encoder, text)
    before = embedding.clone()
    result = builtin.sanitize(embedding, pooled, text=text, encoder=encoder, intensity=1.0)
    target = encoder.encode(["a fully clothed woman on grass"]).embedding[0]
    assert torch.equal(embedding, before)                       # the input is never modified
    assert torch.equal(result.embedding[0, 1], embedding[0, 1])            # before the span: the same in both
    assert torch.allclose(result.embedding[0, 2], target[2])                # the span, gate 1: its anchor's row
    assert torch.allclose(result.embedding[0, 3], target[4])                # "woman" -> its row one further on
    assert torch.allclose(result.embedding[0, -1], embedding[0, -1])        # padding aligns to padding
    assert not torch.equal(result.pooled, pooled)
    assert result.scores.shape == (1, ROWS, 2) and float(result.scores[0, 2, 0]) == 1.0


def test_stronger_intensity_moves_further_with_the_gate_capped_at_one():
    encoder = WordEncoder()
    builtin = FixedJudge({"nude": 0.6})
    text = "a nude woman"
    embedding, pooled = encoded(encoder, text, batch=2)
    moves = [float((builtin.sanitize(embedding, pooled, text=text, encoder=encoder, intensity=i).embedding
                    - embedding).norm()) for i in (0.5, 1.0, 4.0)]
    assert 0 < moves[0] < moves[1] < moves[2]
    assert float(builtin.sanitize(embedding, pooled, text=text, encoder=encoder, intensity=4.0).gates.max()) == 1.0


def test_no_text_is_said_plainly():
    encoder, builtin = WordEncoder(), FixedJudge({})
    embedding, pooled = encoded(encoder, "a cat")
    with pytest.raises(NoTextError, match="reads the prompt's text"):
        builtin.sanitize(embedding, pooled, text=None, encoder=encoder)


def test_align_rows_spreads_a_long_span_over_a_short_anchor():
    # rows 2..4 hold a three-token word, its anchor one row: rows after shift back by two
    index = align_rows(10, 10, [([2, 3, 4], [2])])
    assert index.tolist() == [0, 1, 2, 2, 2, 3, 4, 5, 6, 7]


def test_the_minilm_judge_flags_words_and_disguises_as_character_spans():
    builtin = BuiltinSanitizer()
    text = "a n u d e woman and a nude man"
    spans = builtin.flagged_spans(text, intensity=1.0, threshold=0.5)
    assert [text[s.start:s.end] for s in spans][:1] == ["n u d e"]
    assert all(s.concept == "nudity" for s in spans)
    assert builtin.flagged_spans("a cat on a sofa", intensity=1.0, threshold=0.5) == []
    assert builtin.anchor_text("a nude man", [FlaggedSpan(2, 6, "violence", torch.zeros(2), 1.0)])[0] == \
        "a peaceful man"


class ByteLevelLLMEncoder:
    """A small causal LLM text encoder with a byte-level BPE tokenizer (as Llama 3, Qwen and
    Gemma-style encoders of newer image models have), random weights: rows are its last hidden
    states, one per BPE piece, found by the tokenizer's character offsets."""

    def __init__(self):
        from tokenizers import ByteLevelBPETokenizer
        from transformers import GPT2Config, GPT2Model

        corpus = ["a woman on a beach", "a photo of a cat sleeping on a sofa", "a red house by a lake"] * 20
        self.tokenizer = ByteLevelBPETokenizer()
        self.tokenizer.train_from_iterator(corpus, vocab_size=300, min_frequency=2, show_progress=False)
        torch.manual_seed(0)
        self.model = GPT2Model(GPT2Config(vocab_size=self.tokenizer.get_vocab_size(), n_positions=64, n_embd=32,
                                          n_layer=2, n_head=2)).eval()

    def encode(self, prompts):
        pieces = [self.tokenizer.encode(p) for p in prompts]
        width = max(len(p.ids) for p in pieces)
        ids = torch.tensor([p.ids + [0] * (width - len(p.ids)) for p in pieces])
        valid = torch.tensor([[i < len(p.ids) for i in range(width)] for p in pieces])
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=valid.long()).last_hidden_state
        return EncodedBatch(hidden, None, ids, [p.tokens for p in pieces], valid, valid)

    def span_positions(self, text, start, end):
        return [i for i, (a, b) in enumerate(self.tokenizer.encode(text).offsets) if a < end and start < b]


def test_an_llm_encoder_with_byte_level_pieces_is_erased_from_the_flagged_word_on():
    host, builtin = ByteLevelLLMEncoder(), BuiltinSanitizer()
    text = "a nude woman on a beach"
    found = host.encode([text])
    word = host.span_positions(text, 2, 6)
    assert len(word) > 1        # the tokenizer never saw "nude": it spells it in byte-level pieces
    result = builtin.sanitize(found.embedding, None, text=text, encoder=host, intensity=1.0, threshold=0.5)
    changed = (result.embedding != found.embedding).any(-1)[0]
    # A causal encoder's rows before the word are the same in both encodings; from it on they move.
    assert not changed[:word[0]].any() and changed[word[0]:].all()
    assert float(result.gates[0, word].min()) >= 0.5
    benign = host.encode(["a red house by a lake"])
    untouched = builtin.sanitize(benign.embedding, None, text="a red house by a lake", encoder=host,
                                 intensity=1.0, threshold=0.5)
    assert torch.equal(untouched.embedding, benign.embedding)
