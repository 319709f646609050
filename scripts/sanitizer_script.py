"""Embedding Sanitizer for AUTOMATIC1111 (1.6+) and Forge: a thin host adapter.

The logic that needs no webui lives in embedding_sanitizer/hosts/a1111.py; the network in embedding_sanitizer/model.py.

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
While enforcement is on, `on_cfg_denoiser` checks at every sampling step that the text
conditioning the model is about to use is one this script sanitized, value for value (and below
CFG 1, where the negative acts as a positive, that the negative is too): routes that build conds
with no script hook (the refiner switch, training previews) are refused there.
So that toggling takes effect and the webui's class-wide prompt caches never hold
sanitized conds, `process` gives `p` private caches while the sanitizer is active.
Enforcement fails closed: the ScriptRunner swallows exceptions from hooks, so a refusal
replaces the positive conditioning with one that raises as soon as the sampler reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
import weakref

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

from embedding_sanitizer import default_weights_path, load_sanitizer, read_metadata  # noqa: E402
from embedding_sanitizer.builtin import BUILTIN_NAME, shared_builtin  # noqa: E402
from embedding_sanitizer.hosts import a1111 as W  # noqa: E402
from embedding_sanitizer import validation  # noqa: E402
from embedding_sanitizer import report  # noqa: E402
from embedding_sanitizer.report import token_report  # noqa: E402

try:
    from modules.ui_components import InputAccordion    # A1111 1.7+, Forge
except ImportError:  # pragma: no cover
    InputAccordion = None

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
DISPLAYS = W.DisplayStore()               # token displays of recent generations (see W.display_html)
LAST_PROCESSED = {"p": lambda: None}      # weak reference to the generation `process` last saw (on_cfg_denoiser, A1111 < 1.7)

INTENSITY_INFO = ("How strongly flagged tokens are rewritten: 0 = off, 1 = as trained, higher = stronger "
                  "(a token's change is its score times the intensity, at most 1)")
THRESHOLD_INFO = (f"tokens whose harmfulness score is below this are left exactly as they are (default "
                  f"{W.DEFAULTS[W.OPT_THRESHOLD]:g}: only tokens the sanitizer is more sure of than not); "
                  f"0 = gate every token by its score")


def weight_files() -> list[str]:
    try:
        return sorted(f for f in os.listdir(WEIGHTS_DIR) if f.endswith(W.WEIGHT_SUFFIXES))
    except OSError:
        return []


def opt(key):
    return getattr(shared.opts, key, W.DEFAULTS[key])


def load(name: str, device):
    if name == BUILTIN_NAME:      # it runs on the CPU beside any model; its output goes to the conds' device
        return shared_builtin()
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


def schedule_steps(p, stage):
    return W.schedule_steps(p, stage, bool(getattr(shared.opts, "use_old_scheduling", False)))


def log(event: dict):
    if event.get("warning"):
        print(f"*** {event['warning']}", file=sys.stderr)
    if DEBUG_LOG:
        with open(DEBUG_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


class EmbeddingSanitizerScript(scripts.Script):
    def title(self):
        return W.SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        tab = "img2img" if is_img2img else "txt2img"
        defaults = W.resolve_settings(W.read_options(opt))
        default_on = defaults.active
        intensity_args = dict(label="Intensity", minimum=0.0, maximum=validation.MAX_INTENSITY, step=0.05,
                              value=defaults.intensity, elem_id=f"embedding_sanitizer_{tab}_intensity",
                              info=INTENSITY_INFO)
        if InputAccordion is not None:       # A1111 1.7+ / Forge: the on/off box sits in the header
            with InputAccordion(default_on, label=W.SCRIPT_TITLE, elem_id=f"embedding_sanitizer_{tab}") as enabled:
                intensity = gr.Slider(**intensity_args)
                self.display_ui(tab)
        else:
            with gr.Accordion(W.SCRIPT_TITLE, open=False, elem_id=f"embedding_sanitizer_{tab}"):
                enabled = gr.Checkbox(label="Sanitize the prompt embedding", value=default_on,
                                      elem_id=f"embedding_sanitizer_{tab}_enabled")
                intensity = gr.Slider(**intensity_args)
                self.display_ui(tab)
        self.infotext_fields = [
            (enabled, lambda params: W.settings_from_infotext(params)["enabled"]),
            (intensity, lambda params: W.settings_from_infotext(params).get("intensity", gr.update())),
        ]
        self.paste_field_names = []
        return [enabled, intensity]

    @staticmethod
    def display_ui(tab):
        """The generation's state and token scores. javascript/embedding_sanitizer.js puts the
        page's own generation result into `request` and clicks `show` after each generation."""
        tokens = gr.HTML(value="", elem_id=f"embedding_sanitizer_{tab}_tokens")
        # hidden by style.css, not visible=False: gradio 4 (Forge) leaves invisible ones out of the page
        request = gr.Textbox(value="", elem_id=f"embedding_sanitizer_{tab}_request", elem_classes=["es-hidden"])
        show = gr.Button("Show", elem_id=f"embedding_sanitizer_{tab}_show", elem_classes=["es-hidden"])
        show.click(fn=lambda text: W.display_html(DISPLAYS, text), inputs=[request], outputs=[tokens])

    # --------------------------------------------------------------------------- generation
    #
    # The ScriptRunner swallows exceptions from these hooks and generates on, so: the
    # decision cannot raise (W.resolve_settings), and while enforcement is on, every failure
    # poisons the positive conditioning the sampler is about to read.

    def decision(self, p, enabled, intensity):
        overrides = getattr(p, "override_settings", None)
        if isinstance(overrides, dict):
            # override_settings of a request win over the (default-valued) per-generation args
            enabled = overrides.get(W.OPT_ENABLED, enabled)
            intensity = overrides.get(W.OPT_INTENSITY, intensity)
        return W.resolve_settings(W.read_options(opt), enabled, intensity, OPERATOR)

    @staticmethod
    def enforced():
        return W.is_enforced(W.read_options(opt), OPERATOR)

    def process(self, p, enabled=False, intensity=1.0, *args):
        d = self.decision(p, enabled, intensity)
        LAST_PROCESSED["p"] = weakref.ref(p)
        p._embedding_sanitizer = state = {"decision": d, "ledger": W.SanitizeLedger(), "model": None,
                                          "weights": None, "erased": None}
        for note in d.notes:
            self.warn(p, note)
        if not d.active:
            return
        try:
            W.privatize_caches(p)
            self.choose_weights(p, state)
        except Exception as e:
            self.fail(p, state, f"Embedding Sanitizer: cannot set up this generation ({e})")

    def choose_weights(self, p, state):
        d = state["decision"]
        if d.refusal:
            return
        name = W.pick_weights(d.weights, weight_files())
        if name is None:
            self.fail(p, state, f"Embedding Sanitizer: no weight file '{d.weights or '*.safetensors'}' "
                                f"in {WEIGHTS_DIR}")
            return
        try:
            meta = read_metadata(os.path.join(WEIGHTS_DIR, name) if name != BUILTIN_NAME else default_weights_path())
        except Exception as e:  # unreadable file
            self.fail(p, state, f"Embedding Sanitizer: cannot use '{name}': {e}")
            return
        problem = name != BUILTIN_NAME and W.mismatch_message(name, meta.get("encoder_family", "?"),
                                                              loaded_model_family())
        if problem and not d.weights:
            # No file was asked for and the first one does not fit: the built-in one fits every model.
            self.warn(p, f"{problem}; using the {BUILTIN_NAME} sanitizer instead")
            name, problem = BUILTIN_NAME, None
            meta = read_metadata(default_weights_path())
        if problem:
            self.fail(p, state, problem)
            return
        state["weights"] = name
        state["decision"] = fitted = W.fit_concepts(d, meta["concepts"])
        for note in fitted.notes[len(d.notes):]:
            self.warn(p, note)

    def fail(self, p, state, problem):
        """Enforced: refuse (the sanitizer hooks poison the conds); else skip with a warning."""
        d = state["decision"]
        log({"event": "problem", "warning": problem, "enforced": d.enforced})
        if d.enforced:
            state["decision"] = dataclasses.replace(d, refusal=f"{problem}; enforcement is on, so the generation is refused")
        else:
            self.warn(p, f"{problem}; this image was NOT sanitized")
            state["decision"] = dataclasses.replace(d, active=False)

    @staticmethod
    def warn(p, text):
        print(f"*** {text}", file=sys.stderr)
        if hasattr(p, "comment"):
            p.comment(text)

    def state(self, p, enabled, intensity, c):
        """p's state from `process` when the sanitizer is active; if that hook never ran and
        enforcement is on, fail closed."""
        state = getattr(p, "_embedding_sanitizer", None)
        if state is None:
            d = self.decision(p, enabled, intensity)
            if d.enforced:
                W.poison_conditioning(c, d.refusal or "Embedding Sanitizer did not set up this generation; "
                                                      "enforcement is on, so the generation is refused")
            return None
        return state if state["decision"].active else None

    def guarded(self, p, c, work):
        """Run `work`; if it raises while enforcement is on, poison `c` before the runner
        swallows the exception."""
        try:
            return work()
        except Exception as e:
            if c is not None and self.enforced():
                W.poison_conditioning(c, f"Embedding Sanitizer failed ({e}); enforcement is on, "
                                         f"so the generation is refused")
            raise

    def process_batch(self, p, enabled=False, intensity=1.0, *args, **kwargs):
        # A1111 1.6-1.8 only: build the conds now (cached in p's private cache, so the
        # webui's own setup_conds() right after returns these very objects) and sanitize them.
        if HAS_SAMPLING_HOOK:
            return
        state = getattr(p, "_embedding_sanitizer", None)
        if not ((state is not None and state["decision"].active) or self.enforced()):
            return

        def work():
            W.privatize_caches(p)
            p.setup_conds()
            if self.state(p, enabled, intensity, p.c) is not None:
                self.apply(p, p.c, p.uc, "first")
        self.guarded(p, getattr(p, "c", None), work)

    def before_hr(self, p, enabled=False, intensity=1.0, *args):
        # A1111 1.6-1.8 only: runs after calculate_hr_conds(), right before the hires sampler.
        if HAS_SAMPLING_HOOK or getattr(p, "hr_c", None) is None:
            return

        def work():
            if self.state(p, enabled, intensity, p.hr_c) is not None:
                self.apply(p, p.hr_c, getattr(p, "hr_uc", None), "hires")
        self.guarded(p, p.hr_c, work)

    def process_before_every_sampling(self, p, enabled=False, intensity=1.0, *args, **kwargs):
        c = kwargs.get("c")

        def work():
            if c is None or self.state(p, enabled, intensity, c) is None:
                return
            hires = c is getattr(p, "hr_c", None) and c is not getattr(p, "c", None)
            self.apply(p, c, kwargs.get("uc"), "hires" if hires else "first")
        self.guarded(p, c, work)

    def apply(self, p, c, uc, stage):
        state = p._embedding_sanitizer
        d = state["decision"]
        if d.refusal:
            W.poison_conditioning(c, d.refusal)
            log({"event": "refused", "stage": stage, "warning": d.refusal})
            return
        uc_before = W.conditioning_signature(uc) if uc is not None else None
        try:
            first = W.schedule_lists(c)[0][0].cond
            device = (first["crossattn"] if isinstance(first, dict) else first).device
            model = load(state["weights"], device)
            reader, texts = self.text_reading(p, stage)
            before = len(state["ledger"].results)
            n, read_plainly = W.sanitize_conditioning(c, model, d, state["ledger"], reader, texts,
                                                      loaded_model_family())
            negative_sanitized = uc is not None and W.negative_counts(W.lowest_cfg(p))
            if negative_sanitized:      # read through its own text, as the positive (the built-in sanitizer needs it)
                _, negative_texts = self.text_reading(p, stage, negative=True)
                n += W.sanitize_conditioning(uc, model, d, state["ledger"], reader, negative_texts,
                                             loaded_model_family())[0]
        except Exception as e:
            if d.enforced:
                raise
            self.warn(p, f"Embedding Sanitizer failed ({e}); this image was NOT sanitized")
            return
        new = state["ledger"].results[before:]
        # "erased tokens": the first image's erased prompt tokens (all parts and schedules),
        # counted once; every position (padding too) only when the prompt cannot be tokenized.
        display = self.token_display(p, c, state) if n else None
        if state["erased"] is None:
            state["erased"] = display[1] if display else sum(
                int((r.gates[0] >= report.ERASED_GATE).sum()) for _, r in new)
        state["model"] = model
        value = W.format_infotext(state["weights"], d, state["erased"])
        p.extra_generation_params[W.INFOTEXT_KEY] = value
        if display:
            DISPLAYS.put(W.first_prompt(p), value, display[0])
        log({"event": "sanitized", "stage": stage, "new_conds": n, "erased_tokens": state["erased"],
             "weights": state["weights"], "intensity": d.intensity, "enforced": d.enforced,
             "positive_max_change": W.max_change(state["ledger"]),
             "negative_untouched": uc is None or W.conditioning_signature(uc) == uc_before,
             "negative_sanitized": negative_sanitized,
             "negative_conds": 0 if uc is None else len(uc_before), "read_plainly": read_plainly,
             "prompt": W.first_prompt(p)})

    @staticmethod
    def text_reading(p, stage, negative=False):
        """(the webui's encoder as disguise.plain_reading reads it, each schedule entry's text of the
        positive, or of the negative), or (None, None) where they cannot be had: then the conds are
        sanitized on their own reading."""
        try:
            from modules import devices, prompt_parser
            engine = W.text_engine(p.sd_model)
            if engine is None:
                return None, None
            kind = "negative_prompt" if negative else "prompt"
            prompts = getattr(p, f"hr_{kind}s", None) if stage == "hires" else None
            prompts = prompts or getattr(p, f"{kind}s", None) or [getattr(p, kind, "")]
            texts = W.schedule_texts([str(t) for t in prompts], prompt_parser, *schedule_steps(p, stage),
                                     negative=negative)

            def conditioning(texts):
                with devices.autocast():      # as the webui builds its conds
                    return p.sd_model.get_learned_conditioning(texts)
            return W.WebuiTextReader(conditioning, engine.tokenize_line, W.special_ids(engine),
                                     W.POOLED_IN_VECTOR.get(loaded_model_family(), 0)), texts
        except Exception as e:
            log({"event": "text-reading-unavailable", "error": repr(e)})
            return None, None

    def token_display(self, p, c, state):
        """(HTML of the first image's prompt parts with their token scores, how many of its
        tokens were erased), or None when the prompt cannot be tokenized."""
        try:
            engine = W.text_engine(p.sd_model)
            from modules import prompt_parser
            parts = W.schedule_texts([W.first_prompt(p)], prompt_parser, *schedule_steps(p, "first"))
            tok = getattr(engine, "tokenizer", None)
            specials = W.special_ids(engine)
            html_parts, erased = [], 0
            for composable, texts in zip(c.batch[0], parts):
                for entry, (_, text) in zip(composable.schedules, texts):
                    result = state["ledger"].result_for(entry.cond)
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
            return ("".join(html_parts), erased) if html_parts else None
        except Exception as e:  # the display is optional; sanitization already happened
            log({"event": "display-failed", "error": repr(e)})
            return None



# ------------------------------------------------------------------------------ callbacks

def on_ui_settings():
    section = W.SECTION
    slider = {"minimum": 0.0, "maximum": validation.MAX_INTENSITY, "step": 0.05}

    def add(key, info):
        info.category_id = "sd"      # A1111 1.7+ files it under "Stable Diffusion", not "Uncategorized"
        shared.opts.add_option(key, info)

    add(W.OPT_ENABLED, shared.OptionInfo(W.DEFAULTS[W.OPT_ENABLED], "Sanitize by default (initial state of the per-generation toggle)",
                                         section=section))
    add(W.OPT_INTENSITY, shared.OptionInfo(W.DEFAULTS[W.OPT_INTENSITY], "Default intensity", gr.Slider, slider,
                                           section=section).info(INTENSITY_INFO))
    add(W.OPT_THRESHOLD, shared.OptionInfo(W.DEFAULTS[W.OPT_THRESHOLD], "Threshold", gr.Slider,
                                           {"minimum": 0.0, "maximum": 1.0, "step": 0.01}, section=section,
                                           infotext=W.PASTE_NAMES[W.OPT_THRESHOLD]).info(THRESHOLD_INFO))
    add(W.OPT_CONCEPTS, shared.OptionInfo(W.DEFAULTS[W.OPT_CONCEPTS], "Concepts to erase (comma-separated; empty = all the file knows)",
                                          section=section, infotext=W.PASTE_NAMES[W.OPT_CONCEPTS]))
    add(W.OPT_WEIGHTS, shared.OptionInfo(W.DEFAULTS[W.OPT_WEIGHTS], f"Sanitizer (a file in models/{W.WEIGHTS_FOLDER}; empty = the first file, or {BUILTIN_NAME} when there is none)", gr.Dropdown,
                                         lambda: {"choices": ["", BUILTIN_NAME] + weight_files()}, refresh=weight_files,
                                         section=section, infotext=W.PASTE_NAMES[W.OPT_WEIGHTS]))
    add(W.OPT_ENFORCE, shared.OptionInfo(W.DEFAULTS[W.OPT_ENFORCE], "Enforce on every generation (per-generation and API controls "
                                                "cannot turn it off; refuse generations it cannot sanitize)",
                                         section=section, restrict_api=True).info(
        "weight file, concepts, highest threshold and minimum intensity are pinned to their values at startup; "
        "restart to change them"))
    add(W.OPT_ENFORCE_INTENSITY, shared.OptionInfo(W.DEFAULTS[W.OPT_ENFORCE_INTENSITY], "Minimum intensity when enforced", gr.Slider,
                                                   {**slider, "minimum": 0.05}, section=section, restrict_api=True))


def on_infotext_pasted(infotext, params):
    """Restore the settings recorded with an image as override settings of the paste."""
    restored = W.settings_from_infotext(params)
    for key, value in restored.get("options", {}).items():
        params.setdefault(W.PASTE_NAMES[key], value)


def on_cfg_denoiser(params):
    """Every sampling step, while enforced: refuse the step unless its conds are ones we sanitized
    (W.step_refusal). The webui swallows exceptions here, so a refusal replaces the step's text
    conditioning with one that raises when the sampler reads it; so does any error while enforced.
    Not enforced, a generation we sanitized that switches to other conds (a refiner) is only
    reported, once: the steps from there on are not sanitized."""
    if not EmbeddingSanitizerScript.enforced():
        warn_unsanitized_steps(params)
        return
    try:
        # A1111 before 1.7 passes no denoiser: the webui runs one generation at a time, so the last
        # one our process hook saw is the one sampling (a stale one fails the check, never passes it).
        p = params.denoiser.p if getattr(params, "denoiser", None) is not None else LAST_PROCESSED["p"]()
        state = getattr(p, "_embedding_sanitizer", None)
        problem = W.step_refusal(state["ledger"] if state else None, params.text_cond, params.text_uncond,
                                 W.lowest_cfg(p))
    except Exception as e:
        problem = f"checking the sampling step failed ({e})"
    if problem:
        reason = f"Embedding Sanitizer: {problem}; enforcement is on, so the generation is refused"
        log({"event": "refused", "stage": "sampling step", "warning": reason})
        params.text_cond = W.refused_conditioning(reason)


def warn_unsanitized_steps(params):
    p = getattr(getattr(params, "denoiser", None), "p", None)
    state = getattr(p, "_embedding_sanitizer", None)
    if state is None or not state["decision"].active or not state["ledger"].keep or state.get("steps_warned"):
        return
    try:
        problem = W.step_refusal(state["ledger"], params.text_cond, params.text_uncond, W.lowest_cfg(p))
    except Exception as e:
        problem = f"checking the sampling step failed ({e})"
    if problem:
        state["steps_warned"] = True
        text = f"Embedding Sanitizer: {problem}; the steps from here on were NOT sanitized"
        log({"event": "problem", "stage": "sampling step", "warning": text, "enforced": False})   # prints it
        if hasattr(p, "comment"):
            p.comment(text)


def on_model_loaded(sd_model):
    d = W.resolve_settings(W.read_options(opt), None, None, OPERATOR)
    name = W.pick_weights(d.weights, weight_files())
    if name is None or name == BUILTIN_NAME or not d.active:      # the built-in one fits every model
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
script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
