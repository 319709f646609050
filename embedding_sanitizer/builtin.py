"""The built-in sanitizer: no weight file, any text encoder, no training.

A trained sanitizer reads one encoder's output and must be trained for it. The built-in one reads
the prompt's TEXT instead, with the embedded MiniLM sanitizer (weights/minilm-nudity-violence), as
the hosts read it for disguises (disguise.sanitize_texts: "n u d e" is read as "nude"), and erases
in the host's own embedding space by asking the host's encoder what the prompt would be without
the flagged words:

1. Judge: the MiniLM sanitizer gates MiniLM's tokens at the user's intensity and threshold (the
   gate formula of model.EmbeddingSanitizer); the tokens whose gate is above 0 become character
   spans of the text (whole words; neighbouring flagged words one span).
2. Anchor text: each span is replaced by the first anchor of its strongest concept
   (lexicon: "nude" -> "clothed", "gore" -> "peaceful"), and the host encodes that text once
   more. A prompt with no flagged span is never encoded again and comes back bit-identical.
3. Move: every valid row of the host's embedding moves toward the anchor encoding's row by the
   prompt's largest span gate g, E' = E + g * (E_anchor - E), and so does the pooled vector. In
   a contextual encoder the other rows carry the concept too; moving them by the trained
   network's spread share (model.GATE_SPREAD) instead left more for the harness's probe to find
   (benchmarks/builtin.py, I2P nudity: 25% still judged unsafe against 20%; char-substitution:
   15% against 5%), and only flagged prompts move at all. Rows before the spans are the same in
   both encodings of a causal encoder (CLIP), so there it changes the rows from the first span on.
   Rows are aligned through the spans (align_rows) where the anchor has another token count.

Intensity and threshold mean what they mean for a trained file: 0 returns the input bit for bit,
1 gates a flagged word by its score, above 1 further, the gate capped at 1 (the anchor encoding
itself). Plain PyTorch; the host's encoder is anything with `encode(prompts)` and
`span_positions(text, start, end)` (encoders.TextEncoder).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from . import validation
from .disguise import sanitize_texts
from .lexicon import builtin_concepts
from .model import EmbeddingSanitizer, SanitizeResult
from .weights import default_weights_path, load_sanitizer

# What hosts show and store for it: the first entry of ComfyUI's loader list, A1111's weights value.
BUILTIN_NAME = "built-in (any text encoder)"
FAMILY = "builtin"
# Flagged words separated only by these are one span ("bloody decapitated", "n u d e", "g.o.r.e"
# -> one anchor), so that a phrase is not replaced word by word with a string of anchors. Commas and
# the weighting syntax's "(word:1.2)" stay: they belong to the host's reading of the prompt.
_JOINERS = re.compile(r"[\s.\-_]*")
_WORD_CHAR = re.compile(r"\w")
_LETTER = re.compile(r"[^\W\d_]")


class NoTextError(ValueError):
    """The built-in sanitizer was given a conditioning without the text it was encoded from."""


def no_text_message(where: str) -> str:
    return (f"the built-in sanitizer reads the prompt's text, and {where} has none; "
            f"a sanitizer trained for this text encoder needs no text")


@dataclass(frozen=True)
class BuiltinConfig:
    """What hosts read of a sanitizer's config; the built-in one fits every encoder."""
    concepts: tuple[str, ...]
    encoder_family: str = FAMILY
    encoder_name: str = BUILTIN_NAME
    pooled_dim: int = 0         # no fixed size: it moves whatever pooled vector the host gives
    chunk_length: int = 0


@dataclass(frozen=True)
class FlaggedSpan:
    start: int                  # characters of the text
    end: int
    concept: str                # the strongest enabled concept over the span's tokens
    scores: torch.Tensor        # (C,) float32: the largest judge score per concept over the span
    gate: float                 # the largest judge gate over the span


class BuiltinSanitizer(nn.Module):
    """The surface hosts use for a trained sanitizer (config, concepts, concept_mask, sanitize),
    but `sanitize` also needs the prompt's `text` and the host's `encoder` that made the embedding.

    `judge` and `judge_encoder` default to the embedded MiniLM sanitizer and its encoder; the
    encoder loads on first use, so a host that never sanitizes with it never pays for it."""

    def __init__(self, judge: Optional[EmbeddingSanitizer] = None, judge_encoder=None):
        super().__init__()
        self.judge = judge if judge is not None else load_sanitizer(default_weights_path())
        self._judge_encoder = judge_encoder
        self.config = BuiltinConfig(tuple(self.judge.concepts))
        known = builtin_concepts()
        missing = [c for c in self.judge.concepts if c not in known]
        if missing:
            raise ValueError(f"the built-in sanitizer has no anchors for the concept(s) {missing}")
        self.anchors = {c: known[c].anchors[0] for c in self.judge.concepts}

    @property
    def concepts(self) -> tuple[str, ...]:
        return self.config.concepts

    def concept_mask(self, concepts: Optional[Iterable[str]]) -> torch.Tensor:
        return self.judge.concept_mask(concepts)

    @property
    def judge_encoder(self):
        if self._judge_encoder is None:
            from .encoders import MiniLMEncoder
            self._judge_encoder = MiniLMEncoder("cpu")
        return self._judge_encoder

    # ------------------------------------------------------------------ judging the text

    def flagged_spans(self, text: str, *, intensity: float = 1.0, threshold: float = 0.0,
                      concepts: Optional[Iterable[str]] = None) -> list[FlaggedSpan]:
        """The spans of `text` the judge gates above 0 at this intensity and threshold, in order."""
        encoded, result = sanitize_texts(self.judge, self.judge_encoder, [text], intensity=intensity,
                                         threshold=threshold, concepts=concepts)
        mask = self.concept_mask(concepts)
        # The judge's own gates before its spread: which tokens it flags, not how far it moves the rest.
        gates = EmbeddingSanitizer.gates_from_scores(result.scores, mask, intensity, threshold,
                                                     encoded.attention_mask)[0]
        offsets = self.judge_encoder.tokenizer(text, truncation=True, max_length=self.judge_encoder.max_tokens,
                                               return_offsets_mapping=True)["offset_mapping"]
        scores = result.scores[0].float().masked_fill(~mask, 0.0)
        # Flagged punctuation and numbers ("(nude:1.2)" flags its ":", "1.2" and ")" by context) are
        # the host's syntax, not words of the concept.
        pieces = [(*_whole_word(text, *offsets[row]), row) for row in gates.nonzero().flatten().tolist()
                  if row < len(offsets) and _LETTER.search(text, *offsets[row])]
        spans: list[list] = []
        for start, end, row in sorted(pieces):
            if spans and _JOINERS.fullmatch(text, spans[-1][1], max(start, spans[-1][1])):
                spans[-1][1] = max(spans[-1][1], end)
                spans[-1][2].append(row)
            else:
                spans.append([start, end, [row]])
        out = []
        for start, end, rows in spans:
            span_scores = scores[rows].amax(0)
            out.append(FlaggedSpan(start, end, self.concepts[int(span_scores.argmax())], span_scores,
                                   float(gates[rows].max())))
        return out

    def anchor_text(self, text: str, spans: Sequence[FlaggedSpan]) -> tuple[str, list[tuple[int, int]]]:
        """`text` with each span replaced by its concept's anchor, and where each anchor landed."""
        pieces, placed, cursor, length = [], [], 0, 0
        for span in spans:
            anchor = self.anchors[span.concept]
            pieces += [text[cursor:span.start], anchor]
            length += span.start - cursor
            placed.append((length, length + len(anchor)))
            length += len(anchor)
            cursor = span.end
        pieces.append(text[cursor:])
        return "".join(pieces), placed

    # ------------------------------------------------------------------ erasing in the host's space

    @torch.no_grad()
    def sanitize(self, embedding: torch.Tensor, pooled: Optional[torch.Tensor] = None, *,
                 text: Optional[str], encoder, intensity: float = 1.0, threshold: float = 0.0,
                 concepts: Optional[Iterable[str]] = None,
                 attention_mask: Optional[torch.Tensor] = None) -> SanitizeResult:
        """`embedding` (B, T, D) and `pooled` (B, P) are `encoder`'s encoding of `text` (B images of
        one prompt). Raises NoTextError without a text: there is nothing to judge."""
        intensity, threshold = validation.intensity(intensity), validation.threshold(threshold)
        concepts = validation.concepts(concepts, self.concepts)
        if not isinstance(text, str):
            raise NoTextError(no_text_message("this conditioning"))
        if embedding.dim() != 3 or not embedding.is_floating_point() or 0 in embedding.shape:
            raise ValueError(f"the built-in sanitizer needs a float (batch, tokens, dim) embedding, "
                             f"got {embedding.dtype} {tuple(embedding.shape)}")
        validation.finite_input(embedding, pooled)
        batch, rows = embedding.shape[:2]
        scores = torch.zeros(batch, rows, len(self.concepts))
        gates = torch.zeros(batch, rows)
        spans = self.flagged_spans(text, intensity=intensity, threshold=threshold,
                                   concepts=concepts) if intensity > 0 else []
        span_rows = [[r for r in encoder.span_positions(text, s.start, s.end) if r < rows] for s in spans]
        if not any(span_rows):
            return SanitizeResult(embedding.clone(), None if pooled is None else pooled.clone(),
                                  scores.to(embedding.device), gates.to(embedding.device), self.concepts)
        anchored, placed = self.anchor_text(text, spans)
        target = encoder.encode([anchored])
        pairs = []
        for span, own, where in zip(spans, span_rows, placed):
            scores[:, own] = span.scores
            pairs.append((own, encoder.span_positions(anchored, *where)))
        gates[:] = max(span.gate for span, own in zip(spans, span_rows) if own)
        if attention_mask is not None:
            gates = gates.masked_fill(~attention_mask.to("cpu", torch.bool).expand(batch, rows), 0.0)
        index = align_rows(rows, target.embedding.shape[1], pairs)
        moved = _toward(embedding, target.embedding[:, index], gates)
        new_pooled = None if pooled is None else pooled.clone()
        if pooled is not None and target.pooled is not None and target.pooled.shape[-1] == pooled.shape[-1]:
            new_pooled = _toward(pooled.unsqueeze(1), target.pooled.unsqueeze(1), gates.amax(dim=1, keepdim=True)).squeeze(1)
        validation.require_finite("the sanitized embedding", moved, new_pooled)
        return SanitizeResult(moved, new_pooled, scores.to(embedding.device), gates.to(embedding.device),
                              self.concepts)


def _whole_word(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's characters widened to its word: a flagged word piece ("nu" of "nude") replaces the word."""
    while start > 0 and _WORD_CHAR.match(text[start - 1]):
        start -= 1
    while end < len(text) and _WORD_CHAR.match(text[end]):
        end += 1
    return start, end


def _runs(rows: Sequence[int]) -> list[list[int]]:
    """Sorted rows cut where they jump by more than a chunk boundary (EOS + BOS) or another stream."""
    out: list[list[int]] = []
    for r in sorted(set(rows)):
        if out and r - out[-1][-1] <= 3:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def align_rows(rows: int, target_rows: int, spans: Sequence[tuple[Sequence[int], Sequence[int]]]) -> torch.Tensor:
    """For each of `rows` rows of an embedding, the row of the anchor encoding it moves toward.

    `spans`: per flagged span, (its rows in the embedding, its anchor's rows in the anchor
    encoding). Rows before the first span align one to one; a span's rows spread evenly over its
    anchor's rows; rows after a span shift by the difference in length; padding therefore aligns
    to padding. A span found in several row streams (SD3: CLIP rows, then T5 rows) is aligned in
    each; where the streams cannot be paired, the span counts as one run from its first to last row."""
    pairs = []
    for own, anchor in spans:
        own_runs, anchor_runs = _runs(own), _runs(anchor)
        if not own_runs or not anchor_runs:
            continue
        if len(own_runs) != len(anchor_runs):
            own_runs = [list(range(own_runs[0][0], own_runs[-1][-1] + 1))]
            anchor_runs = [list(range(anchor_runs[0][0], anchor_runs[-1][-1] + 1))]
        pairs += zip(own_runs, anchor_runs)
    index = torch.arange(rows)
    shift, cursor = 0, 0
    for own, anchor in sorted(pairs):
        if own[0] < cursor:          # overlapping spans: the first one's alignment stands
            continue
        index[cursor:own[0]] += shift
        for i, row in enumerate(own):
            index[row] = anchor[i * len(anchor) // len(own)]
        shift, cursor = anchor[-1] - own[-1], own[-1] + 1
    index[cursor:] += shift
    return index.clamp(0, target_rows - 1)


def _toward(values: torch.Tensor, target: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """values + gates * (target - values) in float32, back in the values' dtype and device; rows
    with gate 0 keep their exact bits."""
    target = target.to(values.device, torch.float32).expand_as(values)
    gates = gates.to(values.device, torch.float32).unsqueeze(-1)
    moved = values.float() + gates * (target - values.float())
    return torch.where(gates > 0, moved.to(values.dtype), values)


def is_builtin(model) -> bool:
    return isinstance(model, BuiltinSanitizer)


_shared: list = []
_shared_lock = threading.Lock()


def shared_builtin() -> BuiltinSanitizer:
    """The process's one built-in sanitizer, made on first use: it loads MiniLM and the embedded
    weights, which every host's loader, setting and operator fallback can share."""
    with _shared_lock:
        if not _shared:
            _shared.append(BuiltinSanitizer())
        return _shared[0]
