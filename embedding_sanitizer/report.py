"""Per-token reports of a sanitize result, for terminals, node UIs and logs."""

from __future__ import annotations

from typing import Sequence

import torch

from .model import DEFAULT_THRESHOLD, SanitizeResult

ERASED_GATE = 0.5     # a token whose gate reaches this is shown as erased


def token_report(result: SanitizeResult, index: int, tokens: Sequence[str], real_mask) -> list[dict]:
    """The real tokens of batch item `index`, each with its score, gate and strongest concept."""
    scores, gates = result.scores[index].float().cpu(), result.gates[index].float().cpu()
    real = torch.as_tensor(real_mask, dtype=torch.bool).cpu()
    if not (len(tokens) == len(real) == scores.shape[0]):
        raise ValueError(f"token labels ({len(tokens)}) and mask ({len(real)}) must cover all "
                         f"{scores.shape[0]} positions of the embedding")
    best, which = scores.max(dim=-1)
    return [{"position": t, "token": tokens[t], "score": round(float(best[t]), 4),
             "gate": round(float(gates[t]), 4), "concept": result.concepts[int(which[t])],
             "erased": bool(gates[t] >= ERASED_GATE)}
            for t in range(len(tokens)) if real[t]]


TOKEN_FIELDS = ("position", "token", "score", "gate", "concept", "erased")


def token_entries(rows: list[dict]) -> list[dict]:
    """The per-token part of a report as it is sent to UIs and written as JSON."""
    return [{k: r[k] for k in TOKEN_FIELDS} for r in rows]


def prompt_summary(rows: list[dict]) -> dict:
    return {"prompt_score": max((r["score"] for r in rows), default=0.0),
            "erased_tokens": sum(r["erased"] for r in rows),
            "max_gate": max((r["gate"] for r in rows), default=0.0)}


def format_report(rows: list[dict], cosine: float, label: str = "") -> str:
    """A short plain-text report: prompt score, what was erased, how much the embedding moved."""
    summary = prompt_summary(rows)
    erased = [f"{r['token']} ({r['concept']} {r['score']:.2f})" for r in rows if r["erased"]]
    head = f"{label}: " if label else ""
    return (f"{head}prompt score {summary['prompt_score']:.2f}, erased tokens {summary['erased_tokens']}, "
            f"cosine to original {cosine:.4f}\n"
            + ("erased: " + ", ".join(erased) if erased else "erased: none"))


_COLOURS = ((0.5, "\033[1;31m"), (0.1, "\033[33m"), (0.0, "\033[32m"))


def colour_tokens(rows: list[dict], colour: bool) -> str:
    """Tokens with their scores: ANSI colours for a terminal, `token[0.93]` when piped."""
    out = []
    for r in rows:
        if not colour:
            out.append(f"{r['token']}[{r['score']:.2f}]")
            continue
        code = next(c for limit, c in _COLOURS if r["score"] >= limit)
        mark = "\u0336" if r["erased"] else ""
        out.append(f"{code}{mark.join(r['token'])}{mark}\033[0m\033[2m{r['score']:.2f}\033[0m")
    return " ".join(out)


def score_prompts(model, encoder, prompts: Sequence[str], *, intensity: float = 1.0,
                  threshold: float = DEFAULT_THRESHOLD, concepts=None, batch: int = 32) -> list[dict]:
    """Encode, sanitize and report prompts: one dict per prompt (the CLI's --json lines). Each
    prompt is read through its disguises too (disguise.py)."""
    from .disguise import sanitize_texts
    from .metrics import embedding_cosine

    results = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        encoded, result = sanitize_texts(model, encoder, chunk, intensity=intensity, threshold=threshold,
                                         concepts=concepts)
        cosines = embedding_cosine(result.embedding, encoded.embedding, encoded.attention_mask)
        for i, prompt in enumerate(chunk):
            rows = token_report(result, i, encoded.tokens[i], encoded.real_mask[i])
            results.append({"prompt": prompt, **prompt_summary(rows),
                            "cosine": round(float(cosines[i]), 6),
                            "tokens": token_entries(rows)})
    return results
