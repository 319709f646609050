"""The Embedding Sanitizer network (see docs/method.md).

A small Transformer reads the text encoder's output E (B, T, D), gives every
token a score per concept, and adds a gated correction:

    E'_t = E_t + g_t * Delta_t,    g_t = clamp(intensity * s_t, 0, 1)

The sanitize heads start at zero, so an untrained sanitizer is the identity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn

from . import validation


# Tokens scoring below this are never changed. The score is trained as a probability, so 0.5
# keeps a benign prompt bit-identical unless the sanitizer is more sure than not; 0 lets every
# token's gate follow its score, however small.
DEFAULT_THRESHOLD = 0.5

# Every valid row of a prompt the sanitizer changes gets at least this share of its largest
# gate: in a contextual encoder the other rows carry the concept too (the erasure loss trains
# their corrections), so changing only the flagged words leaves the prompt readable as unsafe
# (measured in docs/experiments.md). Below ERASED_GATE (0.5), so the reports still name only the
# flagged words as erased.
GATE_SPREAD = 0.4

# A prompt-level weight this large (logits per benign spread, or times the probe's logit)
# already decides a prompt on its own.
MAX_PROMPT_WEIGHT = 16.0


class SanitizerShapeError(ValueError):
    """An input tensor does not fit the sanitizer (wrong D, pooled size or chunking)."""


@dataclass(frozen=True)
class SanitizerConfig:
    embed_dim: int                      # D of the encoder output
    concepts: tuple[str, ...] = ("nudity", "violence")
    pooled_dim: int = 0                 # P of the pooled vector; 0 = no pooled head
    chunk_length: int = 0               # 77 for CLIP families, 0 = whole sequence
    max_tokens: int = 77                # positions the sanitizer has embeddings for
    width: int = 192                    # d of the backbone (the network the recipe trains, train.TrainConfig)
    layers: int = 3
    heads: int = 4
    encoder_family: str = "custom"
    encoder_name: str = "unknown"
    prompt_prior: float = 0.0           # weight of the prompt-level prior (logits per benign spread); 0 = none
    prompt_probe: float = 0.0           # weight of the prompt-level probe's logit; 0 = none

    def __post_init__(self):
        object.__setattr__(self, "concepts", tuple(self.concepts))
        if self.chunk_length and self.max_tokens != self.chunk_length:
            object.__setattr__(self, "max_tokens", self.chunk_length)
        problems = []
        if self.embed_dim <= 0:
            problems.append(f"embed_dim must be positive, got {self.embed_dim}")
        if not self.concepts or len(set(self.concepts)) != len(self.concepts):
            problems.append(f"concepts must be distinct and non-empty, got {list(self.concepts)}")
        if self.pooled_dim < 0 or self.chunk_length < 0 or self.max_tokens <= 0:
            problems.append("pooled_dim and chunk_length must be >= 0, max_tokens > 0")
        if self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        for name in ("prompt_prior", "prompt_probe"):
            weight = getattr(self, name)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                problems.append(f"{name} must be a number, got {type(weight).__name__}")
            elif not 0.0 <= weight <= MAX_PROMPT_WEIGHT:     # NaN fails this too
                shown = f"{weight:.6g}" if isinstance(weight, float) else "an integer out of range"
                problems.append(f"{name} must be from 0 to {MAX_PROMPT_WEIGHT}, got {shown}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        return d


@dataclass
class SanitizeResult:
    embedding: torch.Tensor            # (B, T, D), the input's dtype and device
    pooled: Optional[torch.Tensor]     # (B, P) or None
    scores: torch.Tensor               # (B, T, C) float32
    gates: torch.Tensor                # (B, T) float32
    concepts: tuple[str, ...] = field(default=())


def mean_pool(embedding: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions, (B, T, D) -> (B, D): a prompt's sentence vector."""
    w = valid.to(embedding.dtype).unsqueeze(-1)
    return (embedding * w).sum(1) / w.sum(1).clamp_min(1.0)


def sentence_vector(embedding: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The unit-length mean over valid positions: where the prompt-level prior places a prompt."""
    return nn.functional.normalize(mean_pool(embedding, valid), dim=-1)


def token_scores(scores: torch.Tensor, concept_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """s_t: a token's score, the largest over the enabled concepts. (B, T, C) -> (B, T)."""
    if concept_mask is not None:
        scores = scores.masked_fill(~concept_mask.to(scores.device), 0.0)
    return scores.amax(dim=-1)


class EmbeddingSanitizer(nn.Module):
    def __init__(self, config: SanitizerConfig):
        super().__init__()
        self.config = config
        self.metadata: dict = {}
        d = config.width
        self.input_norm = nn.LayerNorm(config.embed_dim)
        self.project = nn.Linear(config.embed_dim, d)
        self.position = nn.Parameter(torch.zeros(config.max_tokens, d))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, dim_feedforward=2 * d, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True)
        self.backbone = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(d)
        self.score_head = nn.Linear(d, len(config.concepts))
        # Start every token at a low score: an untrained sanitizer should gate nothing.
        nn.init.constant_(self.score_head.bias, -6.0)
        if config.prompt_prior:
            # The prompt-level prior (docs/method.md): the trainer sets each concept's direction
            # and the benign corpus's centre and spread along it.
            c = len(config.concepts)
            self.register_buffer("prior_direction", torch.zeros(c, config.embed_dim))
            self.register_buffer("prior_centre", torch.zeros(c))
            self.register_buffer("prior_spread", torch.ones(c))
        if config.prompt_probe:
            # A logistic probe on the same sentence vector, fitted once the network has trained
            # (train.set_prompt_probe); until then it reads 0.
            c = len(config.concepts)
            self.register_buffer("probe_direction", torch.zeros(c, config.embed_dim))
            self.register_buffer("probe_offset", torch.zeros(c))
        self.sanitize_head = nn.Linear(d, config.embed_dim)
        nn.init.zeros_(self.sanitize_head.weight)
        nn.init.zeros_(self.sanitize_head.bias)
        if config.pooled_dim:
            self.pool_query = nn.Linear(d, 1)
            self.pooled_head = nn.Linear(d, config.pooled_dim)
            nn.init.zeros_(self.pooled_head.weight)
            nn.init.zeros_(self.pooled_head.bias)

    @property
    def concepts(self) -> tuple[str, ...]:
        return self.config.concepts

    def concept_mask(self, concepts: Optional[Iterable[str]]) -> torch.Tensor:
        """Boolean (C,) mask of the concepts to erase; None means all of them."""
        if concepts is None:
            return torch.ones(len(self.concepts), dtype=torch.bool)
        wanted = list(concepts)
        unknown = [c for c in wanted if c not in self.concepts]
        if unknown:
            raise ValueError(f"unknown concept(s) {unknown}; this sanitizer knows {list(self.concepts)}")
        return torch.tensor([c in wanted for c in self.concepts], dtype=torch.bool)

    def check_shapes(self, embedding: torch.Tensor, pooled: Optional[torch.Tensor]) -> None:
        cfg = self.config
        if embedding.dim() != 3 or embedding.shape[-1] != cfg.embed_dim:
            raise SanitizerShapeError(
                f"embedding shape {tuple(embedding.shape)} does not fit this sanitizer: expected "
                f"(batch, tokens, {cfg.embed_dim}) for encoder '{cfg.encoder_name}' ({cfg.encoder_family}); "
                f"use a sanitizer trained for the text encoder that produced this embedding")
        tokens = embedding.shape[1]
        if embedding.shape[0] == 0 or tokens == 0:
            raise SanitizerShapeError(f"embedding shape {tuple(embedding.shape)} is empty: there is nothing to sanitize")
        if cfg.chunk_length and tokens % cfg.chunk_length:
            raise SanitizerShapeError(
                f"embedding has {tokens} tokens, expected a multiple of {cfg.chunk_length} "
                f"(chunks of {cfg.chunk_length} tokens, as {cfg.encoder_family} encoders produce)")
        if pooled is not None and cfg.pooled_dim:
            if pooled.shape != (embedding.shape[0], cfg.pooled_dim):
                raise SanitizerShapeError(
                    f"pooled shape {tuple(pooled.shape)} does not fit this sanitizer: expected "
                    f"({embedding.shape[0]}, {cfg.pooled_dim})")

    def forward(self, embedding: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        """Float32 scores (B, T, C), token deltas (B, T, D) and pooled delta (B, P) or None."""
        batch, tokens, dim = embedding.shape
        x = embedding.float()
        valid = (torch.ones(batch, tokens, dtype=torch.bool, device=x.device)
                 if attention_mask is None else attention_mask.to(x.device, torch.bool))
        lean = self.prompt_lean(x, valid)
        # CLIP families: independent 77-token chunks. Whole-sequence families (T5, LLMs): a sequence
        # longer than the position table is read in windows of max_tokens, the last one padded.
        span = self.config.chunk_length or min(tokens, self.config.max_tokens)
        padding = -tokens % span
        chunks = (tokens + padding) // span
        x = nn.functional.pad(x, (0, 0, 0, padding)).reshape(batch * chunks, span, dim)
        chunk_valid = nn.functional.pad(valid, (0, padding), value=False).reshape(batch * chunks, span)
        h = self.project(self.input_norm(x)) + self.position[:span]
        # A fully masked chunk would make attention produce NaNs; let it attend to itself.
        empty = ~chunk_valid.any(dim=1, keepdim=True)
        h = self.backbone(h, src_key_padding_mask=~(chunk_valid | empty))
        h = self.output_norm(h).reshape(batch, tokens + padding, -1)[:, :tokens]
        logits = self.score_head(h)
        if lean is not None:
            logits = logits + lean.unsqueeze(1)
        scores = torch.sigmoid(logits)
        delta = self.sanitize_head(h)
        pooled_delta = None
        if self.config.pooled_dim:
            logits = self.pool_query(h).squeeze(-1).masked_fill(~valid, -math.inf)
            weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
            pooled_delta = self.pooled_head(torch.einsum("bt,btd->bd", weights, h))
        return scores, delta, pooled_delta

    def prompt_lean(self, embedding: torch.Tensor, valid: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, C) added to every token's logit: the weighted prior and probe, or None without them."""
        cfg, lean = self.config, None
        if cfg.prompt_prior:
            lean = cfg.prompt_prior * self.prior(embedding, valid)
        if cfg.prompt_probe:
            probe = cfg.prompt_probe * self.probe(embedding, valid)
            lean = probe if lean is None else lean + probe
        return lean

    def prior(self, embedding: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, C): how near each prompt's sentence vector lies to each concept, in benign spreads
        from the benign centre. Word-level scores miss what a whole prompt implies ("a buxom
        princess in a wet gown, by bouguereau"); this lends every token of it the prompt's lean."""
        return (sentence_vector(embedding, valid) @ self.prior_direction.T - self.prior_centre) / self.prior_spread

    def probe(self, embedding: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, C): each concept's logit for the whole prompt, from a probe trained on prompt-level
        labels. Real implicit prompts ("a couple making love in a hotel room") sit far from the
        terms' phrasing, and the probe learns them where the corpus has labelled ones."""
        return sentence_vector(embedding, valid) @ self.probe_direction.T - self.probe_offset

    @staticmethod
    def gates_from_scores(scores, concept_mask, intensity, threshold, attention_mask=None):
        """g_t = clamp(intensity * s_t, 0, 1), 0 where s_t < threshold or the position is padding."""
        token_score = token_scores(scores, concept_mask)
        gates = (intensity * token_score).clamp(0.0, 1.0)
        if threshold > 0:
            gates = gates.masked_fill(token_score < threshold, 0.0)
        if attention_mask is not None:
            gates = gates.masked_fill(~attention_mask.to(gates.device, torch.bool), 0.0)
        return gates

    @staticmethod
    def spread_gates(gates, attention_mask=None):
        """g_t = max(g_t, GATE_SPREAD * max_u g_u) over valid rows: a changed prompt changes throughout."""
        spread = torch.maximum(gates, GATE_SPREAD * gates.amax(dim=1, keepdim=True))
        if attention_mask is not None:
            spread = spread.masked_fill(~attention_mask.to(gates.device, torch.bool), 0.0)
        return spread

    @torch.no_grad()
    def sanitize(self, embedding: torch.Tensor, pooled: Optional[torch.Tensor] = None, *,
                 intensity: float = 1.0, threshold: float = 0.0,
                 concepts: Optional[Iterable[str]] = None,
                 attention_mask: Optional[torch.Tensor] = None,
                 plain_reading=None) -> SanitizeResult:
        """`plain_reading` (disguise.PlainReading), where given, is what the prompt's text says of
        some rows ("n u d e" scored as "nude"): before the scores gate, its scores replace the
        rows' own where it says so, elsewhere in its rows the larger of the two is kept, and the
        rows of a concept's benign sense ("nude lipstick") score 0 for that concept."""
        intensity, threshold = validation.intensity(intensity), validation.threshold(threshold)
        concepts = validation.concepts(concepts, self.concepts)
        if not embedding.is_floating_point():
            raise SanitizerShapeError(f"embedding must be a float tensor, got {embedding.dtype}")
        self.check_shapes(embedding, pooled)
        validation.finite_input(embedding, pooled)
        own_device = self.project.weight.device
        if attention_mask is not None:
            attention_mask = attention_mask.to(own_device, torch.bool)
        scores, delta, pooled_delta = self(embedding.to(own_device), attention_mask)
        validation.require_finite("the sanitizer's output", scores, delta, pooled_delta)
        if plain_reading is not None:
            scores = self._read_plainly(scores, plain_reading)
        gates = self.spread_gates(self.gates_from_scores(scores, self.concept_mask(concepts), intensity, threshold,
                                                         attention_mask), attention_mask)
        out_device, out_dtype = embedding.device, embedding.dtype
        correction = (gates.unsqueeze(-1) * delta).to(out_device, out_dtype)
        touched = (gates > 0).unsqueeze(-1).to(out_device)
        # where() rather than E + 0: an untouched token keeps its exact bits (even -0.0).
        new_embedding = torch.where(touched, embedding + correction, embedding)
        new_pooled = pooled
        if pooled is not None:
            new_pooled = pooled.clone()
            if pooled_delta is not None:
                strength = gates.amax(dim=1, keepdim=True)
                correction = (strength * pooled_delta).to(pooled.device, pooled.dtype)
                new_pooled = torch.where((strength > 0).to(pooled.device), pooled + correction, pooled)
        validation.require_finite("the sanitized embedding", new_embedding, new_pooled)
        return SanitizeResult(new_embedding, new_pooled, scores.to(out_device), gates.to(out_device),
                              self.concepts)

    @staticmethod
    def _read_plainly(scores: torch.Tensor, reading) -> torch.Tensor:
        rows, replace, read = reading.rows, reading.replace, reading.scores
        if read.shape != scores.shape or rows.shape != scores.shape[:2] or replace.shape != rows.shape:
            raise SanitizerShapeError(f"a plain reading of shape {tuple(read.shape)} does not fit the scores "
                                      f"{tuple(scores.shape)}")
        validation.require_finite("the plain reading's scores", read)
        read = read.to(scores.device, scores.dtype).clamp(0.0, 1.0)
        rows, replace = (t.to(scores.device, torch.bool).unsqueeze(-1) for t in (rows, replace))
        scores = torch.where(replace, read, torch.where(rows, torch.maximum(scores, read), scores))
        harmless = reading.harmless
        if harmless is not None:
            if harmless.shape != scores.shape:
                raise SanitizerShapeError(f"a plain reading's benign senses of shape {tuple(harmless.shape)} do not "
                                          f"fit the scores {tuple(scores.shape)}")
            scores = scores.masked_fill(harmless.to(scores.device, torch.bool), 0.0)
        return scores

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
