"""Host-free logic of the AUTOMATIC1111 / Forge extension (scripts/embedding_sanitizer.py).

Nothing here imports the webui (`modules.*`): the conditioning structures are handled by
duck typing, so unit tests can build look-alikes and CI can run them without a webui.

- Conditioning: the webui gives the sampler a `MulticondLearnedConditioning` for the
  positive prompt (`.batch`: per image a list of `ComposableScheduledPromptConditioning`,
  each with `.schedules`, a list of `ScheduledPromptConditioning(end_at_step, cond)`
  namedtuples) and a list of schedule lists for the negative one. `cond` is a (T, D)
  tensor (SD 1.x / 2.x) or a dict {'crossattn': (T, 2048), 'vector': (2816,)} (SDXL, whose
  first 1280 entries of `vector` are CLIP-G's pooled output).
- Infotext: format and parse the "Embedding Sanitizer" generation parameter.
- Settings resolution: what a generation applies, given the options, the per-generation
  control and the operator's enforcement switch.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from . import families
from .model import DEFAULT_THRESHOLD

SECTION = ("embedding_sanitizer", "Embedding Sanitizer")
INFOTEXT_KEY = "Embedding Sanitizer"
SCRIPT_TITLE = "Embedding Sanitizer"
WEIGHTS_FOLDER = "sanitizers"            # <webui>/models/sanitizers
WEIGHT_SUFFIXES = (".safetensors",)

OPT_ENABLED = "embedding_sanitizer_enabled"
OPT_INTENSITY = "embedding_sanitizer_intensity"
OPT_THRESHOLD = "embedding_sanitizer_threshold"
OPT_CONCEPTS = "embedding_sanitizer_concepts"
OPT_WEIGHTS = "embedding_sanitizer_weights"
OPT_ENFORCE = "embedding_sanitizer_enforce"
OPT_ENFORCE_INTENSITY = "embedding_sanitizer_enforce_min_intensity"

DEFAULTS = {
    OPT_ENABLED: False, OPT_INTENSITY: 1.0, OPT_THRESHOLD: DEFAULT_THRESHOLD, OPT_CONCEPTS: "",
    OPT_WEIGHTS: "", OPT_ENFORCE: False, OPT_ENFORCE_INTENSITY: 1.0,
}
# Infotext names of the options that pasting parameters restores (as override settings).
PASTE_NAMES = {OPT_WEIGHTS: "Embedding Sanitizer weights", OPT_THRESHOLD: "Embedding Sanitizer threshold",
               OPT_CONCEPTS: "Embedding Sanitizer concepts"}

# Which sanitizer family fits which model; keys are what `model_family` returns.
MODEL_FAMILIES = families.webui_families()
POOLED_IN_VECTOR = {"sdxl-clip-lg": 1280}


class RefusedGeneration(RuntimeError):
    """Enforcement is on and the positive conditioning could not be sanitized."""


# ----------------------------------------------------------------------------- settings

def parse_concepts(value: Any) -> Optional[tuple[str, ...]]:
    """'nudity, violence' / ['nudity'] -> ('nudity', 'violence'); empty -> None (all concepts)."""
    if value is None:
        return None
    items = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))
    return names or None


@dataclass(frozen=True)
class Decision:
    """What one generation applies."""
    active: bool
    intensity: float
    threshold: float
    concepts: Optional[tuple[str, ...]]   # None = every concept of the weight file
    weights: str                           # file name inside models/sanitizers
    enforced: bool


def resolve_settings(opts: Mapping[str, Any], ui_enabled: Optional[bool] = None,
                     ui_intensity: Optional[float] = None, operator: Optional[Mapping[str, Any]] = None) -> Decision:
    """Combine the settings (`opts`, already including any override_settings) with the
    per-generation control (None = not given, e.g. an API request without alwayson args).

    Enforcement ("enforce on every generation", an option the API cannot change) makes the
    sanitizer active whatever the request says, erases every concept of the weight file with
    threshold 0, and uses at least the operator's minimum intensity: a request can only make
    it stronger.

    `operator` holds values no request can reach: the command-line flag and the enforcement
    options as they were when the webui started (Forge's POST /sdapi/v1/options ignores
    `restrict_api`, so the live option alone is not enough). Enforcement is on if either
    says so, with the higher minimum intensity: a running webui can tighten it, only a
    restart loosens it.
    """
    get = lambda key: opts.get(key, DEFAULTS[key])  # noqa: E731
    enabled = bool(get(OPT_ENABLED)) if ui_enabled is None else bool(ui_enabled)
    intensity = float(get(OPT_INTENSITY)) if ui_intensity is None else float(ui_intensity)
    if intensity != intensity or intensity < 0:     # NaN or negative
        intensity = 0.0
    threshold = min(max(float(get(OPT_THRESHOLD)), 0.0), 1.0)
    concepts = parse_concepts(get(OPT_CONCEPTS))
    weights = str(get(OPT_WEIGHTS) or "").strip()
    operator = operator or {}
    enforced = bool(get(OPT_ENFORCE)) or bool(operator.get(OPT_ENFORCE))
    if enforced:
        floors = [_positive(get(OPT_ENFORCE_INTENSITY))]
        if operator.get(OPT_ENFORCE):
            floors.append(_positive(operator.get(OPT_ENFORCE_INTENSITY, 1.0)))
        floor = max(floors)
        return Decision(True, max(intensity, floor), 0.0, None, weights, True)
    return Decision(enabled and intensity > 0, intensity, threshold, concepts, weights, False)


def _positive(value) -> float:
    """A minimum intensity: a positive number, else 1.0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 1.0
    return value if value == value and value > 0 else 1.0


def operator_settings(startup_opts: Mapping[str, Any], flag: bool = False) -> dict:
    """The enforcement an operator set outside any request: config at startup, or the flag."""
    enforce = bool(flag) or bool(startup_opts.get(OPT_ENFORCE, False))
    return {OPT_ENFORCE: enforce,
            OPT_ENFORCE_INTENSITY: _positive(startup_opts.get(OPT_ENFORCE_INTENSITY, 1.0))}


def pick_weights(requested: str, available: Sequence[str]) -> Optional[str]:
    """The weight file to use: the requested one if present, else the only/first one."""
    if requested and requested in available:
        return requested
    if requested:
        return None
    return sorted(available)[0] if available else None


# ----------------------------------------------------------------------------- model match

def model_family(is_sdxl: bool = False, is_sd2: bool = False, is_sd1: bool = True) -> Optional[str]:
    """The sanitizer family a loaded webui model needs (None: no sanitizer family exists)."""
    if is_sdxl:
        return MODEL_FAMILIES["sdxl"]
    if is_sd2:
        return MODEL_FAMILIES["sd2"]
    return MODEL_FAMILIES["sd1"] if is_sd1 else None


def mismatch_message(weights_name: str, sanitizer_family: str, needed_family: Optional[str]) -> Optional[str]:
    """A one-line warning when the sanitizer does not fit the loaded model, else None."""
    if needed_family == sanitizer_family:
        return None
    wanted = needed_family or "an unsupported text encoder"
    return (f"Embedding Sanitizer: '{weights_name}' is a {sanitizer_family} sanitizer but the "
            f"loaded model uses {wanted}; choose a matching file in models/{WEIGHTS_FOLDER}")


# ----------------------------------------------------------------------------- conditioning

def cond_to_tensors(cond, pooled_dim: int = 0):
    """One schedule's cond -> (embedding (1, T, D), pooled (1, P) or None)."""
    if isinstance(cond, Mapping):
        emb = cond["crossattn"]
        pooled = cond["vector"][..., :pooled_dim].reshape(1, -1) if pooled_dim and "vector" in cond else None
    else:
        emb, pooled = cond, None
    if emb.dim() != 2:
        raise ValueError(f"expected a (tokens, dim) conditioning tensor, got shape {tuple(emb.shape)}")
    return emb.unsqueeze(0), pooled


def tensors_to_cond(original, embedding: torch.Tensor, pooled: Optional[torch.Tensor]):
    """Inverse of cond_to_tensors: a NEW cond of the original's kind; the original is untouched
    (the webui's prompt caches and Forge's inference-mode tensors must not be edited)."""
    emb = embedding.reshape(embedding.shape[-2:])
    if not isinstance(original, Mapping):
        return emb
    new = dict(original)
    new["crossattn"] = emb
    if pooled is not None:
        vector = original["vector"]
        p = pooled.reshape(-1).to(vector.dtype)
        new["vector"] = torch.cat([p, vector[..., p.shape[0]:]], dim=-1)
    return new


def schedule_lists(conditioning) -> list[list]:
    """Every list of ScheduledPromptConditioning in a positive (Multicond) or negative
    (list of lists) conditioning. The lists are the webui's own; entries are replaced in place."""
    out = []
    if hasattr(conditioning, "batch"):                       # MulticondLearnedConditioning
        for composables in conditioning.batch:
            for composable in composables:
                out.append(composable.schedules)
    else:                                                    # list[list[ScheduledPromptConditioning]]
        for schedules in conditioning:
            out.append(schedules)
    return out


def _key(cond):
    return id(cond["crossattn"]) if isinstance(cond, Mapping) else id(cond)


@dataclass
class SanitizeLedger:
    """Which conds of one generation were sanitized, so each distinct one is done once even
    though the hires pass (and Forge's second hook call) hands the same objects again."""
    done: dict = field(default_factory=dict)        # id(original) -> (original, sanitized)
    produced: set = field(default_factory=set)      # ids of sanitized conds
    keep: list = field(default_factory=list)        # keeps produced objects alive (stable ids)
    results: list = field(default_factory=list)     # (original cond, SanitizeResult) in order


def sanitize_conditioning(conditioning, fn: Callable, ledger: SanitizeLedger, pooled_dim: int = 0) -> int:
    """Replace every schedule entry's cond with fn's sanitized version, in place in the lists.

    fn(embedding (1,T,D), pooled (1,P) or None) -> SanitizeResult. Returns how many distinct
    conds were newly sanitized. Entries already sanitized (same object) are skipped; an
    original met again is replaced by its earlier result without calling fn.
    """
    count = 0
    for schedules in schedule_lists(conditioning):
        for i, entry in enumerate(schedules):
            cond = entry.cond
            key = _key(cond)
            if key in ledger.produced:
                continue
            if key not in ledger.done:
                emb, pooled = cond_to_tensors(cond, pooled_dim)
                result = fn(emb, pooled)
                new = tensors_to_cond(cond, result.embedding, result.pooled)
                ledger.done[key] = (cond, new)
                ledger.produced.add(_key(new))
                ledger.keep.append(new)
                ledger.results.append((cond, result))
                count += 1
            schedules[i] = entry._replace(cond=ledger.done[key][1])
    return count


def max_change(ledger: SanitizeLedger) -> float:
    """Largest absolute change the sanitizer made to any cond of the ledger (for the debug log)."""
    worst = 0.0
    for original, new in ledger.done.values():
        for a, b in ((original, new),) if not isinstance(original, Mapping) else \
                ((original["crossattn"], new["crossattn"]), (original["vector"], new["vector"])):
            worst = max(worst, float((b.float() - a.float()).abs().max()))
    return worst


def conditioning_signature(conditioning) -> list[tuple]:
    """(end_at_step, id) of every schedule: for checks that the negative was left alone."""
    return [(e.end_at_step, _key(e.cond)) for s in schedule_lists(conditioning) for e in s]


class _PoisonedBatch(list):
    """Stands in for a MulticondLearnedConditioning's batch when enforcement refuses a
    generation: any use by the sampler raises, so nothing unsanitized can be generated even
    though the webui's ScriptRunner swallows exceptions raised by script hooks."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def _refuse(self, *args, **kwargs):
        raise RefusedGeneration(self.reason)

    __iter__ = __getitem__ = __len__ = _refuse


def poison_conditioning(conditioning, reason: str) -> None:
    """Make the positive conditioning unusable (fail closed)."""
    if hasattr(conditioning, "batch"):
        conditioning.batch = _PoisonedBatch(reason)
    else:
        for schedules in conditioning:
            schedules.clear()
        raise RefusedGeneration(reason)


# ----------------------------------------------------------------------------- tokens

def chunk_tokens(chunks: Sequence[Sequence[int]], id_to_token: Callable[[int], str],
                 special_ids: Iterable[int]) -> tuple[list[str], list[bool]]:
    """The webui's token chunks (each 77 ids incl. BOS/EOS/padding) -> (display strings,
    real mask) per position, aligned with the cond's rows (row 77*c + j = chunk c, id j)."""
    special = set(special_ids)
    tokens, real = [], []
    for chunk in chunks:
        for tid in chunk:
            is_real = tid not in special
            tokens.append(_clean_token(id_to_token(tid)) if is_real else "")
            real.append(is_real)
    return tokens, real


def _clean_token(piece: Optional[str]) -> str:
    piece = piece or "?"
    return piece[:-4] if piece.endswith("</w>") else piece


def report_html(rows: Sequence[Mapping], title: str = "") -> str:
    """Tokens coloured by score (classes from style.css); erased ones struck through."""
    if not rows:
        return "<div class='es-tokens es-empty'>No tokens were scored.</div>"
    spans = []
    for r in rows:
        level = "high" if r["score"] >= 0.5 else "mid" if r["score"] >= 0.1 else "low"
        cls = f"es-token es-{level}" + (" es-erased" if r.get("erased") else "")
        tip = f"{r.get('concept', '')} score {r['score']:.2f}, gate {r.get('gate', 0.0):.2f}"
        spans.append(f"<span class='{cls}' title='{html.escape(tip, quote=True)}'>"
                     f"{html.escape(str(r['token']))}<sub>{r['score']:.2f}</sub></span>")
    head = f"<div class='es-title'>{html.escape(title)}</div>" if title else ""
    return f"<div class='es-tokens'>{head}{' '.join(spans)}</div>"


# ----------------------------------------------------------------------------- infotext

def format_infotext(weights_name: str, decision: Decision, erased_tokens: int) -> str:
    parts = [weights_name, f"intensity {decision.intensity:g}"]
    if decision.threshold > 0:
        parts.append(f"threshold {decision.threshold:g}")
    if decision.concepts:
        parts.append("concepts " + "+".join(decision.concepts))
    parts.append(f"erased tokens {int(erased_tokens)}")
    if decision.enforced:
        parts.append("enforced")
    return ", ".join(parts)


_INFOTEXT = re.compile(
    r"^\s*(?P<weights>.*?), intensity (?P<intensity>[0-9.eE+-]+)"
    r"(?:, threshold (?P<threshold>[0-9.eE+-]+))?"
    r"(?:, concepts (?P<concepts>[^,]*))?"
    r", erased tokens (?P<erased>\d+)(?P<enforced>, enforced)?\s*$")


def parse_infotext(value: str) -> Optional[dict]:
    """The fields of an "Embedding Sanitizer" value, or None when it is not one of ours.
    Accepts the value with or without the quotes the webui puts around values with commas."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"')
    m = _INFOTEXT.match(value)
    if not m:
        return None
    return {"weights": m["weights"], "intensity": float(m["intensity"]),
            "threshold": float(m["threshold"] or 0.0),
            "concepts": parse_concepts(m["concepts"]) if m["concepts"] else None,
            "erased_tokens": int(m["erased"]), "enforced": bool(m["enforced"])}


def settings_from_infotext(params: Mapping[str, Any]) -> dict:
    """For pasting parameters back: the per-generation control values and options to restore.
    Without our key the toggle is switched off (the pasted image was not sanitized)."""
    parsed = parse_infotext(params.get(INFOTEXT_KEY, "")) if INFOTEXT_KEY in params else None
    if parsed is None:
        return {"enabled": False}
    options = {OPT_WEIGHTS: parsed["weights"], OPT_THRESHOLD: parsed["threshold"],
               OPT_CONCEPTS: ", ".join(parsed["concepts"] or ())}
    if parsed["enforced"]:      # enforced runs used threshold 0 and every concept
        options.update({OPT_THRESHOLD: 0.0, OPT_CONCEPTS: ""})
    return {"enabled": True, "intensity": parsed["intensity"], "options": options}
