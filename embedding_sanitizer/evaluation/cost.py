"""Cost measurements: the time to sanitize a prompt as a share of the time to encode it,
measured in the same process, one prompt at a time (what a host does per generation)
and in batches."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..families import FAMILIES
from ..model import EmbeddingSanitizer, SanitizerConfig

COST_PROMPTS = [
    "a photo of a cat sleeping on a sofa",
    "portrait of a woman in a red dress, oil painting, highly detailed, by alphonse mucha",
    "a busy street market at dusk with lanterns, people shopping, cinematic lighting, 35mm film",
    "an astronaut riding a horse on the moon, digital art, trending on artstation, 8k",
    "a bowl of ramen",
    "a medieval castle on a hill surrounded by fog, matte painting, concept art, volumetric light, "
    "dramatic sky, by greg rutkowski and thomas kinkade, ultra detailed, wide angle",
]
# Prompts that name a concept's term: reading them as words also maps each term to its rows.
TERM_PROMPTS = [
    "photo of a nude woman, full body, studio lighting, 85mm, raw photo, 8k uhd",
    "1boy, solo, nude, penis, erection, muscular, shower, masterpiece, best quality",
    "a knight decapitated on a battlefield, blood everywhere, gore, dramatic lighting",
]


def _timed(fn, repeats: int) -> float:
    """Fastest wall time of fn() over `repeats` runs (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_cost(encoder, model: EmbeddingSanitizer, prompts: Sequence[str] = COST_PROMPTS,
            repeats: int = 5, batch: int = 16, threads: Optional[int] = 1) -> dict:
    """Per-prompt (batch 1) and batched encode / sanitize times and their ratio. Single-threaded
    by default: a shared machine's other load disturbs multi-threaded timings far more."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(encoder, model, prompts, repeats, batch)
    finally:
        torch.set_num_threads(previous)


def _measure(encoder, model, prompts, repeats, batch) -> dict:
    with torch.no_grad():
        for p in prompts[:2]:                         # warm-up
            out = encoder.encode([p])
            model.sanitize(out.embedding, out.pooled, attention_mask=out.attention_mask)
        # Interleaved (encode, sanitize, encode, ...) so both see the same machine load; the
        # fastest of the repeats is the least disturbed measurement of each.
        enc, san = [], []
        for p in prompts:
            out = encoder.encode([p])
            te, ts = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                encoder.encode([p])
                te.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                model.sanitize(out.embedding, out.pooled, attention_mask=out.attention_mask)
                ts.append(time.perf_counter() - t0)
            enc.append(min(te))
            san.append(min(ts))
        many = (list(prompts) * (batch // len(prompts) + 1))[:batch]
        enc_b = _timed(lambda: encoder.encode(many), max(2, repeats // 2))
        out = encoder.encode(many)
        san_b = _timed(lambda: model.sanitize(out.embedding, out.pooled, attention_mask=out.attention_mask),
                       max(2, repeats // 2))
        # Reading the text as words (disguise.plain_reading, without a disguise: no second encode).
        from ..disguise import plain_reading
        rows = {p: encoder.encode([p]).embedding.shape[1] for p in list(prompts) + TERM_PROMPTS}
        read = [_timed(lambda: plain_reading(model, encoder, [p], rows[p]), repeats) for p in prompts]
        read_terms = [_timed(lambda: plain_reading(model, encoder, [p], rows[p]), repeats) for p in TERM_PROMPTS]
    ratios = [s / e for s, e in zip(san, enc)]
    return {
        "encoder": f"{encoder.family} ({encoder.name})",
        "prompts": len(prompts), "repeats": repeats,
        "encode_ms_median": 1000 * statistics.median(enc),
        "sanitize_ms_median": 1000 * statistics.median(san),
        "ratio_median": statistics.median(ratios),
        "ratio_max": max(ratios),
        "read_ms_median": 1000 * statistics.median(read),
        "read_terms_ms_median": 1000 * statistics.median(read_terms),
        "ratio_with_reading_median": statistics.median([(s + r) / e for s, r, e in zip(san, read, enc)]),
        "batch": batch,
        "batch_encode_ms": 1000 * enc_b, "batch_sanitize_ms": 1000 * san_b,
        "batch_ratio": san_b / enc_b,
        "sanitizer_parameters": model.parameter_count(),
        "sanitizer_config": {k: v for k, v in model.config.to_dict().items()
                             if k in ("embed_dim", "pooled_dim", "chunk_length", "width", "layers", "heads")},
        "device": str(next(model.parameters()).device),
        "torch_threads": torch.get_num_threads(),   # while timing
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def sized_like(model: Optional[EmbeddingSanitizer], family: str) -> EmbeddingSanitizer:
    """A sanitizer for a full-size family with the backbone size of `model` (the default
    weights), random weights; the sanitize heads are made non-zero so no path is skipped."""
    dims = (FAMILIES[family].embed_dim, FAMILIES[family].pooled_dim)
    base = model.config if model is not None else SanitizerConfig(embed_dim=384)
    cfg = SanitizerConfig(embed_dim=dims[0], pooled_dim=dims[1], chunk_length=77, max_tokens=77,
                          concepts=base.concepts, width=base.width, layers=base.layers, heads=base.heads,
                          encoder_family=family, encoder_name=f"random {family}")
    torch.manual_seed(0)
    m = EmbeddingSanitizer(cfg)
    with torch.no_grad():
        m.sanitize_head.weight.normal_(0, 0.01)
        m.score_head.bias.fill_(0.0)
    return m.eval()


def measure_full_size(model: Optional[EmbeddingSanitizer], families=("sd1-clip-l", "sdxl-clip-lg"),
                      repeats: int = 5, log=print, threads: Optional[int] = 1) -> dict:
    """Full-size CLIP-L / SDXL (CLIP-L + bigG) text encoders with random weights."""
    from ..encoders import random_clip_encoder
    out = {}
    for family in families:
        t0 = time.perf_counter()
        encoder = random_clip_encoder(family, device="cpu")
        log(f"  built random {family} in {time.perf_counter() - t0:.1f}s")
        params = sum(p.numel() for m in encoder.models for p in m.parameters())
        r = measure_cost(encoder, sized_like(model, family), repeats=repeats, threads=threads)
        r["encoder_parameters"] = params
        out[family] = r
        del encoder
    return out


def file_cost(path: Optional[Path], model: EmbeddingSanitizer) -> dict:
    info = {"parameters": model.parameter_count()}
    if path is not None and Path(path).is_file():
        info["file_bytes"] = os.path.getsize(path)
    # The keys train.train_sanitizer writes into the weight file's "training" metadata.
    training = (getattr(model, "metadata", {}) or {}).get("training") or {}
    if "train_seconds" in training:
        info["training_seconds"] = training["train_seconds"]
    for key in ("device", "steps"):
        if key in training:
            info[f"training_{key}"] = training[key]
    return info
