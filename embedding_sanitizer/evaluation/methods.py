"""The compared methods, each a plug-in over the same encoder output.

Every method turns a list of prompts into, per prompt, the embedding the image model
would receive (sanitized or not) and, where the method has one, a harmfulness score.
The harness reduces these to per-prompt summaries (see `Summary`) right away, so a
sweep over a knob on thousands of prompts needs little memory.

1. NoDefence        - the encoder's output as it is.
2. KeywordFilter    - deletes listed unsafe words from the prompt text before encoding,
                      as existing ComfyUI / A1111 prompt filters do (same lexicon train terms).
3. SafreeProjection - training-free projection after SAFREE (Yoon et al., "SAFREE:
                      Training-Free and Adaptive Guard for Safe Text-to-Image and Video
                      Generation", arXiv 2410.12761, ICLR 2025), text-embedding part only,
                      implemented here from the paper's description.
4. SanitizerMethod  - this project's sanitizer at a given intensity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..disguise import plain_reading
from ..metrics import TOUCHED_GATE, prompt_scores
from ..model import DEFAULT_THRESHOLD, mean_pool

# ---------------------------------------------------------------- encodings


@dataclass
class Item:
    """One prompt's encoder output, trimmed to its valid positions."""
    embedding: torch.Tensor            # (T, D) float32
    pooled: Optional[torch.Tensor]     # (P,) or None
    real: torch.Tensor                 # (T,) bool, the prompt's own tokens
    attention: torch.Tensor            # (T,) bool, valid positions


def _split_batch(batch) -> list[Item]:
    items = []
    for b in range(batch.embedding.shape[0]):
        att = batch.attention_mask[b].bool()
        # Keep everything up to the last valid position (MiniLM pads on the right;
        # CLIP families have every position valid).
        last = int(att.nonzero().max()) + 1 if att.any() else 0
        items.append(Item(batch.embedding[b, :last].float().clone(),
                          None if batch.pooled is None else batch.pooled[b].float().clone(),
                          batch.real_mask[b, :last].bool().clone(), att[:last].clone()))
    return items


class EncodingCache:
    """Encodes prompts once per run (the unmodified encoder output all methods start from)."""

    def __init__(self, encoder, batch_size: int = 64):
        self.encoder = encoder
        self.batch_size = batch_size
        self.items: dict[str, Item] = {}
        self.encode_seconds = 0.0
        self.encoded = 0

    def get(self, texts: Sequence[str]) -> list[Item]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.items))
        if missing:
            self.items.update(zip(missing, encode_items(self.encoder, missing, self.batch_size, self)))
        return [self.items[t] for t in texts]


def encode_items(encoder, texts: Sequence[str], batch_size: int = 64, stats=None) -> list[Item]:
    """Encode in length-sorted batches (less padding), returning items in the input order."""
    import time
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[Optional[Item]] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        t0 = time.perf_counter()
        batch = encoder.encode([texts[i] for i in idx])
        if stats is not None:
            stats.encode_seconds += time.perf_counter() - t0
            stats.encoded += len(idx)
        for i, item in zip(idx, _split_batch(batch)):
            out[i] = item
    return out  # type: ignore[return-value]


def collate(items: Sequence[Item], multiple: int = 0):
    """Pad items to one batch: embedding (B, T, D), attention (B, T), real (B, T), pooled."""
    length = max(it.embedding.shape[0] for it in items)
    if multiple:
        length = -(-length // multiple) * multiple
    dim = items[0].embedding.shape[1]
    emb = torch.zeros(len(items), length, dim)
    att = torch.zeros(len(items), length, dtype=torch.bool)
    real = torch.zeros(len(items), length, dtype=torch.bool)
    for b, it in enumerate(items):
        n = it.embedding.shape[0]
        emb[b, :n], att[b, :n], real[b, :n] = it.embedding, it.attention, it.real
    pooled = None
    if items[0].pooled is not None:
        pooled = torch.stack([it.pooled for it in items])
    return emb, att, real, pooled


def item_pool(it: Item) -> torch.Tensor:
    return mean_pool(it.embedding[None], it.attention[None])[0]


# ---------------------------------------------------------------- per-prompt summary


@dataclass
class Summary:
    """What the metrics need of one method's output for a batch of prompts."""
    pooled: torch.Tensor               # (N, D) mean-pooled output embedding
    cosine: torch.Tensor               # (N,) cosine of output to original (flattened, valid positions)
    unchanged: torch.Tensor            # (N,) bool: output identical to the original
    score: Optional[torch.Tensor]      # (N,) prompt score, or None for methods without one
    touched: Optional[torch.Tensor] = None   # (N,) bool: any gate > 0.01 (sanitizer) / trigger (SAFREE)


def compare(original: Sequence[Item], output: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each output to its original over the union of their valid positions (a shorter
    sequence is zero-padded: what a changed length does to the image model is a change too),
    and whether the output is bit-identical."""
    cos, same = [], []
    for a, b in zip(original, output):
        n = max(a.embedding.shape[0], b.embedding.shape[0])
        x = torch.zeros(n, a.embedding.shape[1])
        y = torch.zeros(n, a.embedding.shape[1])
        x[: a.embedding.shape[0]] = a.embedding * a.attention.unsqueeze(-1)
        y[: b.embedding.shape[0]] = b.embedding * b.attention.unsqueeze(-1)
        c = torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0)
        if a.pooled is not None and b.pooled is not None:   # SDXL: the pooled vector counts too
            c = (c * n + torch.nn.functional.cosine_similarity(a.pooled, b.pooled, dim=0)) / (n + 1)
        cos.append(float(c))
        same.append(a.embedding.shape == b.embedding.shape and torch.equal(a.embedding, b.embedding)
                    and (a.pooled is None or torch.equal(a.pooled, b.pooled)))
    return torch.tensor(cos), torch.tensor(same)


class Method:
    name = "method"
    knob: Optional[str] = None        # the name of the setting swept in the trade-off plot
    has_score = False

    def label(self, setting) -> str:
        return self.name if setting is None else f"{self.name} ({self.knob}={setting:g})"

    def run(self, cache: EncodingCache, texts: Sequence[str], setting=None) -> Summary:
        raise NotImplementedError


def _summary(original, output, score=None, touched=None) -> Summary:
    cos, same = compare(original, output)
    pooled = torch.stack([item_pool(it) for it in output])
    return Summary(pooled, cos, same, score, touched)


class NoDefence(Method):
    name = "no defence"

    def run(self, cache, texts, setting=None):
        items = cache.get(texts)
        return _summary(items, items)


# ---------------------------------------------------------------- keyword filter


class KeywordFilter(Method):
    """Deletes listed terms (case-insensitive, whole words, longest first) from the prompt
    text before encoding. Score = 1 when any term matched, else 0."""
    name = "keyword filter"
    has_score = True

    def __init__(self, terms: Sequence[str], replacement: str = ""):
        self.terms = sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True)
        self.replacement = replacement
        parts = [r"\s+".join(re.escape(w) for w in t.split()) for t in self.terms]
        self.pattern = re.compile(r"(?<![\w])(?:" + "|".join(parts) + r")(?![\w])", re.IGNORECASE) \
            if parts else None

    def filter(self, text: str) -> tuple[str, bool]:
        if self.pattern is None:
            return text, False
        new, n = self.pattern.subn(self.replacement, text)
        if not n:
            return text, False
        new = re.sub(r"\s+", " ", new).strip()
        new = re.sub(r"\s+([,.;:!?])", r"\1", new)
        return new, True

    def run(self, cache, texts, setting=None):
        originals = cache.get(texts)
        filtered = [self.filter(t) for t in texts]
        outputs = cache.get([f for f, _ in filtered])
        score = torch.tensor([1.0 if hit else 0.0 for _, hit in filtered])
        return _summary(originals, outputs, score, score > 0)


# ---------------------------------------------------------------- SAFREE-style projection

# Toxic concept phrases spanning the subspace, in the manner of SAFREE's concept keyword
# lists (written here; deliberately distinct from prompts.CONCEPT_DESCRIPTIONS, which the
# erasure metric uses, and from the lexicon's terms).
SAFREE_PHRASES = {
    "nudity": ["Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography",
               "Erotic Art", "Lustful", "Seductive", "Orgasmic", "Libido", "Kinky",
               "Sexual Attraction", "Sexual Intercourse", "Sexual Pleasure", "Carnal Desires",
               "Naked Body", "Exposed Genitals"],
    "violence": ["Violence", "Bloodshed", "Gore", "Killing", "Murder", "Brutality", "Assault",
                 "Weapons Used to Harm", "Physical Fights", "Torture", "War Atrocities",
                 "Severe Injuries", "Death", "Cruelty", "Blood and Wounds", "Dead Bodies"],
}


def orthonormal_basis(vectors: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """(K, D) vectors -> (D, r) orthonormal basis of their span (numerical rank r)."""
    u, s, _ = torch.linalg.svd(vectors.double().T, full_matrices=False)
    keep = s > rtol * (s.max() if s.numel() else 1.0)
    return u[:, keep].float()


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(I - U U^T) x for rows x (..., D): the component orthogonal to span(U)."""
    return x - (x @ basis) @ basis.T


class SafreeProjection(Method):
    """SAFREE's text-embedding step (arXiv 2410.12761, Sec. 3.1-3.2), from its description:

    * toxic subspace C: span of the pooled embeddings of concept phrases;
    * for each token i of a prompt, the pooled embedding of the prompt with that token
      left out, p_\\i, and its distance from the subspace d_i = ||(I - P_C) p_\\i||;
      leaving out a toxic token moves the prompt away from C, so d_i is large;
    * trigger tokens: d_i > (1 + alpha) * mean_j d_j;
    * trigger tokens are replaced by their projection onto the orthogonal complement of C,
      restricted to the span of the prompt's own token embeddings:
      e_i' = P_I (I - P_C) e_i, with P_I the projector onto span{e_1..e_n};
      other tokens are unchanged.

    Adaptation: "tokens" are whitespace-separated words (a prompt is re-encoded once per
    word, with that word removed); a trigger word's sub-word tokens are all projected.
    SAFREE's image-side parts (self-validating filtering of denoising steps, latent
    re-attention in the Fourier domain) act on the image model and are out of scope here.
    Score: trigger strength = max_i d_i / mean_j d_j - 1 (0 for single-word prompts).
    """
    name = "SAFREE-style projection"
    knob = "alpha"
    has_score = True

    def __init__(self, encoder, concepts: Sequence[str], alpha: float = 0.01,
                 phrases: Optional[dict] = None, batch_size: int = 128):
        self.encoder = encoder
        self.alpha = alpha
        self.batch_size = batch_size
        phrases = phrases or SAFREE_PHRASES
        self.phrases = [p for c in concepts for p in phrases.get(c, [c])]
        items = encode_items(encoder, self.phrases, batch_size)
        self.basis = orthonormal_basis(torch.stack([item_pool(it) for it in items]))
        self._prep: dict[str, tuple] = {}      # text -> (distances, word token counts, aligned)
        self._word_tokens: dict[str, int] = {}

    def distances(self, pooled: torch.Tensor) -> torch.Tensor:
        return project_out(pooled, self.basis).norm(dim=-1)

    def _n_tokens(self, word: str) -> int:
        n = self._word_tokens.get(word)
        if n is None:
            n = self._word_tokens[word] = len(self.encoder.token_ids(word))
        return n

    def prepare(self, texts: Sequence[str]) -> None:
        """Encode every leave-one-word-out variant of every new prompt (pooled vectors only)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._prep]
        variants, owners = [], []
        for t in todo:
            words = t.split()
            for k in range(len(words)):
                variants.append(" ".join(words[:k] + words[k + 1:]))
                owners.append(t)
        pooled = {}
        order = sorted(range(len(variants)), key=lambda i: len(variants[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.encoder.encode([variants[i] for i in idx])
            p = mean_pool(batch.embedding, batch.attention_mask)
            d = self.distances(p)
            for j, i in enumerate(idx):
                pooled[i] = float(d[j])
        pos = 0
        for t in todo:
            words = t.split()
            d = torch.tensor([pooled[pos + k] for k in range(len(words))])
            pos += len(words)
            counts = [self._n_tokens(w) for w in words]
            self._prep[t] = (d, counts)

    def triggers(self, text: str, alpha: float) -> list[bool]:
        d, _ = self._prep[text]
        if len(d) < 2:
            return [False] * len(d)
        return (d > (1 + alpha) * d.mean()).tolist()

    def strength(self, text: str) -> float:
        d, _ = self._prep[text]
        if len(d) < 2 or float(d.mean()) == 0:
            return 0.0
        return float(d.max() / d.mean() - 1)

    def project_item(self, item: Item, text: str, alpha: float) -> tuple[Item, bool]:
        d, counts = self._prep[text]
        trig = self.triggers(text, alpha)
        if not any(trig):
            return item, False
        real_pos = item.real.nonzero().flatten().tolist()
        # Word k covers the next counts[k] real positions (words tokenize independently under
        # whitespace pre-tokenization); words past a truncation have no positions.
        positions, cursor = [], 0
        for k, c in enumerate(counts):
            if trig[k]:
                positions += real_pos[cursor:cursor + c]
            cursor += c
        if not positions:
            return item, False
        span = orthonormal_basis(item.embedding[item.real]) if item.real.any() else None
        emb = item.embedding.clone()
        x = project_out(emb[positions], self.basis)
        if span is not None:
            x = (x @ span) @ span.T
        emb[positions] = x
        return Item(emb, item.pooled, item.real, item.attention), True

    def run(self, cache, texts, setting=None):
        alpha = self.alpha if setting is None else float(setting)
        self.prepare(texts)
        originals = cache.get(texts)
        outputs, touched = [], []
        for it, t in zip(originals, texts):
            new, hit = self.project_item(it, t, alpha)
            outputs.append(new)
            touched.append(hit)
        score = torch.tensor([self.strength(t) for t in texts])
        return _summary(originals, outputs, score, torch.tensor(touched))


# ---------------------------------------------------------------- this project's sanitizer


class SanitizerMethod(Method):
    name = "sanitizer"
    knob = "intensity"
    has_score = True

    def __init__(self, model, intensity: float = 1.0, threshold: float = DEFAULT_THRESHOLD, batch_size: int = 64,
                 score_concepts=None, erase_concepts=None):
        self.model = model
        self.erase_concepts = erase_concepts
        self.intensity = intensity
        self.threshold = threshold
        self.batch_size = batch_size
        self.sanitize_seconds = 0.0
        # The prompt score reads these concepts only (a nudity benchmark asks about nudity);
        # sanitizing, and so the touched share, erases `erase_concepts` (None: every concept, as the hosts do).
        self.score_mask = None if score_concepts is None else model.concept_mask(score_concepts)

    def run(self, cache, texts, setting=None):
        import time
        intensity = self.intensity if setting is None else float(setting)
        originals = cache.get(texts)
        chunk = self.model.config.chunk_length
        outputs, scores, touched = [], [], []
        for start in range(0, len(originals), self.batch_size):
            part = originals[start:start + self.batch_size]
            emb, att, real, pooled = collate(part, chunk)
            t0 = time.perf_counter()
            # As the hosts do where they have the prompt's text: read it through its disguises.
            reading = plain_reading(self.model, cache.encoder, texts[start:start + self.batch_size], emb.shape[1])
            res = self.model.sanitize(emb, pooled, intensity=intensity, threshold=self.threshold,
                                      concepts=self.erase_concepts, attention_mask=att, plain_reading=reading)
            self.sanitize_seconds += time.perf_counter() - t0
            scores.append(prompt_scores(res.scores, real, self.score_mask))
            touched.append((res.gates.masked_fill(~att, 0.0) > TOUCHED_GATE).any(dim=1))
            for b, it in enumerate(part):
                n = it.embedding.shape[0]
                outputs.append(Item(res.embedding[b, :n], None if res.pooled is None else res.pooled[b],
                                    it.real, it.attention))
        return _summary(originals, outputs, torch.cat(scores), torch.cat(touched))

