"""The enforcement rule both hosts apply (ComfyUI's operator mode, A1111 / Forge's enforce switch).

The operator's settings are the weakest sanitizing any generation gets. Intensity: the
operator's minimum is a floor; a node or request may ask for more, never less. Threshold: the
operator's threshold is a ceiling; a node or request may set a lower one (more tokens gated),
never a higher one. So whatever a workflow or request says, enforcement can only get stronger.
The negative prompt is a positive one wherever its CFG scale gives it positive weight.
"""

from __future__ import annotations


def enforced_strength(min_intensity: float, max_threshold: float,
                      intensity: float, threshold: float) -> tuple[float, float]:
    """(intensity, threshold) to sanitize with: the requested ones, made at least as strong
    as the operator's floor and ceiling."""
    return max(min_intensity, intensity), min(max_threshold, threshold)


def is_strong_enough(min_intensity: float, max_threshold: float, intensity: float, threshold: float) -> bool:
    """Whether sanitizing at (intensity, threshold) already meets the operator's floor and ceiling."""
    return intensity >= min_intensity and threshold <= max_threshold


def negative_counts(cfg_scale: float) -> bool:
    """Whether the negative conditions the image like a positive: uncond + cfg * (cond - uncond)
    gives the negative the weight 1 - cfg, positive below CFG 1 (NaN: assume so)."""
    return not cfg_scale >= 1
