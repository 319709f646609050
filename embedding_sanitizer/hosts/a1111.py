"""Host-free logic of the AUTOMATIC1111 / Forge extension (scripts/sanitizer_script.py).

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

import hashlib
import html
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from .. import families, validation
from ..builtin import BUILTIN_NAME, is_builtin
from ..disguise import plain_reading
from ..enforcement import enforced_strength, negative_counts
from ..encoders import EncodedBatch, concat_batches, token_span
from ..model import DEFAULT_THRESHOLD

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
# Width of the pooled output at the start of an SDXL cond's `vector` (the rest are size embeddings).
POOLED_IN_VECTOR = {f.id: f.pooled_dim for f in families.FAMILIES.values() if f.webui_type and f.pooled_dim}


class RefusedGeneration(RuntimeError):
    """Enforcement is on and the positive conditioning could not be sanitized."""


# ----------------------------------------------------------------------------- settings
#
# Every value below may come from an API request (alwayson_scripts args, override_settings),
# from POST /sdapi/v1/options or from a hand-edited config.json: of any type, NaN, huge.
# The webui's ScriptRunner swallows exceptions from hooks, so nothing here may raise:
# enforcement is decided first, from values no request can reach; while it is on, a value
# that cannot be read refuses the generation; while it is off, such a value is replaced by
# its default and a note says so.

class _Unreadable:
    """Stands for an option whose reading raised."""

    def __init__(self, error: BaseException):
        self.error = error

    def __repr__(self):
        return f"<unreadable: {self.error!r}>"[:120]


def read_options(read: Callable[[str], Any]) -> dict:
    """Every option of ours through `read` (e.g. getattr on the webui's opts); a key whose
    reading raises is kept as an _Unreadable value instead of raising."""
    values = {}
    for key in DEFAULTS:
        try:
            values[key] = read(key)
        except Exception as exc:
            values[key] = _Unreadable(exc)
    return values


@dataclass(frozen=True)
class Decision:
    """What one generation applies."""
    active: bool
    intensity: float
    threshold: float
    concepts: Optional[tuple[str, ...]]   # None = every concept of the weight file
    weights: str                           # file name inside models/sanitizers
    enforced: bool
    refusal: Optional[str] = None          # enforced and a value could not be read: refuse
    notes: tuple[str, ...] = ()            # values replaced by defaults (not enforced)


def _floor(value: Any) -> Optional[float]:
    """A valid minimum intensity, else None."""
    try:
        return validation.minimum_intensity(value)
    except validation.InvalidValue:
        return None


def operator_settings(startup_opts: Mapping[str, Any], flag: bool = False) -> dict:
    """What the operator set outside any request: the config as it was at startup, or the
    --embedding-sanitizer-enforce flag. While enforced, its weight file, concepts, threshold
    and minimum intensity are pinned: no request or later option change can loosen them."""
    def startup(key):
        try:
            return startup_opts.get(key, DEFAULTS[key])
        except Exception as exc:
            return _Unreadable(exc)
    enforce = flag is True or _switched_on(startup(OPT_ENFORCE))
    return {OPT_ENFORCE: enforce,
            OPT_ENFORCE_INTENSITY: _floor(startup(OPT_ENFORCE_INTENSITY)) or 1.0,
            OPT_WEIGHTS: startup(OPT_WEIGHTS), OPT_CONCEPTS: startup(OPT_CONCEPTS),
            OPT_THRESHOLD: startup(OPT_THRESHOLD)}


def _switched_on(value: Any) -> bool:
    """An enforcement switch: anything but False / None / 0 / '' (an odd value, or one that
    could not be read, counts as on: the safe reading)."""
    return not (value is False or value is None or value == 0 or value == "") if not isinstance(
        value, _Unreadable) else True


def is_enforced(opts: Mapping[str, Any], operator: Optional[Mapping[str, Any]] = None) -> bool:
    """Enforcement: the operator's startup snapshot, or the live option switched on. Cannot raise."""
    try:
        if operator and operator.get(OPT_ENFORCE) is True:
            return True
        return _switched_on(opts.get(OPT_ENFORCE, False))
    except Exception:
        return True


def resolve_settings(opts: Mapping[str, Any], ui_enabled: Any = None, ui_intensity: Any = None,
                     operator: Optional[Mapping[str, Any]] = None) -> Decision:
    """Combine the settings (`opts`, already including any override_settings) with the
    per-generation control (None = not given, e.g. an API request without alwayson args).
    Never raises.

    Enforced (see is_enforced): the sanitizer is active whatever the request says, with the
    operator's weight file and concepts from startup (`operator`); intensity and threshold follow
    enforcement.enforced_strength, with the startup threshold as the ceiling and the higher of
    the startup and live minimum intensities as the floor: a request can only make it stronger.
    A request intensity or threshold that is not a valid value refuses the generation.
    Not enforced: invalid values fall back to their defaults, each with a note.
    """
    operator = operator or {}
    enforced = is_enforced(opts, operator)
    try:
        return (_enforced_decision if enforced else _free_decision)(opts, ui_enabled, ui_intensity, operator)
    except Exception as exc:             # a bug or a value no check foresaw: same rules
        if enforced:
            return _refused(f"its settings could not be read ({exc})")
        return Decision(False, 0.0, 0.0, None, "", False,
                        notes=(f"Embedding Sanitizer: settings could not be read ({exc}); not sanitized",))


def _refused(why: str, weights: str = "") -> Decision:
    return Decision(True, 1.0, 0.0, None, weights, True,
                    refusal=f"Embedding Sanitizer: {why}; enforcement is on, so the generation is refused")


def _enforced_decision(opts, ui_enabled, ui_intensity, operator) -> Decision:
    floor = max(operator.get(OPT_ENFORCE_INTENSITY) or 1.0, _floor(opts.get(OPT_ENFORCE_INTENSITY)) or 0.0)
    weights = operator.get(OPT_WEIGHTS, "")
    if not isinstance(weights, str):
        return _refused(f"the operator's weight file setting {weights!r:.60} is not a file name")
    try:
        concepts = validation.concepts(operator.get(OPT_CONCEPTS))
    except validation.InvalidValue as exc:
        return _refused(f"the operator's concepts setting is invalid ({exc})", weights)
    try:
        ceiling = validation.threshold_ceiling(operator.get(OPT_THRESHOLD, DEFAULT_THRESHOLD))
    except validation.InvalidValue as exc:
        return _refused(f"the operator's {exc}", weights)
    requested = opts.get(OPT_INTENSITY, DEFAULTS[OPT_INTENSITY]) if ui_intensity is None else ui_intensity
    try:
        intensity = validation.intensity(requested)
        threshold = validation.threshold(opts.get(OPT_THRESHOLD, ceiling))
    except validation.InvalidValue as exc:
        return _refused(f"the requested {exc}", weights)
    intensity, threshold = enforced_strength(floor, ceiling, intensity, threshold)
    return Decision(True, intensity, threshold, concepts, weights.strip(), True)


def _free_decision(opts, ui_enabled, ui_intensity, operator) -> Decision:
    notes = []

    def checked(value, check, default, what):
        try:
            return check(value)
        except (validation.InvalidValue, TypeError) as exc:
            notes.append(f"Embedding Sanitizer: {what}: {exc}; using {default!r} instead")
            return default

    def flag(value):
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise validation.InvalidValue(f"expected true or false, got {value!r:.60}")

    def name(value):
        if not isinstance(value, str):
            raise validation.InvalidValue(f"expected a file name, got {value!r:.60}")
        return value.strip()

    enabled_default = checked(opts.get(OPT_ENABLED, DEFAULTS[OPT_ENABLED]), flag, DEFAULTS[OPT_ENABLED],
                              "the 'sanitize by default' setting")
    enabled = enabled_default if ui_enabled is None else checked(ui_enabled, flag, enabled_default,
                                                                 "the requested on/off value")
    intensity_default = checked(opts.get(OPT_INTENSITY, DEFAULTS[OPT_INTENSITY]), validation.intensity,
                                DEFAULTS[OPT_INTENSITY], "the default intensity setting")
    intensity = intensity_default if ui_intensity is None else checked(
        ui_intensity, validation.intensity, intensity_default, "the requested intensity")
    threshold = checked(opts.get(OPT_THRESHOLD, DEFAULTS[OPT_THRESHOLD]), validation.threshold,
                        DEFAULTS[OPT_THRESHOLD], "the threshold setting")
    concepts = checked(opts.get(OPT_CONCEPTS, DEFAULTS[OPT_CONCEPTS]), validation.concepts, None,
                       "the concepts setting")
    weights = checked(opts.get(OPT_WEIGHTS, DEFAULTS[OPT_WEIGHTS]), name, "", "the weight file setting")
    return Decision(enabled and intensity > 0, intensity, threshold, concepts, weights, False, notes=tuple(notes))


def fit_concepts(decision: Decision, file_concepts: Sequence[str]) -> Decision:
    """Check the decision's concepts against the weight file's: an unknown one refuses an
    enforced generation, and otherwise falls back to every concept, with a note."""
    if decision.concepts is None:
        return decision
    try:
        validation.concepts(decision.concepts, file_concepts)
        return decision
    except validation.InvalidValue as exc:
        if decision.enforced:
            return _refused(f"the operator's concepts do not fit the weight file ({exc})", decision.weights)
        note = f"Embedding Sanitizer: {exc}; erasing every concept of the file instead"
        return replace(decision, concepts=None, notes=decision.notes + (note,))


def pick_weights(requested: str, available: Sequence[str]) -> Optional[str]:
    """The weight file to use: the requested one if present (BUILTIN_NAME: the built-in sanitizer),
    else the first file, else, with none in the folder, the built-in sanitizer."""
    if requested == BUILTIN_NAME or (requested and requested in available):
        return requested
    if requested:
        return None
    return sorted(available)[0] if available else BUILTIN_NAME


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

    def result_for(self, sanitized_cond):
        """The SanitizeResult that produced `sanitized_cond`, or None if it is not ours."""
        wanted = _key(sanitized_cond)
        for original, new in self.done.values():
            if _key(new) == wanted:
                return next(r for o, r in self.results if o is original)
        return None


def sanitize_prompt_schedules(conditioning, fn: Callable, ledger: SanitizeLedger, pooled_dim: int = 0,
                              texts: Optional[Sequence[Sequence[tuple[int, str]]]] = None) -> int:
    """Replace every schedule entry's cond with fn's sanitized version, in place in the lists.

    fn(embedding (1,T,D), pooled (1,P) or None, text or None) -> SanitizeResult, where `texts`
    (schedule_texts) gives each entry's (end_at_step, prompt text); an entry that does not end
    where its text does was not built from it, and gets None. Returns how many distinct conds
    were newly sanitized. Entries already sanitized (same object) are skipped; an original met
    again is replaced by its earlier result without calling fn.
    """
    count = 0
    lists = schedule_lists(conditioning)
    if texts is None or len(texts) != len(lists):
        texts = [()] * len(lists)
    for schedules, entry_texts in zip(lists, texts):
        if len(entry_texts) != len(schedules):
            entry_texts = [(None, None)] * len(schedules)
        for i, entry in enumerate(schedules):
            cond = entry.cond
            key = _key(cond)
            if key in ledger.produced:
                continue
            if key not in ledger.done:
                emb, pooled = cond_to_tensors(cond, pooled_dim)
                end, text = entry_texts[i]
                result = fn(emb, pooled, text if end == entry.end_at_step else None)
                new = tensors_to_cond(cond, result.embedding, result.pooled)
                ledger.done[key] = (cond, new)
                ledger.produced.add(_key(new))
                ledger.keep.append(new)
                ledger.results.append((cond, result))
                count += 1
            schedules[i] = entry._replace(cond=ledger.done[key][1])
    return count


def sanitize_conditioning(conditioning, model, decision: Decision, ledger: SanitizeLedger, reader=None,
                          texts: Optional[Sequence[Sequence[tuple[int, str]]]] = None,
                          model_family: Optional[str] = None) -> tuple[int, int]:
    """Sanitize a positive conditioning in place as `decision` says, each entry on the plain
    reading of its prompt text where `reader` (a WebuiTextReader) and `texts` give one. The
    built-in sanitizer (any encoder) needs both, and the loaded model's family (model_family)
    to find the pooled vector in an SDXL cond.
    Returns (distinct conds newly sanitized, how many of them were read plainly)."""
    read_plainly = []

    def sanitize(embedding, pooled, text):
        if is_builtin(model):      # it reads the text itself; without one it says so (NoTextError)
            read_plainly.append(bool(reader and text))
            return model.sanitize(embedding, pooled, text=text if reader else None, encoder=reader,
                                  intensity=decision.intensity, threshold=decision.threshold,
                                  concepts=decision.concepts)
        reading = plain_reading(model, reader, [text], embedding.shape[1]) if reader and text else None
        read_plainly.append(reading is not None)
        return model.sanitize(embedding, pooled, intensity=decision.intensity, threshold=decision.threshold,
                              concepts=decision.concepts, plain_reading=reading)

    pooled_dim = POOLED_IN_VECTOR.get(model_family if is_builtin(model) else model.config.encoder_family, 0)
    count = sanitize_prompt_schedules(conditioning, sanitize, ledger, pooled_dim, texts)
    return count, sum(read_plainly)


def schedule_texts(prompts: Sequence[str], parser, steps: int, hires_steps: Optional[int] = None,
                   use_old_scheduling: bool = False, negative: bool = False) -> list[list[tuple[int, str]]]:
    """(end_at_step, prompt text) of every schedule entry of the conditioning the webui builds from
    `prompts` with these steps, in schedule_lists' order: per image, per AND-part (a negative is
    one part: the webui does not split it at AND), per schedule. `parser` is the webui's
    modules.prompt_parser."""
    extra = () if hires_steps is None and not use_old_scheduling else (hires_steps, use_old_scheduling)
    if negative:
        schedules = parser.get_learned_conditioning_prompt_schedules(list(prompts), steps, *extra)
        return [[(end, text) for end, text in schedule] for schedule in schedules]
    out = []
    for prompt in prompts:
        parts, flat, _ = parser.get_multicond_prompt_list([prompt])
        schedules = parser.get_learned_conditioning_prompt_schedules(flat, steps, *extra)
        out += [[(end, text) for end, text in schedules[index]] for index, _ in parts[0]]
    return out


class WebuiTextReader:
    """What disguise.plain_reading needs of a text encoder, over the webui's: `conditioning`
    encodes a list of prompts as the webui does (sd_model.get_learned_conditioning), and
    `tokenize_line` is its text engine's (chunks of 77 ids with BOS, EOS and padding)."""

    def __init__(self, conditioning: Callable, tokenize_line: Callable, special_ids: Iterable[int],
                 pooled_dim: int = 0):
        self.conditioning, self.tokenize_line, self.special = conditioning, tokenize_line, set(special_ids)
        self.pooled_dim = pooled_dim        # SDXL: the pooled vector at the start of a cond's 'vector'

    def encode(self, prompts: Sequence[str]) -> EncodedBatch:
        parts = []
        for prompt in prompts:
            cond = self.conditioning([prompt])
            emb = (cond["crossattn"] if isinstance(cond, Mapping) else cond).float().cpu()
            pooled = None
            if self.pooled_dim and isinstance(cond, Mapping) and "vector" in cond:
                pooled = cond["vector"][..., :self.pooled_dim].reshape(emb.shape[0], -1).float().cpu()
            valid = torch.ones(emb.shape[:2], dtype=torch.bool)
            parts.append(EncodedBatch(emb, pooled, torch.zeros(emb.shape[:2], dtype=torch.long), [], valid, valid))
        return concat_batches(parts)

    def _real_tokens(self, text: str) -> tuple[list[int], list[int]]:
        chunks, _ = self.tokenize_line(text)
        real = [(77 * c + j, int(t)) for c, chunk in enumerate(chunks) for j, t in enumerate(chunk.tokens)
                if int(t) not in self.special]
        return [row for row, _ in real], [token for _, token in real]

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        rows, ids = self._real_tokens(text)
        span = token_span(ids, self._real_tokens(text[:start])[1], self._real_tokens(text[:end])[1])
        return [rows[i] for i in span or ()]


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


# ----------------------------------------------------------------------------- every sampling step
#
# Routes that build conds with no script hook (the refiner switch's p.setup_conds(), training
# previews, whatever comes next) are caught where every route ends: the text conditioning of each
# denoiser step (script_callbacks.on_cfg_denoiser), compared value for value with what was sanitized.

def lowest_cfg(p) -> float:
    """The lowest CFG scale p samples with (Forge's hires pass has its own); NaN when unreadable,
    which counts as below 1."""
    try:
        scales = [float(p.cfg_scale)] + [float(v) for v in [getattr(p, "hr_cfg", None)] if v is not None]
        return min(scales)
    except (TypeError, ValueError, AttributeError):
        return float("nan")


def step_uses_sanitized(text_cond, produced: Sequence) -> bool:
    """Whether every row block of a denoiser step's text conditioning (one (T, D) block per image
    and AND part, as the webui reconstructs it for the step: a cond, then its last row repeated
    up to the longest) is one of the `produced` (sanitized) conds, value for value."""
    if isinstance(text_cond, Mapping):
        crossattn, vector = text_cond.get("crossattn"), text_cond.get("vector")
    else:
        crossattn, vector = text_cond, None
    if not torch.is_tensor(crossattn) or crossattn.dim() != 3 or crossattn.shape[0] == 0:
        return False
    return all(any(_block_is(crossattn[i], None if vector is None else vector[i], cond) for cond in produced)
               for i in range(crossattn.shape[0]))


def _block_is(block: torch.Tensor, vector: Optional[torch.Tensor], cond) -> bool:
    embedding = cond["crossattn"] if isinstance(cond, Mapping) else cond
    rows = embedding.shape[0]
    if rows > block.shape[0] or embedding.shape[1:] != block.shape[1:]:
        return False
    embedding = embedding.to(block.device, block.dtype)
    if not (torch.equal(block[:rows], embedding) and torch.equal(block[rows:], embedding[-1:].expand_as(block[rows:]))):
        return False
    if vector is None:
        return not isinstance(cond, Mapping)
    return isinstance(cond, Mapping) and torch.equal(vector, cond["vector"].to(vector.device, vector.dtype))


def step_refusal(ledger: Optional["SanitizeLedger"], text_cond, text_uncond, cfg_scale: float) -> Optional[str]:
    """Why an enforced generation must not take this sampling step, or None. `ledger` is the
    generation's (None: the extension never set it up, e.g. a training preview built with no scripts)."""
    if ledger is None:
        return ("this generation was not set up by Embedding Sanitizer (a path that runs no scripts, "
                "such as a training preview)")
    if not step_uses_sanitized(text_cond, ledger.keep):
        return ("the sampler switched to a conditioning that was not sanitized (for example after a "
                "refiner switch)")
    if negative_counts(cfg_scale) and not step_uses_sanitized(text_uncond, ledger.keep):
        return "with CFG below 1 the negative prompt acts as a positive one, and it was not sanitized"
    return None


def refused_conditioning(reason: str):
    """A stand-in for a step's text conditioning that raises RefusedGeneration(reason) at its first
    use: a cfg_denoiser callback cannot stop sampling by raising (the webui swallows it)."""
    def refuse(*args, **kwargs):
        raise RefusedGeneration(reason)

    class RefusedTensor(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            refuse()

    return torch.empty(0).as_subclass(RefusedTensor)


# ----------------------------------------------------------------------------- the webui's objects
#
# Duck-typed readers of the webui's processing object and text engines (A1111 and Forge).

def privatize_caches(p) -> None:
    """Give p its own positive prompt caches (and negative ones below CFG 1, where the negative is
    sanitized too): the webui's class-wide ones (shared by all requests, keyed without our
    settings) must never hold sanitized or refused conds."""
    negative = ("cached_uc", "cached_hr_uc") if negative_counts(lowest_cfg(p)) else ()
    for attr in ("cached_c", "cached_hr_c") + negative:
        cache = getattr(p, attr, None)
        if cache is not None and cache is getattr(type(p), attr, None):
            setattr(p, attr, [None] * len(cache))


def schedule_steps(p, stage: str, use_old_scheduling: bool) -> tuple:
    """The steps the webui built a stage's prompt schedules with (processing.setup_conds): the
    sampler's total steps, and for the hires pass its own total after them."""
    first = getattr(p, "firstpass_steps", None) or p.steps
    hires = None
    if stage == "hires":
        hires = (getattr(p, "hr_second_pass_steps", 0) or p.steps) * getattr(p, "step_multiplier", 1)
    return first, hires, use_old_scheduling


def special_ids(engine) -> set:
    """The text engine's BOS, EOS and padding ids: the rows that hold no prompt token."""
    return {getattr(engine, a, None) for a in ("id_start", "id_end", "id_pad")} - {None}


def text_engine(sd_model):
    """The webui's CLIP(-L) prompt tokenizer (A1111 hijack wrapper / Forge engine), or None."""
    for name in ("text_processing_engine", "text_processing_engine_l"):   # Forge
        engine = getattr(sd_model, name, None)
        if engine is not None and hasattr(engine, "tokenize_line"):
            return engine
    engine = getattr(sd_model, "cond_stage_model", None)                   # A1111 SD 1.x / 2.x
    if engine is not None and hasattr(engine, "tokenize_line"):
        return engine
    for engine in getattr(getattr(sd_model, "conditioner", None), "embedders", []):  # A1111 SDXL
        if hasattr(engine, "tokenize_line"):
            return engine
    return None


def first_prompt(p) -> str:
    return str((getattr(p, "prompts", None) or [p.prompt])[0])


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
                     f"<span class='es-text'>{html.escape(str(r['token']))}</span>"
                     f"<sub>{r['score']:.2f}</sub></span>")
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
    try:
        concepts = validation.concepts(m["concepts"]) if m["concepts"] else None
    except validation.InvalidValue:
        return None
    return {"weights": m["weights"], "intensity": float(m["intensity"]),
            "threshold": float(m["threshold"] or 0.0),
            "concepts": concepts,
            "erased_tokens": int(m["erased"]), "enforced": bool(m["enforced"])}


def settings_from_infotext(params: Mapping[str, Any]) -> dict:
    """For pasting parameters back: the per-generation control values and options to restore.
    Without our key the toggle is switched off (the pasted image was not sanitized)."""
    parsed = parse_infotext(params.get(INFOTEXT_KEY, "")) if INFOTEXT_KEY in params else None
    if parsed is None:
        return {"enabled": False}
    options = {OPT_WEIGHTS: parsed["weights"], OPT_THRESHOLD: parsed["threshold"],
               OPT_CONCEPTS: ", ".join(parsed["concepts"] or ())}
    return {"enabled": True, "intensity": parsed["intensity"], "options": options}


# ----------------------------------------------------------------------------- display
#
# The accordion shows the state of the generation the browser just received, never one
# of another user or an earlier run: after each generation the page sends its own
# generation info (JSON) and log text; the token display is looked up by its prompt and
# infotext value, so nobody can see a display without already knowing that prompt.

class DisplayStore:
    """The token displays of recent generations, keyed by (prompt, infotext value)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: "OrderedDict[str, str]" = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(prompt: str, infotext_value: str) -> str:
        return hashlib.sha256(f"{prompt}\0{infotext_value}".encode("utf-8", "replace")).hexdigest()

    def put(self, prompt: str, infotext_value: str, tokens_html: str) -> None:
        with self._lock:
            self._items[self.key(prompt, infotext_value)] = tokens_html
            self._items.move_to_end(self.key(prompt, infotext_value))
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, prompt: str, infotext_value: str) -> Optional[str]:
        with self._lock:
            return self._items.get(self.key(prompt, infotext_value))


def warning_html(text: str) -> str:
    return f"<div class='es-warning'>{html.escape(text)}</div>"


def _our_log_lines(log_text: str) -> list[str]:
    lines = [line.strip() for line in str(log_text or "").splitlines() if "Embedding Sanitizer" in line]
    return [line[:600] for line in lines[:6]]


def display_html(store: DisplayStore, request: Any) -> str:
    """The accordion's display for the page's latest generation.

    `request`: JSON text {"info": <the page's generation info JSON text>, "log": <the text
    of the page's log area>}, as javascript/embedding_sanitizer.js sends it. Never raises.
    """
    try:
        request = json.loads(request) if isinstance(request, str) and request else {}
        info_text, log_text = request.get("info") or "", request.get("log") or ""
        info = json.loads(info_text) if isinstance(info_text, str) and info_text.strip() else None
        notes = _our_log_lines(log_text if isinstance(log_text, str) else "")
    except (ValueError, AttributeError, RecursionError):
        return warning_html("Embedding Sanitizer: the page sent an unreadable generation result")
    warnings = "".join(warning_html(n) for n in notes)
    if not isinstance(info, dict):
        if any("refused" in n for n in notes):
            return "<div class='es-status'>This generation was refused.</div>" + warnings
        return warnings
    params = info.get("extra_generation_params")
    value = params.get(INFOTEXT_KEY) if isinstance(params, dict) else None
    if not isinstance(value, str):
        why = "" if notes else " (the toggle was off)"
        return f"<div class='es-status'>This generation was not sanitized{why}.</div>" + warnings
    prompts = info.get("all_prompts")
    prompt = prompts[0] if isinstance(prompts, list) and prompts else info.get("prompt", "")
    tokens = store.get(str(prompt), value)
    if tokens is None:
        tokens = ("<div class='es-tokens es-empty'>The token scores of this generation are no longer "
                  "kept (the webui restarted or many generations followed).</div>")
    return (f"<div class='es-status'>Sanitized: {html.escape(value)}</div>" + warnings + tokens)
