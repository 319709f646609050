"""Load Embedding Sanitizer, Sanitize Conditioning, CLIP Text Encode (Sanitized)."""

from __future__ import annotations

import logging
import os

import folder_paths

from embedding_sanitizer import WeightFileError, load_sanitizer, validation
from embedding_sanitizer.builtin import BUILTIN_NAME, shared_builtin
from embedding_sanitizer.model import DEFAULT_THRESHOLD

from .common import CATEGORY, FOLDER, node_output, register_folder, sanitize_conditioning

register_folder()
LOG = logging.getLogger("embedding_sanitizer")

INTENSITY = ("FLOAT", {"default": 1.0, "min": 0.0, "max": validation.MAX_INTENSITY, "step": 0.05, "display": "slider",
                       "tooltip": "How strongly flagged tokens are rewritten: 0 = off (output equals input), "
                                  "1 = as trained, above 1 = stronger."})
THRESHOLD = ("FLOAT", {"default": DEFAULT_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01,
                       "tooltip": "Tokens whose harmfulness score is below this are left untouched "
                                  f"(default {DEFAULT_THRESHOLD:g}: only tokens the sanitizer is more sure of "
                                  "than not; 0 = every token is gated by its score)."})


def check_widgets(**values):
    """VALIDATE_INPUTS: refuse a NaN, infinite or out-of-range widget value before the
    workflow runs (ComfyUI's own min/max check compares with < and >, which NaN passes).
    A linked input is not known yet (None) and is checked when the node runs."""
    checks = {"intensity": validation.intensity, "threshold": validation.threshold}
    for name, value in values.items():
        if value is not None:
            try:
                checks[name](value)
            except validation.InvalidValue as exc:
                return str(exc)
    return True


def _full_path(name: str) -> str:
    getter = getattr(folder_paths, "get_full_path_or_raise", None)
    path = getter(FOLDER, name) if getter else folder_paths.get_full_path(FOLDER, name)
    if not path or not os.path.isfile(path):
        # The folders are the server's paths: the log gets them, the client (any client) does not.
        LOG.error("Embedding Sanitizer: '%s' is not in %s", name, folder_paths.get_folder_paths(FOLDER))
        raise FileNotFoundError(f"Embedding Sanitizer: '{name:.100}' is not in the sanitizers folder "
                                f"(models/sanitizers); refresh the list and pick another")
    return path


class EmbeddingSanitizerLoader:
    DESCRIPTION = ("Loads an Embedding Sanitizer: the built-in one (no file, any text encoder, reads the prompt's "
                   "text) or one trained for your text encoder from models/sanitizers (.safetensors), the "
                   "precise choice.")

    @classmethod
    def INPUT_TYPES(cls):
        # The built-in one first: what a new node and the example workflows select, file or not.
        names = [BUILTIN_NAME] + folder_paths.get_filename_list(FOLDER)
        options = {"default": BUILTIN_NAME,
                   "tooltip": f"'{BUILTIN_NAME}' works with every text encoder and needs the prompt's text "
                              "(CLIP Text Encode (Sanitized), or clip and text on Sanitize Conditioning); a file "
                              "in ComfyUI/models/sanitizers trained for your checkpoint's text encoder is more "
                              "precise."}
        return {"required": {"sanitizer_name": (names, options)}}

    RETURN_TYPES = ("SANITIZER",)
    RETURN_NAMES = ("sanitizer",)
    OUTPUT_TOOLTIPS = ("The loaded sanitizer, for Sanitize Conditioning or CLIP Text Encode (Sanitized).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, sanitizer_name):
        if sanitizer_name == BUILTIN_NAME:
            return BUILTIN_NAME
        # Re-run when the file on disk changes (a value compared with the last one).
        try:
            stat = os.stat(_full_path(sanitizer_name))
            return f"{stat.st_mtime_ns}:{stat.st_size}"
        except (OSError, FileNotFoundError):
            return "missing"

    def load(self, sanitizer_name):
        if sanitizer_name == BUILTIN_NAME:
            return (shared_builtin(),)
        path = _full_path(sanitizer_name)
        try:
            model = load_sanitizer(path, device="cpu")
        except WeightFileError as exc:
            raise ValueError(f"Embedding Sanitizer: cannot load '{sanitizer_name}': {exc}") from None
        return (model,)


class EmbeddingSanitizerApply:
    DESCRIPTION = ("Scores every token of a conditioning for harmfulness and erases the flagged concepts "
                   "from it (rows of any text encoder: CLIP, T5, ...; and the pooled vector where the image "
                   "model reads it: SDXL, SD3, Flux). Put it on the positive prompt.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "The conditioning to sanitize (e.g. from CLIP Text Encode)."}),
                "sanitizer": ("SANITIZER", {"tooltip": "From Load Embedding Sanitizer: a trained one must match the text "
                                                       "encoder; the built-in one fits any, with clip and text."}),
                "intensity": INTENSITY,
                "threshold": THRESHOLD,
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Optional: the CLIP that encoded the text, to label the scores with "
                                             "its tokens and to check the sanitizer was trained for it."}),
                "text": ("STRING", {"forceInput": True, "default": "",
                                    "tooltip": "Optional: the prompt text that was encoded, to label the scores and to "
                                               "read spaced-out, look-alike and misspelled words as the "
                                               "words they spell (with clip)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, intensity=None, threshold=None):
        return check_widgets(intensity=intensity, threshold=threshold)

    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "report")
    OUTPUT_TOOLTIPS = ("The sanitized conditioning (all other keys kept).",
                       "A short text report: prompt score, flagged tokens, similarity to the original.")
    FUNCTION = "sanitize"
    CATEGORY = CATEGORY

    def sanitize(self, conditioning, sanitizer, intensity, threshold, clip=None, text=None):
        return node_output(*sanitize_conditioning(conditioning, sanitizer, intensity, threshold, clip, text))


class EmbeddingSanitizerCLIPTextEncode:
    DESCRIPTION = ("CLIP Text Encode followed by Sanitize Conditioning: a drop-in for the positive prompt, for "
                   "any text encoder ComfyUI loads (SD 1.x, SDXL, SD3, Flux, ...).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The text encoder of your checkpoint (CLIP, T5, ...: any that ComfyUI loads)."}),
            # The default is what a new node's prompt box holds; the node library's preview shows it.
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "The prompt to encode."}),
            "sanitizer": ("SANITIZER", {"tooltip": "From Load Embedding Sanitizer: a trained one must match this CLIP; "
                                                   "the built-in one fits any."}),
            "intensity": INTENSITY,
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, intensity=None):
        return check_widgets(intensity=intensity)

    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "report")
    OUTPUT_TOOLTIPS = ("The sanitized conditioning.", "A short text report of the scores.")
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, clip, text, sanitizer, intensity):
        tokens = clip.tokenize(text)
        if hasattr(clip, "encode_from_tokens_scheduled"):      # ComfyUI 0.3.x: what CLIPTextEncode does
            conditioning = clip.encode_from_tokens_scheduled(tokens)
        else:                                                  # ComfyUI 2024
            cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            conditioning = [[cond, {"pooled_output": pooled}]]
        return node_output(*sanitize_conditioning(conditioning, sanitizer, intensity, DEFAULT_THRESHOLD, clip, text))
