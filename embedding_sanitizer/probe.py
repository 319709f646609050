"""A linear probe on sentence vectors: L2-regularised logistic regression, fitted in torch.

The trainer fits one per concept for the prompt-level prior (train.py); the evaluation harness
and `measure` fit one as the supervised baseline and as the erasure probe."""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F


class LogisticProbe:
    """Logistic regression on standardised features (full-batch L-BFGS). Samples are weighted so
    both classes carry the same total weight, unless the caller weighs them. Threshold 0.5."""

    def __init__(self, weight_decay: float = 1e-2, steps: int = 200):
        self.weight_decay = weight_decay
        self.steps = steps

    def fit(self, x: torch.Tensor, y: torch.Tensor, sample_weight: Optional[torch.Tensor] = None) -> "LogisticProbe":
        """`y` may be soft (0..1); `sample_weight` is normalised to a mean of 1."""
        x, y = x.double(), y.double()
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-6)
        z = (x - self.mean) / self.std
        if sample_weight is None:
            positive = (y > 0.5).double().mean().clamp(1e-6, 1 - 1e-6)
            sample_weight = torch.where(y > 0.5, 0.5 / positive, 0.5 / (1 - positive))
        sample_weight = sample_weight.double() / sample_weight.double().mean()
        w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = (F.binary_cross_entropy_with_logits(z @ w + b, y, reduction="none") * sample_weight).mean() \
                + self.weight_decay * (w * w).sum() / 2
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        self.w, self.b = w.detach(), b.detach()
        self.train_accuracy = float((self.predict(x) == (y > 0.5)).double().mean())
        return self

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.w + self.b

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x)).float()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.proba(x) >= 0.5

    def as_direction(self) -> tuple[torch.Tensor, float]:
        """(direction, offset) with logit(x) = x @ direction - offset: the probe without its scaler."""
        direction = self.w / self.std
        return direction, float(self.mean @ direction - self.b)
