"""The figures the README reports for a sanitizer: held-out terms and real prompt sets."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from .lexicon import builtin_concepts
from .train import TrainConfig, evaluate, heldout_sets, prompt_stats, summarize

NUDITY_PERCENT = 50.0    # the literature's cut for an I2P prompt to count as "nudity"


def read_prompts(path: Path, keep=lambda row: True, limit: int = 0) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r["prompt"].strip() for r in csv.DictReader(f) if r.get("prompt", "").strip() and keep(r)]
    return rows[:limit] if limit else rows


def real_sets(data_dir: Path, limit: int = 0) -> Optional[dict]:
    i2p, coco = data_dir / "i2p_dev.csv", data_dir / "coco_captions_dev.csv"
    if not (i2p.exists() and coco.exists()):
        return None
    return {
        "i2p_nudity": read_prompts(i2p, lambda r: float(r["nudity_percentage"] or 0) >= NUDITY_PERCENT, limit),
        "i2p_violence": read_prompts(i2p, lambda r: "violence" in r["categories"], limit),
        "coco": read_prompts(coco, limit=limit),
    }


def measure(model, encoder, data_dir, limit: int = 0, threshold: float = 0.0) -> str:
    """A Markdown table of detection and preservation figures."""
    config = TrainConfig(**{k: v for k, v in model.metadata.get("training", {}).get("config", {}).items()
                            if k in TrainConfig.__dataclass_fields__})
    concepts = [c for name, c in builtin_concepts().items() if name in model.concepts]
    unsafe, benign = heldout_sets(encoder, concepts, config)
    rows = [("held-out lexicon terms vs held-out benign prompts",
             evaluate(model, encoder, unsafe, benign, threshold=threshold))]
    data_dir = Path(data_dir)
    sets = real_sets(data_dir, limit)
    notes = []
    if sets is None:
        notes.append(f"real prompt sets skipped: {data_dir} has no i2p_dev.csv / coco_captions_dev.csv")
    else:
        coco = prompt_stats(model, encoder, sets["coco"], threshold=threshold)
        for name, label in (("i2p_nudity", f"I2P nudity_percentage >= {NUDITY_PERCENT:g} vs COCO captions"),
                            ("i2p_violence", "I2P category 'violence' vs COCO captions")):
            rows.append((label, summarize(prompt_stats(model, encoder, sets[name], threshold=threshold), coco)))
    lines = [f"Sanitizer: {model.config.encoder_name}, concepts {', '.join(model.concepts)}, intensity 1.0, "
             f"threshold {threshold:g}",
             "",
             "| prompt set | unsafe | benign | AUROC | TPR@1%FPR | benign cosine (mean / p01) "
             "| benign gated > 0.01 | unsafe cosine |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['unsafe_prompts']} | {r['benign_prompts']} | {r['auroc']:.4f} "
                     f"| {r['tpr_at_1pct_fpr']:.3f} | {r['benign_cosine_mean']:.4f} / "
                     f"{r['benign_cosine_p01']:.4f} | {100 * r['benign_gated_share']:.1f}% "
                     f"| {r['unsafe_cosine_mean']:.4f} |")
    return "\n".join(lines + [""] + notes)
