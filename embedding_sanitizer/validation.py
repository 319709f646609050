"""The rules for values that reach the engine from outside: a node's inputs, an API request,
a settings file, the command line. Each rule lives here once; the engine and every host
adapter (ComfyUI, A1111 / Forge, CLI) call these functions, so a value one boundary rejects
is rejected by all of them with the same message.

Any value may be of the wrong type, NaN, infinite, huge or hostile: these functions never
pass such a value on, and their messages say what was wrong and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Iterable, Optional

import torch

MAX_INTENSITY = 4.0           # gates saturate at 1; stronger than 4 changes nothing useful
MAX_CONCEPT_NAME = 64         # characters


class InvalidValue(ValueError):
    """A value handed to the engine has the wrong type or is out of range."""


class NonFiniteResult(ValueError):
    """The sanitizer produced NaN or infinite values (damaged weights or input): refuse the
    result rather than pass on an embedding that was silently left unsanitized."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(value: Any, name: str, low: float, high: float) -> float:
    """A finite real number in [low, high]; anything else raises InvalidValue."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise InvalidValue(f"{name} must be a number from {low:g} to {high:g}, got {type(value).__name__} "
                           f"{_shown(value)}")
    try:
        result = float(value)
    except (OverflowError, ValueError, TypeError, RuntimeError):
        raise InvalidValue(f"{name} must be a number from {low:g} to {high:g}, got {_shown(value)}") from None
    if not math.isfinite(result) or not low <= result <= high:
        raise InvalidValue(f"{name} must be a number from {low:g} to {high:g}, got {_shown(value)}")
    return result


def argument(check):
    """An argparse type: a float that passes `check` (NaN and out-of-range are refused)."""
    def parse(text):
        try:
            return check(float(text))
        except (ValueError, OverflowError) as exc:
            raise argparse.ArgumentTypeError(str(exc) if isinstance(exc, InvalidValue)
                                             else f"not a number: {text!r}") from None
    return parse


def intensity(value: Any) -> float:
    """How strongly flagged tokens are rewritten: 0 (off) to MAX_INTENSITY."""
    return number(value, "intensity", 0.0, MAX_INTENSITY)


def threshold(value: Any) -> float:
    """The score below which tokens are left alone: 0 to 1."""
    return number(value, "threshold", 0.0, 1.0)


def minimum_intensity(value: Any) -> float:
    """An operator's enforced minimum intensity: above 0 (0 would enforce nothing) to MAX_INTENSITY."""
    return _within(value, intensity, lambda v: v > 0,
                   f"minimum intensity must be a number above 0 and at most {MAX_INTENSITY:g}")


def threshold_ceiling(value: Any) -> float:
    """An operator's enforced threshold: 0 to below 1 (at 1 no score reaches it: nothing is erased)."""
    return _within(value, threshold, lambda v: v < 1, "threshold ceiling must be a number from 0 to below 1")


def _within(value: Any, check, narrower, rule: str) -> float:
    try:
        result = check(value)
    except InvalidValue:
        result = None
    if result is None or not narrower(result):
        raise InvalidValue(f"{rule}, got {_shown(value)}")
    return result


def concept_name(value: Any) -> str:
    """A concept's name, as weight files record it and users select it: one word of letters,
    digits, '-' or '_', at most MAX_CONCEPT_NAME characters (surrounding spaces are dropped)."""
    if not isinstance(value, str):
        raise InvalidValue(f"a concept name must be a string, got {type(value).__name__} {_shown(value)}")
    name = value.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise InvalidValue(f"concept name {_shown(name)} must be a single word (letters, digits, - or _)")
    if len(name) > MAX_CONCEPT_NAME:
        raise InvalidValue(f"concept name {_shown(name)} is longer than {MAX_CONCEPT_NAME} characters")
    return name


def concepts(value: Any, known: Optional[Iterable[str]] = None) -> Optional[tuple[str, ...]]:
    """Concept names to erase, stripped and de-duplicated; None means every concept.

    Accepts None, a comma- (or '+'-) separated string ('' = every concept, as the settings
    say), or a list / tuple of names (an empty one is refused: it would erase nothing).
    With `known`, every name must be one of them.
    """
    if value is None:
        return None
    if isinstance(value, str):
        items = value.replace("+", ",").split(",")
        if not value.strip():
            return None
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            raise InvalidValue("concepts is an empty list, which would erase nothing; "
                               "pass None (or '') for every concept, or name at least one")
        bad = [v for v in items if not isinstance(v, str)]
        if bad:
            raise InvalidValue(f"concepts must be names (strings), got {_shown(bad[0])}")
    else:
        raise InvalidValue(f"concepts must be a comma-separated string or a list of names, "
                           f"got {type(value).__name__} {_shown(value)}")
    names = tuple(dict.fromkeys(concept_name(v) for v in items if v.strip()))
    if not names:
        raise InvalidValue(f"concepts {_shown(value)} names no concept")
    if known is not None:
        known = tuple(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvalidValue(f"unknown concept(s) {', '.join(map(_shown, unknown))}; "
                               f"this sanitizer knows {', '.join(known)}")
    return names


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object_pairs_hook that refuses a key given twice, which json would silently read
    as its last value: in a settings file that hides which value is meant."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise InvalidValue(f"the key {_shown(key)} is given twice in one object; keep one")
        result[key] = value
    return result


def require_finite(what: str, *tensors: Optional[torch.Tensor]) -> None:
    """Raise NonFiniteResult when any given tensor holds NaN or an infinity."""
    for tensor in tensors:
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteResult(f"Embedding Sanitizer: {what} contains NaN or infinite values; the weight "
                                  f"file or the input is damaged, so nothing was sanitized")


def finite_input(embedding: torch.Tensor, pooled: Optional[torch.Tensor]) -> None:
    """An embedding (or pooled vector) with NaN or an infinity would make every score NaN."""
    for name, tensor in (("embedding", embedding), ("pooled output", pooled)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise InvalidValue(f"the {name} to sanitize contains NaN or infinite values; "
                               f"the text encoder or an earlier node produced them")
