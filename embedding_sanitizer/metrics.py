"""Measures shared by training summaries, the CLI and the evaluation harness."""

from __future__ import annotations

from typing import Optional

import torch


def prompt_scores(scores: torch.Tensor, real_mask: torch.Tensor, concept_mask: Optional[torch.Tensor] = None):
    """Largest token score over a prompt's real tokens (and the enabled concepts): (B,)."""
    if concept_mask is not None:
        scores = scores.masked_fill(~concept_mask.to(scores.device), 0.0)
    token = scores.amax(dim=-1)
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
