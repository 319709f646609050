"""Train Embedding Sanitizer: trains the engine on the outputs of the text encoder it is given."""

from __future__ import annotations

import logging
import os
import re

import comfy.model_management
import comfy.utils
import folder_paths
import torch

from embedding_sanitizer import save_sanitizer, validation
from embedding_sanitizer.lexicon import Concept, builtin_concepts
from embedding_sanitizer.train import TrainConfig, summary_text, train_sanitizer
from embedding_sanitizer.weights import check_writable

from .common import CATEGORY, FOLDER, register_folder
from .text_encoders import ComfyTextEncoder

register_folder()
LOG = logging.getLogger("embedding_sanitizer")

PRESETS = ["nudity + violence", "nudity", "violence", "custom only"]


def _split_terms(text: str) -> list[str]:
    return [t.strip() for t in re.split(r"[\n,]", text or "") if t.strip()]


MAX_FILENAME_BYTES = 200      # leaves room for the temporary file's prefix and suffix under 255
# Names Windows reserves for devices, with any extension ("con.safetensors" cannot be created).
RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                  *(f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10))}


def _safe_filename(name) -> str:
    base = (name if isinstance(name, str) else "").strip().removesuffix(".safetensors")
    if not base or "/" in base or "\\" in base or not re.fullmatch(r"[\w.\- ]+", base) or base.startswith("."):
        raise ValueError(f"Train Embedding Sanitizer: {name!r:.80} is not a usable file name "
                         f"(letters, digits, space, . _ - only)")
    if base.endswith((".", " ")) or base.split(".")[0].strip().upper() in RESERVED_NAMES:
        raise ValueError(f"Train Embedding Sanitizer: '{base}' is a name Windows reserves (or ends in a dot "
                         f"or space); pick another file name")
    filename = base + ".safetensors"
    if len(filename.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise ValueError(f"Train Embedding Sanitizer: the file name is {len(filename.encode('utf-8'))} bytes "
                         f"long; at most {MAX_FILENAME_BYTES} (with .safetensors) can be saved everywhere")
    return filename


def _save_beside(model, target: str, summary: dict, overwrite: bool) -> str:
    """Save; if the name was taken while training (and overwrite is off), keep the other file
    and save under the first free '<name>-N' instead, so the run is not lost."""
    base, ext = os.path.splitext(target)
    for attempt in range(1, 100):
        path = target if attempt == 1 else f"{base}-{attempt}{ext}"
        try:
            save_sanitizer(model, path, summary, overwrite=overwrite)
            return path
        except FileExistsError:
            continue
    raise ValueError(f"Train Embedding Sanitizer: {os.path.basename(target)} and its numbered alternatives "
                     f"all exist in the sanitizers folder")


class EmbeddingSanitizerTrain:
    DESCRIPTION = ("Trains a sanitizer for the text encoder it is given (your checkpoint's CLIP, T5, ...) and "
                   "saves it into models/sanitizers. Takes minutes on a GPU; the progress bar shows the "
                   "encoding of the training prompts, then the steps.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The text encoder of the checkpoint the sanitizer is for (SD 1.x, SDXL, "
                                             "SD3, Flux, ...)."}),
                "preset": (PRESETS, {"default": "nudity + violence",
                                     "tooltip": "Built-in concepts to erase; 'custom only' uses just your terms below."}),
                "steps": ("INT", {"default": TrainConfig.steps, "min": 10, "max": 100000, "step": 10,
                                  "tooltip": f"Optimisation steps ({TrainConfig.steps} is the default training)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                                 "tooltip": "Seed for the synthesized prompts and the training: same seed, same result "
                                            "(a new node keeps it fixed after a run)."}),
                "filename": ("STRING", {"default": "my-sanitizer",
                                        "tooltip": "Saved as models/sanitizers/<filename>.safetensors."}),
                "overwrite": ("BOOLEAN", {"default": False,
                                          "tooltip": "Replace an existing file of that name (otherwise an error)."}),
            },
            "optional": {
                "custom_concept": ("STRING", {"default": "", "tooltip": "Name of your own concept: one word (letters, digits, - or _), e.g. 'gore'."}),
                "custom_terms": ("STRING", {"multiline": True, "default": "",
                                            "tooltip": "Terms of your concept, one per line or comma-separated."}),
                "custom_anchors": ("STRING", {"multiline": True, "default": "",
                                              "tooltip": "Safe replacements of the same role (one per line or comma-separated); "
                                                         "give one-, two- and three-word anchors."}),
                "pairs_per_concept": ("INT", {"default": TrainConfig.pairs_per_concept, "min": 32, "max": 100000,
                                              "tooltip": "Synthesized unsafe/anchor prompt pairs per concept "
                                                         "(benign and real prompts scale with it)."}),
            },
        }

    RETURN_TYPES = ("SANITIZER", "STRING")
    RETURN_NAMES = ("sanitizer", "summary")
    OUTPUT_TOOLTIPS = ("The trained sanitizer (also saved to models/sanitizers).",
                       "Where it was saved and its held-out scores.")
    FUNCTION = "train"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def train(self, clip, preset, steps, seed, filename, overwrite=False, custom_concept="",
              custom_terms="", custom_anchors="", pairs_per_concept=TrainConfig.pairs_per_concept):
        # Everything is checked before the (long) encoding and training start.
        concepts = self._concepts(preset, custom_concept, custom_terms, custom_anchors)
        name = _safe_filename(filename)
        target = os.path.join(folder_paths.get_folder_paths(FOLDER)[0], name)
        if os.path.exists(target) and not overwrite:
            raise ValueError(f"Train Embedding Sanitizer: {name} exists in the sanitizers folder; pick another "
                             f"filename or set overwrite")
        try:
            check_writable(target)
        except ValueError as exc:    # its message holds the server's path: the log gets it, the client does not
            LOG.error("Train Embedding Sanitizer: %s", exc)
            raise ValueError(f"Train Embedding Sanitizer: cannot write {name} into the sanitizers folder; "
                             f"the server log says why") from None
        config = TrainConfig(steps=int(steps), seed=int(seed)).scaled(int(pairs_per_concept), concepts)
        bar = comfy.utils.ProgressBar(int(steps))
        # The bar shows the training prompts being encoded, the steps, then the held-out prompts
        # being encoded; the trainer says how many prompts each encoding reads.
        encoding = {"done": 0, "total": 1}

        def on_stage(stage, prompts):
            encoding.update(done=0, total=max(1, prompts))

        def on_encoded(count):
            encoding["done"] += count
            bar.update_absolute(min(encoding["done"], encoding["total"]), encoding["total"])

        def progress(step, total, losses):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if total:
                bar.update_absolute(step, total)

        # ComfyUI runs nodes under torch.inference_mode(); training needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            encoder = ComfyTextEncoder(clip, on_encoded)
            model, summary = train_sanitizer(encoder, concepts, config, progress=progress, on_stage=on_stage)
        saved = _save_beside(model, target, summary, bool(overwrite))
        moved = "" if saved == target else f" ({os.path.basename(target)} appeared while training and was kept)"
        text = f"Saved {os.path.basename(saved)}{moved}.\n{summary_text(summary)}"
        return {"ui": {"text": [text]}, "result": (model, text)}

    @staticmethod
    def _concepts(preset, custom_concept, custom_terms, custom_anchors) -> list[Concept]:
        builtin = builtin_concepts()
        chosen = {"nudity + violence": ["nudity", "violence"], "nudity": ["nudity"],
                  "violence": ["violence"], "custom only": []}.get(preset)
        if chosen is None:
            raise ValueError(f"Train Embedding Sanitizer: unknown preset {preset!r:.80}; choose one of {PRESETS}")
        concepts = [builtin[n] for n in chosen]
        terms, anchors = _split_terms(custom_terms), _split_terms(custom_anchors)
        if terms or anchors or (custom_concept or "").strip():
            if not terms or not anchors:
                raise ValueError("Train Embedding Sanitizer: a custom concept needs both terms and anchors")
            name = (custom_concept or "custom").strip()
            try:
                name = validation.concept_name(name)
            except validation.InvalidValue as exc:
                raise ValueError(f"Train Embedding Sanitizer: custom concept: {exc}") from None
            if name in chosen:
                raise ValueError(f"Train Embedding Sanitizer: the custom concept is named '{name}' like a concept "
                                 f"of the preset '{preset}'; give it another name or choose 'custom only'")
            held = max(1, len(terms) // 5) if len(terms) >= 5 else 0
            concepts.append(Concept(name, tuple(terms[held:]), tuple(anchors), tuple(terms[:held])))
        if not concepts:
            raise ValueError("Train Embedding Sanitizer: 'custom only' needs custom terms and anchors")
        return concepts
