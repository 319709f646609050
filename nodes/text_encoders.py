"""ComfyUI's text encoders (CLIP objects, whatever they hold) as the engine sees them.

A CLIP object's `tokenize(text, return_word_ids=True)` gives, per tokenizer ("l", "g",
"t5xxl", "t5base", ...), sections of `(token, weight, word_id)`; word_id 0 marks the
specials and padding. The conditioning's rows come from one of those streams (SD 1.x, SDXL:
"l"; Flux: "t5xxl"; Stable Audio: "t5base") or from a CLIP stream followed by T5 rows (SD3).
Everything here goes through the CLIP object's public methods; no encoder math is redone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import comfy.sd1_clip

from embedding_sanitizer import families
from embedding_sanitizer.conditioning import valid_rows
from embedding_sanitizer.encoders import EncodedBatch, concat_batches, token_span

CLIP_STREAMS = ("l", "g")
HIDDEN_PIECE = "\u2423"     # a SentencePiece word start that stands alone ("▁"), shown as ␣


def model_class(clip) -> str:
    # ComfyUI subclasses some encoders per load (SD3ClipModel_, FluxClipModel_).
    return type(clip.cond_stage_model).__name__.rstrip("_")


def clip_family(clip, embed_dim: int) -> str:
    # SD3's class holds CLIP-L, CLIP-G and T5-XXL only where they were loaded.
    parts = tuple(name for name, _ in clip.cond_stage_model.named_children())
    return families.comfy_family_id(model_class(clip), embed_dim, parts)


def row_streams(tokens: dict, rows: int) -> Optional[list[str]]:
    """The tokenizer streams whose tokens are the conditioning's `rows`, in row order.

    SD3 tokenizes for T5 even when no T5 is loaded, and SDXL's "g" repeats "l": a CLIP stream
    is preferred, then the others."""
    lengths = {key: sum(len(section) for section in sections) for key, sections in tokens.items()}
    order = sorted(lengths, key=lambda k: (k != "l", k in CLIP_STREAMS))
    for key in order:
        if lengths[key] == rows:
            return [key]
    first = order[0]
    for key in order[1:]:
        if key not in CLIP_STREAMS and lengths[first] + lengths[key] == rows:
            return [first, key]
    return None


@dataclass
class TokenRows:
    ids: list[int]
    labels: list[str]      # display text per row, "" for specials and padding
    real: list[bool]       # the prompt's own tokens


class TokenNames:
    """Display text for token ids of one ComfyUI tokenizer: words, not BPE / SentencePiece pieces."""

    def __init__(self, clip, stream: str):
        wrapper = clip.tokenizer
        self.tokenizer = getattr(wrapper, f"clip_{stream}", None) or getattr(wrapper, stream, None)
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = self._name(token_id)
        return self.cache[token_id]

    def _name(self, token_id: int) -> str:
        library = getattr(self.tokenizer, "tokenizer", None)
        try:      # the library's own decoding undoes "</w>", "▁", byte-level "Ġ" alike
            text = library.decode([token_id])
        except Exception:
            piece = (getattr(self.tokenizer, "inv_vocab", None) or {}).get(token_id, token_id)
            text = str(piece).replace("</w>", "").replace("\u2581", " ").replace("\u0120", " ")
        return text.strip() or HIDDEN_PIECE


def token_rows(clip, tokens: dict, rows: int, names: Optional[dict] = None) -> Optional[TokenRows]:
    """Ids, labels and the real-token flag for each conditioning row, or None when the rows
    cannot be matched to the tokens (another text, or an encoder whose rows are its own)."""
    streams = row_streams(tokens, rows)
    if streams is None:
        return None
    names = {} if names is None else names
    ids, labels, real = [], [], []
    for stream in streams:
        name = names.setdefault(stream, TokenNames(clip, stream))
        for section in tokens[stream]:
            for item in section:
                token, word_id = item[0], (item[2] if len(item) > 2 else 1)
                is_id = isinstance(token, int)
                ids.append(token if is_id else 0)
                real.append(word_id != 0)
                labels.append("" if word_id == 0 else (name(token) if is_id else "<embedding>"))
    return TokenRows(ids, labels, real)


def labels_for(clip, text: str, rows: int):
    """(labels, real) for the rows of `text` encoded by `clip`, or None."""
    found = token_rows(clip, clip.tokenize(text, return_word_ids=True), rows)
    return None if found is None else (found.labels, found.real)


class ComfyTextEncoder:
    """The engine's TextEncoder protocol over a ComfyUI CLIP object, of any kind ComfyUI loads.

    Prompts are encoded many per call: ComfyUI encodes the sections of one call as a batch, so
    the sections of several prompts are given at once and the rows are cut apart again. The
    first call of each token layout is checked against encoding its first prompt alone; a
    layout that does not match is encoded one prompt per call.

    A prompt's tokens are those of every tokenizer its rows come from, in row order (SD3 with T5:
    CLIP's, then T5's), so a term is found, and labelled, in each."""

    def __init__(self, clip, on_encoded: Optional[Callable[[int], None]] = None):
        self.clip = clip
        self.on_encoded = on_encoded
        self._names: dict = {}
        self._layouts: dict = {}           # token layout -> whether batching reproduces it
        probe = clip.tokenize("", return_word_ids=True)
        cond, pooled = self._encode(probe)
        rows, self.embed_dim = cond.shape[1], cond.shape[2]
        self.streams = row_streams(probe, rows)
        self.family = clip_family(clip, self.embed_dim)
        self.name = f"ComfyUI {model_class(clip)}"
        if self.streams is None:
            raise ValueError(f"Train Embedding Sanitizer: cannot match the rows of {self.name} to its "
                             f"tokenizers ({ {k: sum(map(len, v)) for k, v in probe.items()} } tokens, "
                             f"{rows} rows); this text encoder is not supported for training yet")
        known = families.get(self.family)
        read = known.pooled_dim if known else 0
        self.pooled_dim = read if pooled is not None and pooled.shape[-1] == read else 0
        self.chunk_length = known.chunk_length if known else 0
        self.max_tokens = self.chunk_length or (known.window if known else 0) or rows
        first_rows, _ = self._real_tokens("a")[0]
        self.leading_specials = first_rows[0] if first_rows else 0

    def _real_tokens(self, text: str) -> list[tuple[list[int], list[int]]]:
        """Per row stream (SD3 with T5: CLIP, then T5): the rows of the prompt's own tokens, and their ids."""
        tokens = self.clip.tokenize(text, return_word_ids=True)
        streams, offset = [], 0
        for stream in self.streams:
            items = [item for section in tokens[stream] for item in section]
            real = [(offset + row, item[0] if isinstance(item[0], int) else 0)
                    for row, item in enumerate(items) if (item[2] if len(item) > 2 else 1) != 0]
            streams.append(([row for row, _ in real], [token for _, token in real]))
            offset += len(items)
        return streams

    def token_ids(self, text: str) -> list[int]:
        return [token for _, ids in self._real_tokens(text) for token in ids]

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        positions = []
        tokenized = (self._real_tokens(t) for t in (text, text[:start], text[:end]))
        for (rows, ids), (_, before), (_, through) in zip(*tokenized):
            span = token_span(ids, before, through)
            if span is None:
                return []
            positions += [rows[i] for i in span]
        return positions

    @torch.no_grad()
    def _encode(self, tokens: dict, capture: Optional[list] = None):
        pairs = {k: [[(t[0], t[1]) for t in section] for section in v] for k, v in tokens.items()}
        hooks = []
        if capture is not None:
            for module in self.clip.cond_stage_model.modules():
                if isinstance(module, comfy.sd1_clip.SDClipModel):
                    hooks.append(module.register_forward_hook(
                        lambda _m, _args, out: capture.append(out[1] if isinstance(out, tuple) else None)))
        try:
            cond, pooled = self.clip.encode_from_tokens(pairs, return_pooled=True)
        finally:
            for hook in hooks:
                hook.remove()
        return cond.float().cpu(), (pooled.float().cpu() if pooled is not None else None)

    def encode(self, prompts: Sequence[str]) -> EncodedBatch:
        tokenized = [self.clip.tokenize(p, return_word_ids=True) for p in prompts]
        layouts: dict = {}
        for i, tokens in enumerate(tokenized):
            layout = tuple((k, tuple(len(s) for s in v)) for k, v in tokens.items())
            layouts.setdefault(layout, []).append(i)
        parts: dict[int, EncodedBatch] = {}
        for layout, members in layouts.items():
            group = [tokenized[i] for i in members]
            batched = self._encode_group(layout, group) if len(group) > 1 else None
            for i, encoded in zip(members, batched or [self._encode_one(t) for t in group]):
                parts[i] = encoded
            if self.on_encoded:
                self.on_encoded(len(members))
        return concat_batches([parts[i] for i in range(len(prompts))])

    def _encode_one(self, tokens: dict) -> EncodedBatch:
        cond, pooled = self._encode(tokens)
        return self._batch(tokens, cond, pooled)

    def _encode_group(self, layout, group: list[dict]) -> Optional[list[EncodedBatch]]:
        if self._layouts.get(layout) is False:
            return None
        count = len(group)
        merged = {k: [section for tokens in group for section in tokens[k]] for k in group[0]}
        captured: list = []
        cond, pooled = self._encode(merged, captured)
        per_prompt = self._rows_per_prompt(cond[0], group[0], count)
        per_pooled = self._pooled_per_prompt(pooled, captured, count)
        if per_prompt is None or (self.pooled_dim and per_pooled is None):
            self._layouts[layout] = False
            return None
        if layout not in self._layouts:
            alone, alone_pooled = self._encode(group[0])
            same = _close(per_prompt[0], alone[0]) and (
                not self.pooled_dim or _close(per_pooled[0], alone_pooled[0]))
            self._layouts[layout] = same
            if not same:
                return None
        return [self._batch(tokens, per_prompt[i][None], per_pooled[i][None] if per_pooled is not None else None)
                for i, tokens in enumerate(group)]

    def _rows_per_prompt(self, cond: torch.Tensor, tokens: dict, count: int) -> Optional[list]:
        """Each prompt's rows: a row stream gives the rows of every prompt in turn, then the next
        stream follows (SD3: the CLIP rows of all prompts, then their T5 rows)."""
        lengths = [sum(len(section) for section in tokens[stream]) for stream in self.streams]
        if count * sum(lengths) != cond.shape[0]:
            return None
        parts, offset = [], 0
        for length in lengths:
            parts.append(cond[offset:offset + count * length].reshape(count, length, -1))
            offset += count * length
        return list(torch.cat(parts, dim=1))

    @staticmethod
    def _pooled_per_prompt(pooled, captured: list, count: int) -> Optional[list]:
        """Each prompt's pooled vector: ComfyUI returns only the first section's, so it is taken from
        the encoders' own batch outputs (the one, or the concatenation, that gives ComfyUI's)."""
        if pooled is None:
            return None
        outputs = [c.float().cpu() for c in captured if torch.is_tensor(c)]
        firsts = [c[:: c.shape[0] // count][:count] for c in outputs if c.shape[0] >= count]
        candidates = firsts + ([torch.cat(firsts, dim=-1)] if len(firsts) > 1 else [])
        for candidate in candidates:
            if candidate.shape[-1] == pooled.shape[-1] and _close(candidate[0], pooled[0]):
                return list(candidate)
        return None

    def _batch(self, tokens: dict, cond: torch.Tensor, pooled) -> EncodedBatch:
        found = token_rows(self.clip, tokens, cond.shape[1], self._names)
        real = torch.tensor([found.real], dtype=torch.bool)
        valid = valid_rows(cond)
        return EncodedBatch(cond, pooled if self.pooled_dim else None, torch.tensor([found.ids]),
                            [found.labels], real, torch.ones_like(real) if valid is None else valid)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-3 * b.abs().max() + 1e-5)
