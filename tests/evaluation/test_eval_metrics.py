import math

import pytest
import torch

from embedding_sanitizer.evaluation.scoring import percentile, roc_curve
from embedding_sanitizer.probe import LogisticProbe
from embedding_sanitizer.metrics import auroc, tpr_at_fpr


def test_auroc_known_values():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5                       # ties count half
    # 3 positives, 2 negatives: pairs won = (0.9>0.1, 0.9>0.5, 0.4>0.1, 0.7>0.1, 0.7>0.5) = 5 of 6
    assert auroc([0.9, 0.4, 0.7], [0.1, 0.5]) == pytest.approx(5 / 6)


def test_auroc_binary_scores_like_the_keyword_filter():
    # 60% of unsafe matched, 10% of benign matched -> AUROC = 0.5 * (1 + TPR - FPR)
    pos = [1] * 6 + [0] * 4
    neg = [1] * 1 + [0] * 9
    assert auroc(pos, neg) == pytest.approx(0.5 * (1 + 0.6 - 0.1))


def test_tpr_at_fpr():
    neg = list(range(100))               # scores 0..99
    pos = [98.5, 99.5, 50, 200]
    # at most 1 of 100 negatives may pass: the threshold is 98, so 98.5, 99.5 and 200 pass
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(0.75)
    # binary scores with 5% benign matched: nothing passes at 1% FPR
    assert tpr_at_fpr([1, 1, 1], [1] * 5 + [0] * 95, 0.01) == 0.0
    assert tpr_at_fpr([1, 1, 0], [0] * 100, 0.01) == pytest.approx(2 / 3)


def test_roc_curve_ends():
    fpr, tpr = roc_curve([0.9, 0.8], [0.1, 0.85])
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_percentile():
    assert percentile(torch.arange(101.0), 1) == pytest.approx(1.0)
    assert math.isnan(percentile(torch.tensor([]), 1))


def test_probe_learns_a_direction_and_flips_when_it_is_removed():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    benign = torch.randn(200, 16, generator=g)
    unsafe = torch.randn(200, 16, generator=g) + 3 * direction / direction.norm()
    probe = LogisticProbe().fit(torch.cat([unsafe, benign]), torch.cat([torch.ones(200), torch.zeros(200)]))
    assert probe.train_accuracy > 0.9
    assert probe.predict(unsafe).float().mean() > 0.85
    erased = unsafe - 3 * direction / direction.norm()
    assert probe.predict(erased).float().mean() < 0.3


def test_probe_weights_and_direction():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g) * torch.arange(1.0, 7.0)
    y = (x[:, 2] > 0.5).float()
    probe = LogisticProbe().fit(x, y)
    direction, offset = probe.as_direction()
    assert torch.allclose(x.double() @ direction - offset, probe.logit(x), atol=1e-9)
    # Weighing the positives away moves the boundary: fewer prompts are called positive.
    light = LogisticProbe().fit(x, y, torch.where(y > 0.5, 0.05, 1.0))
    assert light.predict(x).sum() < probe.predict(x).sum()
