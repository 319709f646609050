"""ComfyUI operator mode: while the server's operator enforces it, every conditioning that reaches
sampling, except the negative one, is sanitized before the model sees it, whatever the workflow.

The switch is read once, when the pack loads: the file named by the environment variable
EMBEDDING_SANITIZER_OPERATOR_CONFIG, else /etc/embedding-sanitizer/operator.json (Windows:
%PROGRAMDATA%/embedding-sanitizer/operator.json), else <ComfyUI user directory>/embedding_sanitizer_operator.json
(operator_failsafe.config_location). Without any, nothing here is installed and ComfyUI runs exactly
as it would without it. With one, nothing is sampled unless it is enforced: a configuration that
cannot be used refuses every prompt, and a failure to set up refuses every generation (operator_failsafe).

The choke point is where ComfyUI turns CONDITIONING into what its samplers use:
`CFGGuider.inner_set_conds` (ComfyUI since the guiders of spring 2024: KSampler, KSamplerAdvanced,
SamplerCustom and SamplerCustomAdvanced with any guider) or, before guiders, `comfy.samplers.sample`
(through which KSampler and SamplerCustom both pass). Both see the same converted entries: dicts
holding the embedding as "cross_attn". Any failure refuses the prompt (an exception ComfyUI reports
for that node), never lets it through. CLIP Text Encode is wrapped too, to remember which text made
each conditioning tensor: with it, disguised words are read plainly here as in the nodes.

Behind the choke point, a guard at the model-apply level (`calc_cond_batch`, or in 2024
`calc_cond_uncond_batch`, with `sampling_function` for the CFG scale) checks every conditioning
right before the model is evaluated with it, whatever route brought it there (PerpNeg's own empty
conditioning, GLIGEN's box texts, a future sampler path): each must carry the mark of sanitizing
that meets the policy, or be the negative of a CFG of 1 or more; anything else is sanitized there
or refused. Below CFG 1 the negative weighs on the image like a positive and is sanitized as one:
with guiders when their sampling starts (`CFGGuider.sample`, where the scale is known and the
pooled vector not yet encoded; DualCFGGuider's scale for its negative is cfg_cond2_negative).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
import sys
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch

from embedding_sanitizer import families, load_sanitizer
from embedding_sanitizer.builtin import BUILTIN_NAME, BuiltinSanitizer, is_builtin, shared_builtin
from embedding_sanitizer.enforcement import negative_counts
from embedding_sanitizer.hosts.comfy_operator import (MARK_KEY, OperatorConfigError, enforcement_plan,
                                          read_operator_config, weights_fingerprint, with_operator)
from embedding_sanitizer.weights import file_sha256

from ..operator_failsafe import config_location, publish_state, refuse_every_generation
from .common import sanitize_conditioning
from .text_encoders import clip_family

NEGATIVE = "negative"
WRAPPED = "__embedding_sanitizer_wraps__"
# ComfyUI model classes (comfy.supported_models, matched along the MRO so SSD-1B, Segmind Vega,
# KOALA, inpaint and pix2pix variants follow their base) -> the sanitizer family of their text encoder.
MODEL_FAMILIES = families.comfy_image_model_families()
KEEP_PROMPTS = 256          # per-prompt records kept until the prompt's history is written

LOG = logging.getLogger("embedding_sanitizer")


class SanitizingRefused(RuntimeError):
    """Enforcement is on and this prompt cannot be sanitized: it must not be sampled.

    Its message is what every client is told (ComfyUI sends it through /history and the
    websocket): no paths, digests or error texts, which only the server log gets, as `detail`.
    Behind a reverse proxy every client looks local, so none is trusted with them."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def model_family(base_model) -> Optional[str]:
    config = getattr(base_model, "model_config", None)
    for cls in type(config).__mro__:
        if cls.__name__ in MODEL_FAMILIES:
            return MODEL_FAMILIES[cls.__name__]
    return None


class EncodedTexts:
    """The text and CLIP behind each conditioning tensor CLIP Text Encode made. The sampler's
    conds carry no text, and disguised words ("n u d e", "n4k3d") are only read plainly with it.
    A tensor is known by identity while it lives; the most recent KEEP are remembered."""
    KEEP = 512

    def __init__(self):
        self.entries: OrderedDict = OrderedDict()

    def remember(self, conditioning, clip, text) -> None:
        if not isinstance(text, str) or not isinstance(conditioning, list):
            return
        for entry in conditioning:
            tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else None
            if torch.is_tensor(tensor):
                self.entries[id(tensor)] = (weakref.ref(tensor), weakref.ref(clip), text)
                self.entries.move_to_end(id(tensor))
        while len(self.entries) > self.KEEP:
            self.entries.popitem(last=False)

    def find(self, *tensors):
        """(clip, text) of the first of `tensors` that CLIP Text Encode made, or (None, None)."""
        for tensor in tensors:
            found = self.entries.get(id(tensor))
            if found is not None and found[0]() is tensor and found[1]() is not None:
                return found[1](), found[2]
        return None, None


class Enforcer:
    """The operator's policy with its loaded sanitizers, and what it did per prompt."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.texts = EncodedTexts()
        self.policy = None
        self.error: Optional[str] = None          # refuses every prompt when set
        self.models, self.files, self.load_errors = {}, {}, {}
        self.records: OrderedDict = OrderedDict()
        # the guard's: id(embedding) -> (weakref to it, its sanitized entry), so it sanitizes once, not per step
        self.sanitized_here: OrderedDict = OrderedDict()
        # Families without a trained file get the built-in sanitizer, made on first need (it loads
        # MiniLM); a failure to make it is kept and refuses those families' prompts.
        self.builtin: Optional[BuiltinSanitizer] = None
        self.builtin_error: Optional[str] = None
        try:
            self.policy = read_operator_config(config_path)
        except Exception as exc:     # noqa: BLE001  whatever the file holds, refuse every prompt, never fail to load
            self.error = str(exc) if isinstance(exc, OperatorConfigError) else \
                f"reading {config_path} failed ({type(exc).__name__}: {exc})"
            return
        for family, spec in self.policy.sanitizers.items():
            self.files[family] = {"file": spec.path.name, "path": str(spec.path), "sha256": ""}
            try:
                digest = file_sha256(spec.path)
                self.files[family]["sha256"] = digest
                if spec.sha256 and digest != spec.sha256:
                    raise ValueError(f"{spec.path.name} has sha256 {digest}, the configuration pins "
                                     f"{spec.sha256}: the file was changed or replaced")
                model = load_sanitizer(spec.path, device="cpu")
                if model.config.encoder_family != family:
                    raise ValueError(f"{spec.path.name} is a sanitizer for '{model.config.encoder_family}', "
                                     f"not '{family}'")
                model.concept_mask(self.policy.concepts)     # raises on a concept the file lacks
                self.models[family] = model
            except Exception as exc:     # noqa: BLE001  any failure refuses this family's prompts
                self.load_errors[family] = str(exc)

    # ------------------------------------------------------------------ startup and state

    def log_startup(self) -> None:
        if self.error:
            LOG.error("Embedding Sanitizer: operator enforcement is ON but its configuration is unusable; "
                      "every prompt will be refused: %s", self.error)
            return
        LOG.warning("Embedding Sanitizer: operator enforcement is ON (%s): minimum intensity %g, threshold "
                    "at most %g, concepts %s", self.config_path, self.policy.min_intensity, self.policy.threshold,
                    ", ".join(self.policy.concepts or ["all"]))
        if os.access(self.config_path, os.W_OK) or os.access(self.config_path.parent, os.W_OK):
            LOG.warning("Embedding Sanitizer: ComfyUI's own process can change or replace %s; make it and its "
                        "folder writable only by the operator", self.config_path)
        for family, info in self.files.items():
            if family in self.load_errors:
                LOG.error("Embedding Sanitizer: %s -> %s NOT LOADED, its prompts will be refused: %s",
                          family, info["path"], self.load_errors[family])
            else:
                LOG.warning("Embedding Sanitizer: %s -> %s (sha256 %s)", family, info["path"], info["sha256"])

    def state(self) -> dict:
        """What GET /embedding_sanitizer/operator answers. No paths and no error texts (which may
        hold paths): behind a reverse proxy every client looks local, so none is trusted with them."""
        if self.error:
            return {"enforced": True, "ready": False, "problem": "the operator configuration is unusable; "
                    "every prompt is refused (details in the server log)"}
        return {"enforced": True, "ready": not self.load_errors,
                "min_intensity": self.policy.min_intensity, "threshold": self.policy.threshold,
                "concepts": list(self.policy.concepts or []) or "all",
                "sanitizers": {family: {"file": info["file"], "sha256": info["sha256"][:16],
                                        "loaded": family in self.models}
                               for family, info in self.files.items()},
                "other_families": BUILTIN_NAME}

    def summary(self) -> dict:
        """The policy as saved images and the history record it (file names, no paths)."""
        state = self.state()
        return {key: state[key] for key in ("enforced", "min_intensity", "threshold", "concepts", "sanitizers", "other_families")
                if key in state}

    # ------------------------------------------------------------------ the choke point

    def enforce(self, base_model, key: str, entries: list) -> list:
        """Sanitized copies of one guider input's converted entries; raises SanitizingRefused."""
        return _refusing_on_failure(f"sanitizing the '{key}' conditioning",
                                    lambda: self._enforce(base_model, key, entries))

    def _enforce(self, base_model, key, entries):
        if self.error:
            raise SanitizingRefused("Embedding Sanitizer (operator mode) refused to sample: the operator "
                                    "configuration is unusable; the server log says why", self.error)
        family = model_family(base_model)
        if family is not None and family in self.files:
            if family in self.load_errors:
                raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: the {family} "
                                        f"sanitizer did not load; check its file and sha256 in the operator "
                                        f"configuration (the server log says why)",
                                        f"{self.files[family]['path']}: {self.load_errors[family]}")
            model, name = self.models[family], self.files[family]["file"]
        else:
            model, name = self._builtin_sanitizer(base_model, family), BUILTIN_NAME
        policy = self.policy
        out = []
        for entry in entries:
            embedding = entry.get("cross_attn") if isinstance(entry, dict) else None
            if not torch.is_tensor(embedding):
                raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: an entry of "
                                        f"the '{key}' conditioning has no text embedding to sanitize")
            pooled = entry.get("pooled_output")
            plan = enforcement_plan(entry.get(MARK_KEY), embedding, pooled, weights_fingerprint(model), policy)
            if plan.keep:
                out.append(entry)
                self._record(key, {**plan.mark.record(), "file": name, "erased_tokens": None,
                                   "replaced_node_sanitizing": False})
                continue
            extras = dict(entry)
            if plan.pooled is not None:
                extras["pooled_output"] = plan.pooled
            clip, text = self.texts.find(plan.embedding, embedding)
            if is_builtin(model):
                if clip is None:
                    raise SanitizingRefused(
                        f"Embedding Sanitizer (operator mode) refused to sample: {self._no_file(base_model, family)}, "
                        f"and the {BUILTIN_NAME} sanitizer cannot read the '{key}' conditioning: it reads the "
                        f"prompt's text, which only CLIP Text Encode's conditionings carry")
            elif clip is not None and clip_family(clip, embedding.shape[-1]) != model.config.encoder_family:
                clip, text = None, None      # not this sanitizer's encoder: no reading, and no new refusal
            [[new_embedding, new_extras]], _, ui = sanitize_conditioning(
                [[plan.embedding, extras]], model, plan.intensity, plan.threshold, clip, text,
                concepts=policy.concepts)
            new_extras["cross_attn"] = new_embedding
            model_conds = new_extras.get("model_conds")
            if isinstance(model_conds, dict) and "c_crossattn" in model_conds:   # ComfyUI 2024 fills it early
                new_extras["model_conds"] = {**model_conds,
                                             "c_crossattn": type(model_conds["c_crossattn"])(new_embedding)}
            new_extras[MARK_KEY] = with_operator(new_extras[MARK_KEY], name)
            out.append(new_extras)
            self._record(key, {**new_extras[MARK_KEY].record(),
                               "erased_tokens": sum(u["erased_tokens"] for u in ui),
                               "replaced_node_sanitizing": plan.mark is not None})
        return out

    # ------------------------------------------------------------------ the model-apply guard

    def guard(self, base_model, key: str, entries, plain_allowed=frozenset()) -> list:
        """The entries the model may be evaluated with, right before it is: each one the policy
        vouches for, or whose embedding is in `plain_allowed` (a negative at CFG 1 or more), is
        passed on; any other is sanitized here (once per embedding) or refused."""
        return _refusing_on_failure("checking a conditioning before the model",
                                    lambda: [self._guarded(base_model, key, entry, plain_allowed) for entry in entries])

    def _guarded(self, base_model, key, entry, plain_allowed):
        if not isinstance(entry, dict):
            return entry
        gligen = entry.get("gligen")
        if isinstance(gligen, (list, tuple)) and gligen and gligen[0] == "position":
            # The box texts' CLIP vectors sit inside GLIGEN's own input, which no sanitizer rewrites.
            raise SanitizingRefused("Embedding Sanitizer (operator mode) refused to sample: GLIGEN box texts "
                                    "cannot be sanitized; remove GLIGENTextBoxApply from the workflow")
        embedding = used_embedding(entry)
        if id(embedding) in plain_allowed:
            return entry
        model = self._vouching_sanitizer(base_model) if self.error is None else None
        if model is not None:
            plan = enforcement_plan(entry.get(MARK_KEY), embedding, entry.get("pooled_output"),
                                    weights_fingerprint(model), self.policy)
            if plan.keep:
                return entry
        cached = self.sanitized_here.get(id(embedding))
        if cached is None or cached[0]() is not embedding:
            [done] = self._enforce(base_model, key, [{**entry, "cross_attn": embedding}])
            if done.get("pooled_output") is not entry.get("pooled_output") and \
                    "y" in (entry.get("model_conds") or {}):
                # The model already holds a vector made from the unsanitized pooled output.
                raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: the '{key}' "
                                        f"conditioning reached the model without being sanitized first, and its "
                                        f"pooled output can no longer be replaced")
            cached = self.sanitized_here[id(embedding)] = (weakref.ref(embedding), done)
            while len(self.sanitized_here) > EncodedTexts.KEEP:
                self.sanitized_here.popitem(last=False)
        done = cached[1]
        passed = {**entry, "cross_attn": done["cross_attn"], MARK_KEY: done[MARK_KEY]}
        model_conds = entry.get("model_conds")
        if isinstance(model_conds, dict) and "c_crossattn" in model_conds:
            passed["model_conds"] = {**model_conds,
                                     "c_crossattn": type(model_conds["c_crossattn"])(done["cross_attn"])}
        return passed

    def _vouching_sanitizer(self, base_model):
        """The sanitizer whose marks this model's conditionings may carry: the family's trained
        file, else the built-in one once it is loaded; None for a trained file that did not load."""
        family = model_family(base_model)
        return self.models.get(family) if family in self.files else self.builtin

    def _no_file(self, base_model, family) -> str:
        name = type(getattr(base_model, "model_config", base_model)).__name__
        return (f"this server enforces sanitizing and has no sanitizer for this model ({name}, text encoder family "
                f"{family or 'unknown'}) trained; trained sanitizers are configured for: "
                f"{', '.join(sorted(self.files)) or 'none'}")

    def _builtin_sanitizer(self, base_model, family) -> BuiltinSanitizer:
        if self.builtin is None and self.builtin_error is None:
            try:
                builtin = shared_builtin()
                builtin.concept_mask(self.policy.concepts)      # raises on a concept it lacks
                self.builtin = builtin
                LOG.warning("Embedding Sanitizer: families without a trained file use the %s sanitizer", BUILTIN_NAME)
            except Exception as exc:     # noqa: BLE001  refuses those families' prompts
                self.builtin_error = str(exc)
        if self.builtin is None:
            raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: "
                                    f"{self._no_file(base_model, family)}, and the {BUILTIN_NAME} sanitizer did "
                                    f"not load (the server log says why)", self.builtin_error)
        return self.builtin

    # ------------------------------------------------------------------ records

    def _record(self, key: str, record: dict) -> None:
        prompt_id, node_id = _executing()
        records = self.records.setdefault(prompt_id, [])
        records.append({"node": node_id, "input": key, **record})
        self.records.move_to_end(prompt_id)
        while len(self.records) > KEEP_PROMPTS:
            self.records.popitem(last=False)

    def prompt_record(self, prompt_id, finished: bool = False) -> dict:
        done = self.records.pop(prompt_id, []) if finished else list(self.records.get(prompt_id, []))
        return {**self.summary(), "sanitized": done}


def _refusing_on_failure(what: str, work):
    """work(), with any failure turned into SanitizingRefused (fail closed), logged once."""
    try:
        return work()
    except SanitizingRefused as exc:
        LOG.error("%s%s", exc, f". Details: {exc.detail}" if exc.detail else "")
        raise
    except Exception as exc:     # noqa: BLE001  fail closed, whatever went wrong
        # The error's text may hold paths: the server log gets it, the client what to check.
        LOG.exception("Embedding Sanitizer (operator mode): %s failed", what)
        raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: {what} failed "
                                f"({type(exc).__name__}); check that the model's text encoder is the one its "
                                f"sanitizer was trained for (the server log has the details)") from None


def used_embedding(entry: dict):
    """The text embedding the model reads from a converted entry: the one encoded for the model
    when ComfyUI has done so (model_conds["c_crossattn"]), else "cross_attn"."""
    crossattn = (entry.get("model_conds") or {}).get("c_crossattn")
    embedding = getattr(crossattn, "cond", None)
    return embedding if torch.is_tensor(embedding) else entry.get("cross_attn")


def _prompt_server():
    """ComfyUI's running PromptServer, or None (imported outside a server: tests, scripts).
    Looked up, never imported: importing ComfyUI's server module has side effects."""
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None)


def _executing():
    """(prompt id, node id) ComfyUI is executing, as its server tracks them."""
    instance = _prompt_server()
    return getattr(instance, "last_prompt_id", None), getattr(instance, "last_node_id", None)


# ---------------------------------------------------------------------- patches

def _wrap(owner, name: str, make):
    original = getattr(owner, name)
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, WRAPPED, original)
    setattr(owner, name, wrapper)


def install_choke_point(enforcer: Enforcer, samplers) -> str:
    """Patch the sampling choke point of this ComfyUI; returns which one. Raises when none is known."""
    guider = getattr(samplers, "CFGGuider", None)
    if guider is not None and callable(getattr(guider, "inner_set_conds", None)) and callable(getattr(guider, "sample", None)):
        def make(original):
            def inner_set_conds(self, conds):
                original(self, conds)
                base_model = self.model_patcher.model
                for key in conds:
                    if key != NEGATIVE:
                        self.original_conds[key] = enforcer.enforce(base_model, key, self.original_conds[key])
            return inner_set_conds
        _wrap(guider, "inner_set_conds", make)

        def make_sample(original):
            def sample(self, *args, **kwargs):
                # The CFG scale is set after the conds (comfy.samplers.sample: set_conds, then set_cfg),
                # so the negative is judged here, before sampling encodes its pooled vector for the model.
                conds = self.original_conds
                if NEGATIVE in conds and negative_counts(negative_scale(self)):
                    self.original_conds = {**conds, NEGATIVE: enforcer.enforce(self.model_patcher.model, NEGATIVE,
                                                                              conds[NEGATIVE])}
                token = _SAMPLING_GUIDER.set(self)
                try:
                    return original(self, *args, **kwargs)
                finally:
                    _SAMPLING_GUIDER.reset(token)
                    self.original_conds = conds
            return sample
        _wrap(guider, "sample", make_sample)
        return "comfy.samplers.CFGGuider.inner_set_conds"
    if guider is None and callable(getattr(samplers, "sample", None)) and \
            list(inspect.signature(samplers.sample).parameters)[:4] == ["model", "noise", "positive", "negative"]:
        def make(original):
            def sample(model, noise, positive, negative, cfg, *args, **kwargs):
                if negative_counts(cfg):     # sanitized before its pooled vector is encoded
                    negative = enforcer.enforce(model, NEGATIVE, negative)
                return original(model, noise, enforcer.enforce(model, "positive", positive), negative, cfg,
                                *args, **kwargs)
            return sample
        _wrap(samplers, "sample", make)      # KSampler.sample calls it through the module's globals
        return "comfy.samplers.sample"
    raise SanitizingRefused(
        "Embedding Sanitizer: operator enforcement is configured, but this ComfyUI has neither "
        "comfy.samplers.CFGGuider.inner_set_conds nor the 2024 comfy.samplers.sample; refusing to start "
        "rather than generate unsanitized images. Update Embedding Sanitizer or ComfyUI.")


# The embeddings of the negative of the sampling_function call in progress, when its CFG scale is 1
# or more: only they may reach the model unsanitized (None outside sampling_function).
_PLAIN_NEGATIVES: contextvars.ContextVar = contextvars.ContextVar("embedding_sanitizer_plain_negatives",
                                                                  default=None)
# The guider whose sample() is in progress: guiders that call calc_cond_batch themselves
# (DualCFGGuider, PerpNegGuider) pass no CFG scale through sampling_function.
_SAMPLING_GUIDER: contextvars.ContextVar = contextvars.ContextVar("embedding_sanitizer_guider", default=None)


def negative_scale(guider) -> float:
    """The scale a guider weighs its "negative" with: the image is negative + scale * (rest - negative),
    so below 1 the negative steers the image toward itself, like a positive. DualCFGGuider's is
    cfg2 (cfg_cond2_negative, regular and nested style alike), every other guider's cfg; NaN when
    unreadable, which counts as below 1."""
    try:
        return float(guider.cfg2 if hasattr(guider, "cfg2") else guider.cfg)
    except (TypeError, ValueError, AttributeError):
        return float("nan")


def plain_negatives(guider) -> frozenset:
    """The embeddings of the running guider's negative when its scale is 1 or more (see _PLAIN_NEGATIVES)."""
    if guider is None or negative_counts(negative_scale(guider)):
        return frozenset()
    return frozenset(id(used_embedding(entry)) for entry in (getattr(guider, "conds", None) or {}).get(NEGATIVE) or ()
                     if isinstance(entry, dict))


def install_model_guard(enforcer: Enforcer, samplers) -> str:
    """Check every conditioning right before the model is evaluated with it (Enforcer.guard).
    Returns where; raises SanitizingRefused when this ComfyUI has neither known function."""
    batch_name = next((name for name in ("calc_cond_batch", "calc_cond_uncond_batch")
                       if callable(getattr(samplers, name, None))), None)
    if batch_name is None or not callable(getattr(samplers, "sampling_function", None)):
        raise SanitizingRefused(
            "Embedding Sanitizer: operator enforcement is configured, but this ComfyUI has neither "
            "comfy.samplers.calc_cond_batch nor calc_cond_uncond_batch to check conditionings at; refusing to "
            "start rather than generate unsanitized images. Update Embedding Sanitizer or ComfyUI.")

    def make_sampling_function(original):
        def sampling_function(model, x, timestep, uncond, cond, cond_scale, *args, **kwargs):
            if uncond is not None and negative_counts(cond_scale):
                uncond = enforcer.guard(model, NEGATIVE, uncond)
                plain = frozenset()
            else:
                plain = frozenset(id(used_embedding(entry)) for entry in uncond or () if isinstance(entry, dict))
            token = _PLAIN_NEGATIVES.set(plain)
            try:
                return original(model, x, timestep, uncond, cond, cond_scale, *args, **kwargs)
            finally:
                _PLAIN_NEGATIVES.reset(token)
        return sampling_function

    def checked(model, conds):
        plain = _PLAIN_NEGATIVES.get()
        if plain is None:      # a guider's own calc_cond_batch call
            plain = plain_negatives(_SAMPLING_GUIDER.get())
        return [None if entries is None else enforcer.guard(model, "model input", entries, plain) for entries in conds]

    if batch_name == "calc_cond_batch":
        def make_batch(original):
            def calc_cond_batch(model, conds, *args, **kwargs):
                return original(model, checked(model, conds), *args, **kwargs)
            return calc_cond_batch
    else:
        def make_batch(original):
            def calc_cond_uncond_batch(model, cond, uncond, *args, **kwargs):
                return original(model, *checked(model, [cond, uncond]), *args, **kwargs)
            return calc_cond_uncond_batch
    _wrap(samplers, "sampling_function", make_sampling_function)
    _wrap(samplers, batch_name, make_batch)
    return f"comfy.samplers.{batch_name}"


def install_text_memory(enforcer: Enforcer, nodes_module) -> None:
    """CLIP Text Encode tells the enforcer which text made each conditioning it returns."""
    def make(original):
        def encode(self, clip, text, *args, **kwargs):
            result = original(self, clip, text, *args, **kwargs)
            try:
                enforcer.texts.remember(result[0], clip, text)
            except Exception as exc:     # noqa: BLE001  the text is an aid: without it the embedding's own reading
                LOG.warning("Embedding Sanitizer: could not remember the text of a CLIP Text Encode: %s", exc)
            return result
        return encode
    _wrap(nodes_module.CLIPTextEncode, "encode", make)


def install_records(enforcer: Enforcer, execution_module, nodes_module) -> None:
    """The prompt's history entry and every image SaveImage / PreviewImage writes record enforcement."""
    queue = execution_module.PromptQueue

    def make_task_done(original):
        def task_done(self, item_id, *args, **kwargs):
            with self.mutex:
                running = self.currently_running.get(item_id)
            result = original(self, item_id, *args, **kwargs)
            if running is not None:
                prompt_id = running[1]
                with self.mutex:
                    if prompt_id in self.history:
                        self.history[prompt_id][MARK_KEY] = enforcer.prompt_record(prompt_id, finished=True)
            return result
        return task_done
    _wrap(queue, "task_done", make_task_done)

    def make_save_images(original):
        signature = inspect.signature(original)

        def save_images(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            extra = dict(bound.arguments.get("extra_pnginfo") or {})
            extra[MARK_KEY] = enforcer.prompt_record(_executing()[0])
            bound.arguments["extra_pnginfo"] = extra
            return original(*bound.args, **bound.kwargs)
        return save_images
    _wrap(nodes_module.SaveImage, "save_images", make_save_images)


def setup() -> Optional[Enforcer]:
    """Read the switch once and install enforcement if the operator set it. Called on pack load;
    never raises an Exception (ComfyUI would load on without the pack): a failure to set up
    refuses every generation instead."""
    try:
        location = config_location()
    except Exception as exc:     # noqa: BLE001  cannot tell whether it is switched on: refuse
        refuse_every_generation(f"finding the operator configuration failed ({type(exc).__name__}: {exc})")
        return None
    if location is None:
        publish_state(lambda: {"enforced": False})
        return None
    try:
        return _enforce(location)
    except SanitizingRefused as exc:
        LOG.critical("%s", exc)
        # SystemExit is not an Exception: ComfyUI's custom-node loader does not swallow it.
        raise SystemExit(str(exc)) from None
    except Exception as exc:     # noqa: BLE001
        refuse_every_generation(f"setting up operator mode failed ({type(exc).__name__}: {exc})")
        return None


def _enforce(location: Path) -> Enforcer:
    enforcer = Enforcer(location)
    enforcer.log_startup()
    import comfy.samplers
    import execution
    import nodes as comfy_nodes     # ComfyUI's nodes.py (this package is imported relatively)
    where = install_choke_point(enforcer, comfy.samplers)
    guarded_at = install_model_guard(enforcer, comfy.samplers)
    install_records(enforcer, execution, comfy_nodes)
    install_text_memory(enforcer, comfy_nodes)
    publish_state(enforcer.state)
    LOG.warning("Embedding Sanitizer: every prompt is sanitized at %s and checked before the model at %s",
                where, guarded_at)
    return enforcer
