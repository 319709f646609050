"""Train a sanitizer for one text encoder (method.md, "Training").

Top to bottom: synthesize prompt pairs from the lexicon, encode them once
with the frozen encoder (the cache), then train only the sanitizer with

    L = erase(San(E(unsafe)), E(anchor)) + l_p * preserve(San(E(benign)), E(benign))
      + l_s * bce(scores, token labels) [+ l_q * the same on the pooled vector]

and measure it on held-out terms it never saw.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .encoders import EncodedBatch, TextEncoder, pick_device
from .lexicon import Concept, Example, benign_prompts, make_pairs
from .metrics import auroc, embedding_cosine, prompt_scores, tpr_at_fpr
from .model import EmbeddingSanitizer, SanitizerConfig

UNLABELLED = -1.0


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    width: int = 256
    layers: int = 2
    heads: int = 4
    pairs_per_concept: int = 2500
    benign: int = 6000
    heldout_pairs_per_concept: int = 300
    heldout_benign: int = 600
    preserve_weight: float = 1.0
    score_weight: float = 1.0
    pooled_weight: float = 1.0
    encode_batch: int = 64
    seed: int = 0
    device: Optional[str] = None


@dataclass
class Cache:
    """Encoder outputs, computed once, kept on the CPU in half precision."""
    embedding: torch.Tensor          # (N, T, D) float16
    pooled: Optional[torch.Tensor]   # (N, P) float16
    attention: torch.Tensor          # (N, T) bool
    real: torch.Tensor               # (N, T) bool
    token_ids: torch.Tensor          # (N, T) long


def encode_all(encoder: TextEncoder, prompts: Sequence[str], batch: int, label: str,
               progress: Optional[Callable] = None) -> Cache:
    parts: list[EncodedBatch] = []
    for start in tqdm(range(0, len(prompts), batch), desc=f"encoding {label}", leave=False):
        parts.append(encoder.encode(prompts[start:start + batch]))
        if progress:
            progress(0, 0, {})
    length = max(p.embedding.shape[1] for p in parts)

    def pad(t, value):
        return F.pad(t, (0, 0, 0, length - t.shape[1]), value=value) if t.dim() == 3 else \
            F.pad(t, (0, length - t.shape[1]), value=value)

    return Cache(
        embedding=torch.cat([pad(p.embedding, 0.0).half() for p in parts]),
        pooled=torch.cat([p.pooled.half() for p in parts]) if parts[0].pooled is not None else None,
        attention=torch.cat([pad(p.attention_mask, False) for p in parts]),
        real=torch.cat([pad(p.real_mask, False) for p in parts]),
        token_ids=torch.cat([pad(p.token_ids, 0) for p in parts]),
    )


def aligned(examples: list[Example], unsafe: Cache, anchor: Cache, leading: int) -> torch.Tensor:
    """Keep pairs whose twins have equal length and differ only inside the term's tokens."""
    keep = []
    for i, ex in enumerate(examples):
        span = slice(leading + ex.term_start, leading + ex.term_start + ex.term_length)
        differs = unsafe.token_ids[i] != anchor.token_ids[i]
        differs[span] = False
        keep.append(bool(unsafe.real[i].sum() == anchor.real[i].sum()) and not differs.any())
    return torch.tensor(keep)


def term_labels(examples: list[Example], concepts: list[str], cache: Cache, leading: int) -> torch.Tensor:
    labels = torch.full((*cache.attention.shape, len(concepts)), UNLABELLED)
    for i, ex in enumerate(examples):
        start = leading + ex.term_start
        labels[i, start:start + ex.term_length] = 0.0
        labels[i, start:start + ex.term_length, concepts.index(ex.concept)] = 1.0
    return labels


def benign_labels(cache: Cache, concepts: int) -> torch.Tensor:
    labels = torch.zeros((*cache.attention.shape, concepts))
    return labels.masked_fill(~cache.attention.unsqueeze(-1), UNLABELLED)


def feature_scale(cache: Cache) -> torch.Tensor:
    """Per-feature spread of the embeddings, so no single large feature dominates the MSE."""
    values = cache.embedding[cache.attention].float()
    return values.std(dim=0).clamp_min(1e-3)


def masked_mse(prediction, target, mask, scale):
    error = ((prediction - target) / scale).pow(2).mean(dim=-1)
    return (error * mask).sum() / mask.sum().clamp_min(1)


def apply(model: EmbeddingSanitizer, embedding, attention):
    """The sanitizer at intensity 1, differentiable: output, per-concept scores, gates, pooled delta."""
    scores, delta, pooled_delta = model(embedding, attention)
    gates = scores.amax(dim=-1).clamp(0, 1) * attention
    return embedding + gates.unsqueeze(-1) * delta, scores, gates, pooled_delta


def train_sanitizer(encoder: TextEncoder, concepts: Sequence[Concept], config: TrainConfig = TrainConfig(),
                    progress: Optional[Callable[[int, int, dict], None]] = None):
    """Returns (model, summary). `progress(step, total, losses)` is called often and may raise to stop."""
    started = time.time()
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    names = [c.name for c in concepts]
    count = lambda text: len(encoder.token_ids(text))  # noqa: E731

    # 1. Synthesize the prompts.
    train_pairs = [ex for i, c in enumerate(concepts)
                   for ex in make_pairs(c, config.pairs_per_concept, config.seed + i, count)]
    benign = list(dict.fromkeys(benign_prompts(config.benign, config.seed, concepts)
                                + [ex.anchor for ex in train_pairs[::4]]))
    heldout_unsafe, heldout_benign = heldout_sets(encoder, concepts, config)

    # 2. Encode them once.
    enc = lambda prompts, label: encode_all(encoder, prompts, config.encode_batch, label, progress)  # noqa
    unsafe = enc([e.unsafe for e in train_pairs], "unsafe prompts")
    anchor = enc([e.anchor for e in train_pairs], "anchor prompts")
    benign_cache = enc(benign, "benign prompts")
    keep = aligned(train_pairs, unsafe, anchor, encoder.leading_specials)
    if keep.sum() < 16:
        raise ValueError(f"only {int(keep.sum())} usable unsafe/anchor pairs: add anchors whose token "
                         f"counts match the terms' (e.g. one-, two- and three-word anchors)")
    train_pairs = [ex for ex, k in zip(train_pairs, keep.tolist()) if k]
    unsafe, anchor = (Cache(*(None if t is None else t[keep] for t in vars(c).values()))
                      for c in (unsafe, anchor))
    unsafe_labels = term_labels(train_pairs, names, unsafe, encoder.leading_specials)
    benign_target = benign_labels(benign_cache, len(names))

    # 3. Train the sanitizer alone.
    model = EmbeddingSanitizer(SanitizerConfig(
        embed_dim=encoder.embed_dim, concepts=tuple(names), pooled_dim=encoder.pooled_dim,
        chunk_length=encoder.chunk_length, max_tokens=encoder.max_tokens, width=config.width,
        layers=config.layers, heads=config.heads, encoder_family=encoder.family,
        encoder_name=encoder.name)).to(device)
    scale = feature_scale(benign_cache).to(device)
    pooled_scale = (benign_cache.pooled.float().std(dim=0).clamp_min(1e-3).to(device)
                    if encoder.pooled_dim else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, min(100, config.steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    sampler = torch.Generator().manual_seed(config.seed)

    def batch(cache: Cache, labels, size):
        idx = torch.randint(len(cache.embedding), (size,), generator=sampler)
        move = lambda t: t[idx].to(device)  # noqa: E731
        return idx, move(cache.embedding).float(), move(cache.attention).float(), move(labels)

    losses = {}
    bar = tqdm(range(config.steps), desc=f"training {encoder.family} sanitizer")
    model.train()
    for step in bar:
        idx, e_unsafe, m_unsafe, y_unsafe = batch(unsafe, unsafe_labels, config.batch_size)
        e_anchor = anchor.embedding[idx].to(device).float()
        _, e_benign, m_benign, y_benign = batch(benign_cache, benign_target, config.batch_size)
        out_u, s_u, g_u, pd_u = apply(model, e_unsafe, m_unsafe.bool())
        out_b, s_b, g_b, pd_b = apply(model, e_benign, m_benign.bool())
        erase = masked_mse(out_u, e_anchor, m_unsafe, scale)
        preserve = masked_mse(out_b, e_benign, m_benign, scale)
        scores = torch.cat([s_u[y_unsafe != UNLABELLED], s_b[y_benign != UNLABELLED]])
        labels = torch.cat([y_unsafe[y_unsafe != UNLABELLED], y_benign[y_benign != UNLABELLED]])
        score = F.binary_cross_entropy(scores, labels)
        loss = erase + config.preserve_weight * preserve + config.score_weight * score
        losses = {"erase": erase.item(), "preserve": preserve.item(), "score": score.item()}
        if encoder.pooled_dim:
            p_u = unsafe.pooled[idx].to(device).float()
            p_a = anchor.pooled[idx].to(device).float()
            pooled_erase = ((p_u + g_u.amax(1, keepdim=True) * pd_u - p_a) / pooled_scale).pow(2).mean()
            pooled_keep = ((g_b.amax(1, keepdim=True) * pd_b) / pooled_scale).pow(2).mean()
            loss = loss + config.pooled_weight * (pooled_erase + config.preserve_weight * pooled_keep)
            losses["pooled"] = (pooled_erase + pooled_keep).item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == config.steps - 1:
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
        if progress:
            progress(step + 1, config.steps, losses)
    model.eval()

    # 4. Measure on held-out terms and prompts.
    heldout = evaluate(model, encoder, heldout_unsafe, heldout_benign, config.encode_batch)
    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "encoder": encoder.name,
        "concepts": {c.name: {"train_terms": len(c.train_terms), "heldout_terms": len(c.heldout_terms),
                              "anchors": len(c.anchors)} for c in concepts},
        "data": {"unsafe_pairs": len(train_pairs), "benign": len(benign),
                 "heldout_unsafe": len(heldout_unsafe), "heldout_benign": len(heldout_benign)},
        "config": {k: v for k, v in asdict(config).items() if k != "device"},
        "steps": config.steps,
        "final_losses": {k: round(v, 5) for k, v in losses.items()},
        "heldout": heldout,
        "train_seconds": round(time.time() - started, 1),
        "device": str(device),
    }
    return model.cpu(), summary


def heldout_sets(encoder: TextEncoder, concepts: Sequence[Concept], config: TrainConfig):
    """Unsafe prompts built from held-out terms only, and benign prompts not in the training set."""
    count = lambda text: len(encoder.token_ids(text))  # noqa: E731
    unsafe = [ex.unsafe for i, c in enumerate(concepts)
              for ex in make_pairs(c, config.heldout_pairs_per_concept, config.seed + 100 + i, count,
                                   heldout=True)]
    seen = set(benign_prompts(config.benign, config.seed, concepts))
    benign = [p for p in dict.fromkeys(benign_prompts(config.heldout_benign * 3, config.seed + 7))
              if p not in seen][: config.heldout_benign]
    return unsafe, benign


@torch.no_grad()
def prompt_stats(model: EmbeddingSanitizer, encoder: TextEncoder, prompts: Sequence[str], batch: int = 64,
                 intensity: float = 1.0, threshold: float = 0.0) -> dict:
    """Per prompt: prompt score, cosine of sanitized to original embedding, largest gate."""
    scores, cosines, max_gates = [], [], []
    for start in range(0, len(prompts), batch):
        b = encoder.encode(list(prompts[start:start + batch]))
        result = model.sanitize(b.embedding, b.pooled, intensity=intensity, threshold=threshold,
                                attention_mask=b.attention_mask)
        scores.append(prompt_scores(result.scores, b.real_mask))
        cosines.append(embedding_cosine(result.embedding, b.embedding, b.attention_mask))
        max_gates.append(result.gates.amax(dim=1))
    return {"score": torch.cat(scores), "cosine": torch.cat(cosines), "max_gate": torch.cat(max_gates)}


def summarize(unsafe: dict, benign: dict) -> dict:
    """Detection (AUROC, TPR at 1% FPR) and preservation (cosine, gated share) figures."""
    return {
        "unsafe_prompts": len(unsafe["score"]), "benign_prompts": len(benign["score"]),
        "auroc": round(auroc(unsafe["score"], benign["score"]), 4),
        "tpr_at_1pct_fpr": round(tpr_at_fpr(unsafe["score"], benign["score"], 0.01), 4),
        "benign_cosine_mean": round(float(benign["cosine"].mean()), 5),
        "benign_cosine_p01": round(float(benign["cosine"].quantile(0.01)), 5),
        "benign_gated_share": round(float((benign["max_gate"] > 0.01).float().mean()), 4),
        "unsafe_cosine_mean": round(float(unsafe["cosine"].mean()), 5),
        "unsafe_gated_share": round(float((unsafe["max_gate"] > 0.01).float().mean()), 4),
    }


def evaluate(model: EmbeddingSanitizer, encoder: TextEncoder, unsafe: Sequence[str], benign: Sequence[str],
             batch: int = 64, threshold: float = 0.0) -> dict:
    if not unsafe or not benign:
        return {}
    return summarize(prompt_stats(model, encoder, unsafe, batch, threshold=threshold),
                     prompt_stats(model, encoder, benign, batch, threshold=threshold))
