"""ComfyUI operator mode: while the server's operator enforces it, every conditioning that reaches
sampling, except the negative one, is sanitized before the model sees it, whatever the workflow.

The switch is read once, when the pack loads: the file named by the environment variable
EMBEDDING_SANITIZER_OPERATOR_CONFIG, else <ComfyUI user directory>/embedding_sanitizer_operator.json.
Without either, nothing here is installed and ComfyUI runs exactly as it would without it.

The choke point is where ComfyUI turns CONDITIONING into what its samplers use:
`CFGGuider.inner_set_conds` (ComfyUI since the guiders of spring 2024: KSampler, KSamplerAdvanced,
SamplerCustom and SamplerCustomAdvanced with any guider) or, before guiders, `comfy.samplers.sample`
(through which KSampler and SamplerCustom both pass). Both see the same converted entries: dicts
holding the embedding as "cross_attn". Any failure refuses the prompt (an exception ComfyUI reports
for that node), never lets it through. CLIP Text Encode is wrapped too, to remember which text made
each conditioning tensor: with it, disguised words are read plainly here as in the nodes.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import folder_paths
import torch

from embedding_sanitizer import families, load_sanitizer
from embedding_sanitizer.builtin import BUILTIN_NAME, BuiltinSanitizer, is_builtin
from embedding_sanitizer.hosts.comfy_operator import (MARK_KEY, OperatorConfigError, enforcement_plan, file_sha256,
                                          read_operator_config, weights_fingerprint, with_operator)

from .common import sanitize_conditioning
from .text_encoders import clip_family

ENV_VAR = "EMBEDDING_SANITIZER_OPERATOR_CONFIG"
CONFIG_NAME = "embedding_sanitizer_operator.json"
ROUTE = "/embedding_sanitizer/operator"
NEGATIVE = "negative"
WRAPPED = "__embedding_sanitizer_wraps__"
# ComfyUI model classes (comfy.supported_models, matched along the MRO so SSD-1B, Segmind Vega,
# KOALA, inpaint and pix2pix variants follow their base) -> the sanitizer family of their text encoder.
MODEL_FAMILIES = families.comfy_image_model_families()
KEEP_PROMPTS = 256          # per-prompt records kept until the prompt's history is written

LOG = logging.getLogger("embedding_sanitizer")


class SanitizingRefused(RuntimeError):
    """Enforcement is on and this prompt cannot be sanitized: it must not be sampled."""


def config_location() -> Optional[Path]:
    """The operator's configuration file, or None when the operator enforces nothing."""
    named = os.environ.get(ENV_VAR, "").strip()
    if named:
        return Path(named).expanduser()
    getter = getattr(folder_paths, "get_user_directory", None)
    user_dir = getter() if getter else getattr(folder_paths, "user_directory", None)
    if user_dir and os.path.isfile(os.path.join(user_dir, CONFIG_NAME)):
        return Path(user_dir) / CONFIG_NAME
    return None


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
        # Families without a trained file get the built-in sanitizer, made on first need (it loads
        # MiniLM); a failure to make it is kept and refuses those families' prompts.
        self.builtin: Optional[BuiltinSanitizer] = None
        self.builtin_error: Optional[str] = None
        try:
            self.policy = read_operator_config(config_path)
        except OperatorConfigError as exc:
            self.error = str(exc)
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
        try:
            return self._enforce(base_model, key, entries)
        except SanitizingRefused as exc:
            LOG.error("%s", exc)
            raise
        except Exception as exc:     # noqa: BLE001  fail closed, whatever went wrong
            message = (f"Embedding Sanitizer (operator mode) refused to sample: sanitizing the '{key}' "
                       f"conditioning failed: {exc}")
            LOG.error("%s", message)
            raise SanitizingRefused(message) from exc

    def _enforce(self, base_model, key, entries):
        if self.error:
            raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: {self.error}")
        family = model_family(base_model)
        if family is not None and family in self.files:
            if family in self.load_errors:
                raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: the {family} "
                                        f"sanitizer did not load: {self.load_errors[family]}")
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

    def _no_file(self, base_model, family) -> str:
        name = type(getattr(base_model, "model_config", base_model)).__name__
        return (f"this server enforces sanitizing and has no sanitizer for this model ({name}, text encoder family "
                f"{family or 'unknown'}) trained; trained sanitizers are configured for: "
                f"{', '.join(sorted(self.files)) or 'none'}")

    def _builtin_sanitizer(self, base_model, family) -> BuiltinSanitizer:
        if self.builtin is None and self.builtin_error is None:
            try:
                builtin = BuiltinSanitizer()
                builtin.concept_mask(self.policy.concepts)      # raises on a concept it lacks
                self.builtin = builtin
                LOG.warning("Embedding Sanitizer: families without a trained file use the %s sanitizer", BUILTIN_NAME)
            except Exception as exc:     # noqa: BLE001  refuses those families' prompts
                self.builtin_error = str(exc)
        if self.builtin is None:
            raise SanitizingRefused(f"Embedding Sanitizer (operator mode) refused to sample: "
                                    f"{self._no_file(base_model, family)}, and the {BUILTIN_NAME} sanitizer did "
                                    f"not load: {self.builtin_error}")
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
    if guider is not None and callable(getattr(guider, "inner_set_conds", None)):
        def make(original):
            def inner_set_conds(self, conds):
                original(self, conds)
                base_model = self.model_patcher.model
                for key in conds:
                    if key != NEGATIVE:
                        self.original_conds[key] = enforcer.enforce(base_model, key, self.original_conds[key])
            return inner_set_conds
        _wrap(guider, "inner_set_conds", make)
        return "comfy.samplers.CFGGuider.inner_set_conds"
    if guider is None and callable(getattr(samplers, "sample", None)) and \
            list(inspect.signature(samplers.sample).parameters)[:4] == ["model", "noise", "positive", "negative"]:
        def make(original):
            def sample(model, noise, positive, negative, *args, **kwargs):
                return original(model, noise, enforcer.enforce(model, "positive", positive), negative, *args, **kwargs)
            return sample
        _wrap(samplers, "sample", make)      # KSampler.sample calls it through the module's globals
        return "comfy.samplers.sample"
    raise SanitizingRefused(
        "Embedding Sanitizer: operator enforcement is configured, but this ComfyUI has neither "
        "comfy.samplers.CFGGuider.inner_set_conds nor the 2024 comfy.samplers.sample; refusing to start "
        "rather than generate unsanitized images. Update Embedding Sanitizer or ComfyUI.")


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


def add_route(state) -> None:
    instance = _prompt_server()
    if instance is None:
        return
    from aiohttp import web
    routes = instance.routes

    @routes.get(ROUTE)
    async def operator_state(request):
        return web.json_response(state())


def setup() -> Optional[Enforcer]:
    """Read the switch once and install enforcement if the operator set it. Called on pack load."""
    location = config_location()
    if location is None:
        add_route(lambda: {"enforced": False})
        return None
    enforcer = Enforcer(location)
    enforcer.log_startup()
    import comfy.samplers
    import execution
    import nodes as comfy_nodes     # ComfyUI's nodes.py (this package is imported relatively)
    try:
        where = install_choke_point(enforcer, comfy.samplers)
    except SanitizingRefused as exc:
        LOG.critical("%s", exc)
        # SystemExit is not an Exception: ComfyUI's custom-node loader does not swallow it.
        raise SystemExit(str(exc)) from None
    install_records(enforcer, execution, comfy_nodes)
    install_text_memory(enforcer, comfy_nodes)
    add_route(enforcer.state)
    LOG.warning("Embedding Sanitizer: every prompt is sanitized at %s", where)
    return enforcer
