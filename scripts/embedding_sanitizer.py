"""Embedding Sanitizer for AUTOMATIC1111 (1.6+) and Forge: a thin host adapter.

The logic that needs no webui lives in embedding_sanitizer/a1111.py; the network in embedding_sanitizer/model.py.

Why this hook: the webui builds the conditioning in `p.setup_conds()`, which runs AFTER
every `process_batch` hook, and the sampler then gets `p.c` (first pass) and `p.hr_c`
(hires fix's second pass). `Script.process_before_every_sampling(p, x, noise, c, uc)`
(A1111 1.9+, Forge) is the one supported hook that is handed exactly the positive and
negative conditioning objects the sampler uses, once per batch and again for the hires
pass, after prompt editing ([a:b:step]) and AND-composition have been resolved into
`MulticondLearnedConditioning` / `ScheduledPromptConditioning` (SD 1.x tensors, SDXL
{'crossattn', 'vector'} dicts). We replace each positive schedule entry with a NEW
sanitized cond (the tensors are never edited: Forge's are inference tensors and the
webui caches them), only once per distinct cond (a ledger keyed by object identity,
since the hires pass usually reuses the first pass's objects), and never touch `uc`.
On A1111 1.6-1.8, which lack that hook, `process_batch` builds the same conditioning
early through `p.setup_conds()` (its result is cached in p's own cache, so the webui's
own call right after returns the very objects we sanitized), and `before_hr`, which runs
after the hires conds are computed and right before the second pass, covers hires fix.
`on_cfg_denoiser` would also see the conds, but at every sampling step.
So that toggling takes effect and the webui's class-wide prompt caches never hold
sanitized conds, `process` gives `p` private caches while the sanitizer is active.
Enforcement fails closed: the ScriptRunner swallows exceptions from hooks, so a refusal
replaces the positive conditioning with one that raises as soon as the sampler reads it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import gradio as gr

from modules import script_callbacks, scripts, shared

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The extension folder is on sys.path only while the engine loads: left in front, its
# `scripts`, `javascript`, ... would shadow modules of the webui and other extensions.
sys.path.insert(0, _ROOT)
try:
    import embedding_sanitizer  # noqa: F401
finally:
    sys.path.remove(_ROOT)

from embedding_sanitizer import load_sanitizer, read_metadata  # noqa: E402
from embedding_sanitizer import a1111 as W  # noqa: E402
from embedding_sanitizer import report  # noqa: E402
from embedding_sanitizer.report import token_report  # noqa: E402

try:
    from modules.paths import models_path
except ImportError:  # pragma: no cover
    models_path = os.path.join(os.getcwd(), "models")

WEIGHTS_DIR = os.path.join(models_path, W.WEIGHTS_FOLDER)
os.makedirs(WEIGHTS_DIR, exist_ok=True)
DEBUG_LOG = os.environ.get("EMBEDDING_SANITIZER_DEBUG_LOG", "")
HAS_SAMPLING_HOOK = hasattr(scripts.Script, "process_before_every_sampling")

# Enforcement as the operator left it before any request (see W.resolve_settings): the
# config file's values at startup, or the --embedding-sanitizer-enforce flag (preload.py).
OPERATOR = W.operator_settings(dict(getattr(shared.opts, "data", {}) or {}),
                               bool(getattr(getattr(shared, "cmd_opts", None), "embedding_sanitizer_enforce", False)))

_lock = threading.Lock()
_models: dict = {}                        # (path, mtime, device) -> EmbeddingSanitizer
_last_html = {"txt2img": "", "img2img": ""}


def weight_files() -> list[str]:
    try:
        return sorted(f for f in os.listdir(WEIGHTS_DIR) if f.endswith(W.WEIGHT_SUFFIXES))
    except OSError:
        return []


def opt(key):
    return getattr(shared.opts, key, W.DEFAULTS[key])


def load(name: str, device):
    path = os.path.join(WEIGHTS_DIR, name)
    key = (path, os.path.getmtime(path), str(device))
    with _lock:
        if key not in _models:
            _models.clear()
            _models[key] = load_sanitizer(path, device=device)
        return _models[key]


def loaded_model_family():
    m = shared.sd_model
    is_sdxl, is_sd2 = bool(getattr(m, "is_sdxl", False)), bool(getattr(m, "is_sd2", False))
    other = any(getattr(m, a, False) for a in ("is_sd3", "is_flux", "is_chroma"))
    return W.model_family(is_sdxl, is_sd2, bool(getattr(m, "is_sd1", not (is_sdxl or is_sd2 or other))))


def log(event: dict):
    if event.get("warning"):
        print(f"*** {event['warning']}", file=sys.stderr)
    if DEBUG_LOG:
        with open(DEBUG_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


def privatize_caches(p):
    """Give p its own positive prompt caches: the webui's class-wide ones (shared by all
    requests, keyed without our settings) must never hold sanitized or refused conds."""
    for attr in ("cached_c", "cached_hr_c"):
        cache = getattr(p, attr, None)
        if cache is not None and cache is getattr(type(p), attr, None):
            setattr(p, attr, [None] * len(cache))


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


class EmbeddingSanitizerScript(scripts.Script):
    def title(self):
        return W.SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        tab = "img2img" if is_img2img else "txt2img"
        with gr.Accordion(W.SCRIPT_TITLE, open=False, elem_id=f"embedding_sanitizer_{tab}"):
            enabled = gr.Checkbox(label="Sanitize the prompt embedding", value=bool(opt(W.OPT_ENABLED)),
                                  elem_id=f"embedding_sanitizer_{tab}_enabled")
            intensity = gr.Slider(label="Intensity", minimum=0.0, maximum=3.0, step=0.05,
                                  value=float(opt(W.OPT_INTENSITY)), elem_id=f"embedding_sanitizer_{tab}_intensity")
            tokens = gr.HTML(value="", elem_id=f"embedding_sanitizer_{tab}_tokens")
            show = gr.Button("Show token scores of the last generation",
                             elem_id=f"embedding_sanitizer_{tab}_show")
            show.click(fn=lambda: _last_html[tab], inputs=[], outputs=[tokens])
        self.infotext_fields = [
            (enabled, lambda params: W.settings_from_infotext(params)["enabled"]),
            (intensity, lambda params: W.settings_from_infotext(params).get("intensity", gr.update())),
        ]
        self.paste_field_names = []
        return [enabled, intensity]

    # --------------------------------------------------------------------------- generation

    def decision(self, p, enabled, intensity):
        # override_settings of a request win over the (default-valued) per-generation args
        overrides = getattr(p, "override_settings", None) or {}
        ui_enabled = overrides.get(W.OPT_ENABLED, enabled)
        ui_intensity = overrides.get(W.OPT_INTENSITY, intensity)
        opts = {k: opt(k) for k in W.DEFAULTS}
        return W.resolve_settings(opts, ui_enabled, ui_intensity, OPERATOR)

    def process(self, p, enabled=False, intensity=1.0, *args):
        d = self.decision(p, enabled, intensity)
        p._embedding_sanitizer = state = {"decision": d, "ledger": W.SanitizeLedger(), "refuse": None,
                                          "model": None, "weights": None}
        if not d.active:
            return
        privatize_caches(p)
        name = W.pick_weights(d.weights, weight_files())
        problem = None
        if name is None:
            problem = (f"Embedding Sanitizer: no weight file '{d.weights or '*.safetensors'}' in {WEIGHTS_DIR}")
        else:
            try:
                meta = read_metadata(os.path.join(WEIGHTS_DIR, name))
                problem = W.mismatch_message(name, meta.get("encoder_family", "?"), loaded_model_family())
            except Exception as e:  # unreadable file
                problem = f"Embedding Sanitizer: cannot use '{name}': {e}"
        state["weights"] = name
        if problem:
            log({"event": "problem", "warning": problem, "enforced": d.enforced})
            if hasattr(p, "comment"):
                p.comment(problem)
            _last_html["img2img" if getattr(p, "init_images", None) else "txt2img"] = \
                f"<div class='es-warning'>{problem}</div>"
            if d.enforced:
                state["refuse"] = problem + "; enforcement is on, so the generation is refused"
            else:
                state["decision"] = W.Decision(False, d.intensity, d.threshold, d.concepts, d.weights, False)

    def state(self, p, enabled, intensity, c):
        """p's state from `process`; if that hook failed and enforcement is on, fail closed."""
        state = getattr(p, "_embedding_sanitizer", None)
        if state is None and self.decision(p, enabled, intensity).enforced:
            W.poison_conditioning(c, "Embedding Sanitizer did not set up this generation; "
                                     "enforcement is on, so the generation is refused")
        return state if state is not None and state["decision"].active else None

    def process_batch(self, p, enabled=False, intensity=1.0, *args, **kwargs):
        # A1111 1.6-1.8 only: build the conds now (cached in p's private cache, so the
        # webui's own setup_conds() right after returns these very objects) and sanitize them.
        if HAS_SAMPLING_HOOK:
            return
        if getattr(p, "_embedding_sanitizer", None) is None and not self.decision(p, enabled, intensity).enforced:
            return
        privatize_caches(p)
        p.setup_conds()
        if self.state(p, enabled, intensity, p.c) is not None:
            self.apply(p, p.c, p.uc, "first")

    def before_hr(self, p, enabled=False, intensity=1.0, *args):
        # A1111 1.6-1.8 only: runs after calculate_hr_conds(), right before the hires sampler.
        if HAS_SAMPLING_HOOK or getattr(p, "hr_c", None) is None:
            return
        if self.state(p, enabled, intensity, p.hr_c) is not None:
            self.apply(p, p.hr_c, getattr(p, "hr_uc", None), "hires")

    def process_before_every_sampling(self, p, enabled=False, intensity=1.0, *args, **kwargs):
        c = kwargs.get("c")
        if c is None or self.state(p, enabled, intensity, c) is None:
            return
        hires = c is getattr(p, "hr_c", None) and c is not getattr(p, "c", None)
        self.apply(p, c, kwargs.get("uc"), "hires" if hires else "first")

    def apply(self, p, c, uc, stage):
        state = p._embedding_sanitizer
        d = state["decision"]
        if state["refuse"]:
            W.poison_conditioning(c, state["refuse"])
            log({"event": "refused", "stage": stage, "warning": state["refuse"]})
            return
        uc_before = W.conditioning_signature(uc) if uc is not None else None
        try:
            first = W.schedule_lists(c)[0][0].cond
            device = (first["crossattn"] if isinstance(first, dict) else first).device
            model = load(state["weights"], device)
            pooled_dim = W.POOLED_IN_VECTOR.get(model.config.encoder_family, 0)

            def fn(emb, pooled):
                return model.sanitize(emb, pooled, intensity=d.intensity, threshold=d.threshold,
                                      concepts=d.concepts)

            before = len(state["ledger"].results)
            n = W.sanitize_conditioning(c, fn, state["ledger"], pooled_dim)
        except Exception as e:
            if d.enforced:
                W.poison_conditioning(c, f"Embedding Sanitizer failed ({e}); enforcement is on")
            raise
        new = state["ledger"].results[before:]
        # "erased tokens": the first image's erased prompt tokens (all parts and schedules),
        # counted once; every position (padding too) only when the prompt cannot be tokenized.
        erased = self.remember_tokens(p, c, state) if n else None
        if erased is None:
            erased = sum(int((r.gates[0] >= report.ERASED_GATE).sum()) for _, r in new)
        if state.get("erased") is None:
            state["erased"] = erased
        state["model"] = model
        p.extra_generation_params[W.INFOTEXT_KEY] = W.format_infotext(state["weights"], d, state["erased"])
        log({"event": "sanitized", "stage": stage, "new_conds": n, "erased_tokens": erased,
             "weights": state["weights"], "intensity": d.intensity, "enforced": d.enforced,
             "positive_max_change": W.max_change(state["ledger"]),
             "negative_untouched": uc is None or W.conditioning_signature(uc) == uc_before,
             "negative_conds": 0 if uc is None else len(uc_before),
             "prompt": (getattr(p, "prompts", None) or [p.prompt])[0]})

    def remember_tokens(self, p, c, state):
        """Token scores of the first image's prompt parts, for the accordion's display.
        Returns how many of its tokens were erased, or None when it cannot tell."""
        try:
            engine = text_engine(p.sd_model)
            from modules import prompt_parser
            prompt = (getattr(p, "prompts", None) or [p.prompt])[0]
            _, parts, _ = prompt_parser.get_multicond_prompt_list([prompt])
            steps = getattr(p, "steps", 20)
            schedules = prompt_parser.get_learned_conditioning_prompt_schedules(parts, steps)
            tok = getattr(engine, "tokenizer", None)
            specials = {getattr(engine, a, None) for a in ("id_start", "id_end", "id_pad")} - {None}
            by_original = {id(o if not isinstance(o, dict) else o["crossattn"]): r
                           for o, r in state["ledger"].results}
            produced = {W._key(new): W._key(orig) for orig, new in state["ledger"].done.values()}
            html_parts, erased = [], 0
            for composable, part in zip(c.batch[0], schedules):
                for entry, (_, text) in zip(composable.schedules, part):
                    result = by_original.get(produced.get(W._key(entry.cond)))
                    if result is None:
                        continue
                    chunks, _ = engine.tokenize_line(text)
                    tokens, real = W.chunk_tokens([ch.tokens for ch in chunks],
                                                  lambda i: tok.convert_ids_to_tokens(int(i)), specials)
                    if len(tokens) != result.gates.shape[1]:
                        continue
                    rows = token_report(result, 0, tokens, real)
                    erased += sum(r["erased"] for r in rows)
                    html_parts.append(W.report_html(rows, title=text))
            if not html_parts:
                return None
            tab = "img2img" if getattr(p, "init_images", None) else "txt2img"
            _last_html[tab] = "".join(html_parts)
            return erased
        except Exception as e:  # the display is optional; sanitization already happened
            log({"event": "display-failed", "error": repr(e)})
            return None


# ------------------------------------------------------------------------------ callbacks

def on_ui_settings():
    section = W.SECTION
    add = shared.opts.add_option
    add(W.OPT_ENABLED, shared.OptionInfo(False, "Sanitize by default (initial state of the per-generation toggle)",
                                         section=section))
    add(W.OPT_INTENSITY, shared.OptionInfo(1.0, "Default intensity", gr.Slider,
                                           {"minimum": 0.0, "maximum": 3.0, "step": 0.05}, section=section))
    add(W.OPT_THRESHOLD, shared.OptionInfo(0.0, "Threshold: tokens scoring below it are left alone", gr.Slider,
                                           {"minimum": 0.0, "maximum": 1.0, "step": 0.01}, section=section,
                                           infotext=W.PASTE_NAMES[W.OPT_THRESHOLD]))
    add(W.OPT_CONCEPTS, shared.OptionInfo("", "Concepts to erase (comma-separated; empty = all the file knows)",
                                          section=section, infotext=W.PASTE_NAMES[W.OPT_CONCEPTS]))
    add(W.OPT_WEIGHTS, shared.OptionInfo("", f"Sanitizer weight file (models/{W.WEIGHTS_FOLDER})", gr.Dropdown,
                                         lambda: {"choices": [""] + weight_files()}, refresh=weight_files,
                                         section=section, infotext=W.PASTE_NAMES[W.OPT_WEIGHTS]))
    add(W.OPT_ENFORCE, shared.OptionInfo(False, "Enforce on every generation (per-generation and API controls "
                                                "cannot turn it off; refuse generations it cannot sanitize)",
                                         section=section, restrict_api=True))
    add(W.OPT_ENFORCE_INTENSITY, shared.OptionInfo(1.0, "Minimum intensity when enforced", gr.Slider,
                                                   {"minimum": 0.05, "maximum": 3.0, "step": 0.05},
                                                   section=section, restrict_api=True))


def on_infotext_pasted(infotext, params):
    """Restore the settings recorded with an image as override settings of the paste."""
    restored = W.settings_from_infotext(params)
    for key, value in restored.get("options", {}).items():
        params.setdefault(W.PASTE_NAMES[key], value)


def on_model_loaded(sd_model):
    name = W.pick_weights(str(opt(W.OPT_WEIGHTS) or ""), weight_files())
    if name is None or not (opt(W.OPT_ENABLED) or opt(W.OPT_ENFORCE)):
        return
    try:
        family = read_metadata(os.path.join(WEIGHTS_DIR, name)).get("encoder_family", "?")
    except Exception as e:
        log({"event": "problem", "warning": f"Embedding Sanitizer: cannot read '{name}': {e}"})
        return
    problem = W.mismatch_message(name, family, loaded_model_family())
    if problem:
        log({"event": "problem", "warning": problem})


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_infotext_pasted(on_infotext_pasted)
script_callbacks.on_model_loaded(on_model_loaded)
