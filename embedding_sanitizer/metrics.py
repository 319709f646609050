"""Measures shared by training summaries, the CLI and the evaluation harness."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .disguise import sanitize_texts
from .model import token_scores

# A prompt counts as changed ("touched") when any of its gates exceeds this.
TOUCHED_GATE = 0.01


def prompt_scores(scores: torch.Tensor, real_mask: torch.Tensor, concept_mask: Optional[torch.Tensor] = None):
    """The prompt score: the largest token score over a prompt's real tokens (and the enabled concepts): (B,)."""
    token = token_scores(scores, concept_mask)
    return token.masked_fill(~real_mask.to(token.device, torch.bool), 0.0).amax(dim=1)


def embedding_cosine(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """Cosine similarity per prompt of two (B, T, D) embeddings over their valid positions: (B,)."""
    a, b = a.float(), b.float()
    if mask is not None:
        keep = mask.to(a.device, torch.bool).unsqueeze(-1)
        a, b = a * keep, b * keep
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def auroc(positive, negative) -> float:
    """Area under the ROC curve: the chance a positive outranks a negative (ties count half)."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if not len(pos) or not len(neg):
        raise ValueError("AUROC needs at least one positive and one negative score")
    _, group, counts = torch.cat([pos, neg]).unique(return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()
    ranks = (last_rank - (counts - 1) / 2)[group]      # tied values share their mean rank
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def tpr_at_fpr(positive, negative, fpr: float = 0.01) -> float:
    """Share of positives above the threshold that lets through at most `fpr` of negatives."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten().sort(descending=True).values
    allowed = int(fpr * len(neg))
    threshold = neg[allowed] if allowed < len(neg) else neg.min() - 1
    return float((pos > threshold).double().mean())


@torch.no_grad()
def prompt_stats(model, encoder, prompts: Sequence[str], batch: int = 64, intensity: float = 1.0,
                 threshold: float = 0.0) -> dict:
    """Per prompt: prompt score, cosine of sanitized to original embedding, largest gate. Each
    prompt is read through its disguises too, as the hosts read it."""
    scores, cosines, max_gates = [], [], []
    for start in range(0, len(prompts), batch):
        b, result = sanitize_texts(model, encoder, prompts[start:start + batch], intensity=intensity,
                                   threshold=threshold)
        scores.append(prompt_scores(result.scores, b.real_mask))
        cosines.append(embedding_cosine(result.embedding, b.embedding, b.attention_mask))
        max_gates.append(result.gates.amax(dim=1))
    return {"score": torch.cat(scores), "cosine": torch.cat(cosines), "max_gate": torch.cat(max_gates)}


def touched_share(stats: dict) -> float:
    return float((stats["max_gate"] > TOUCHED_GATE).float().mean())


def summarize(unsafe: dict, benign: dict, unsafe_concepts: Optional[Sequence[str]] = None) -> dict:
    """Detection (AUROC, TPR at 1% FPR) and preservation (cosine, touched share) figures; with
    the concept of each unsafe prompt, the touched share per concept too, since one concept the
    sanitizer misses hides behind another it catches in the overall share."""
    by_concept = {}
    if unsafe_concepts is not None:
        owners = list(unsafe_concepts)
        for name in dict.fromkeys(owners):
            mine = torch.tensor([owner == name for owner in owners])
            by_concept[name] = round(touched_share({"max_gate": unsafe["max_gate"][mine]}), 4)
    return {
        "unsafe_prompts": len(unsafe["score"]), "benign_prompts": len(benign["score"]),
        "auroc": round(auroc(unsafe["score"], benign["score"]), 4),
        "tpr_at_1pct_fpr": round(tpr_at_fpr(unsafe["score"], benign["score"], 0.01), 4),
        "benign_cosine_mean": round(float(benign["cosine"].mean()), 5),
        "benign_cosine_p01": round(float(benign["cosine"].quantile(0.01)), 5),
        "benign_touched_share": round(touched_share(benign), 4),
        "unsafe_cosine_mean": round(float(unsafe["cosine"].mean()), 5),
        "unsafe_touched_share": round(touched_share(unsafe), 4),
        **({"unsafe_touched_share_by_concept": by_concept} if by_concept else {}),
    }


def evaluate(model, encoder, unsafe: Sequence[str], benign: Sequence[str], batch: int = 64,
             threshold: float = 0.0, unsafe_concepts: Optional[Sequence[str]] = None) -> dict:
    """summarize() of an unsafe and a benign prompt list (and the concept of each unsafe
    prompt, if given); {} when either list is empty."""
    if not unsafe or not benign:
        return {}
    return summarize(prompt_stats(model, encoder, unsafe, batch, threshold=threshold),
                     prompt_stats(model, encoder, benign, batch, threshold=threshold), unsafe_concepts)
