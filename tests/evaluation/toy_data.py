"""Test material for the harness that needs no weights and no data: a toy text encoder and
CSV files shaped like the real prompt sets."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Sequence

import torch

from embedding_sanitizer.encoders import EncodedBatch, token_span

I2P_COLUMNS = ["prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage"]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


class ToyEncoder:
    """A tiny deterministic text encoder implementing the TextEncoder protocol. Words are tokens
    (hashed into a random table); each position also carries the mean of the prompt's tokens,
    so leaving a word out changes the pooled vector, as in a real contextual encoder."""
    family = "toy"
    name = "toy word-hash encoder"
    pooled_dim = 0
    chunk_length = 0
    leading_specials = 1

    def __init__(self, embed_dim: int = 32, max_tokens: int = 64, seed: int = 0):
        self.embed_dim = embed_dim
        self.max_tokens = max_tokens
        self.seed = seed
        self._vocab: dict[str, int] = {"[CLS]": 0, "[SEP]": 1, "[PAD]": 2}

    def _id(self, word: str) -> int:
        return self._vocab.setdefault(word.lower(), len(self._vocab))

    def token_ids(self, text: str) -> list[int]:
        return [self._id(w) for w in text.split()]

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        span = token_span(*(self.token_ids(t) for t in (text, text[:start], text[:end])))
        return [self.leading_specials + i for i in span or () if self.leading_specials + i < self.max_tokens - 1]

    def vector(self, token: str) -> torch.Tensor:
        h = int(hashlib.md5(f"{self.seed}:{token.lower()}".encode()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(h)
        return torch.randn(self.embed_dim, generator=g)

    def encode(self, prompts: Sequence[str]) -> EncodedBatch:
        words = [p.split()[: self.max_tokens - 2] for p in prompts]
        length = max(len(w) for w in words) + 2
        emb = torch.zeros(len(prompts), length, self.embed_dim)
        ids = torch.full((len(prompts), length), 2, dtype=torch.long)
        real = torch.zeros(len(prompts), length, dtype=torch.bool)
        att = torch.zeros(len(prompts), length, dtype=torch.bool)
        tokens = []
        for b, ws in enumerate(words):
            seq = ["[CLS]"] + ws + ["[SEP]"]
            vecs = torch.stack([self.vector(t) for t in seq])
            context = vecs[1:-1].mean(0) if ws else torch.zeros(self.embed_dim)
            emb[b, : len(seq)] = vecs + 0.5 * context
            ids[b, : len(seq)] = torch.tensor([self._id(t) for t in seq])
            real[b, 1: 1 + len(ws)] = True
            att[b, : len(seq)] = True
            tokens.append([""] + ws + [""] + [""] * (length - len(seq)))
        return EncodedBatch(emb, None, ids, tokens, real, att)
