"""Train Embedding Sanitizer: trains the engine on the outputs of the CLIP it is given."""

from __future__ import annotations

import os
import re

import comfy.model_management
import comfy.utils
import folder_paths
import torch

from embedding_sanitizer import save_sanitizer
from embedding_sanitizer.lexicon import Concept, builtin_concepts
from embedding_sanitizer.train import TrainConfig, train_sanitizer

from .common import CATEGORY, FOLDER, register_folder

register_folder()

PRESETS = ["nudity + violence", "nudity", "violence", "custom only"]
_FAMILY_BY_WIDTH = {768: "sd1-clip-l", 1024: "sd2-clip-h", 2048: "sdxl-clip-lg"}


class ComfyClipEncoder:
    """The engine's TextEncoder protocol over a ComfyUI CLIP object (any family ComfyUI loads)."""

    chunk_length = 77
    max_tokens = 77
    leading_specials = 1

    def __init__(self, clip):
        self.clip = clip
        probe, pooled = self._encode_one("")
        self.embed_dim = probe.shape[-1]
        self.family = _FAMILY_BY_WIDTH.get(self.embed_dim, f"comfyui-clip-{self.embed_dim}")
        # SDXL's UNet reads the pooled vector; SD 1.x / 2.x do not.
        self.pooled_dim = pooled.shape[-1] if (pooled is not None and self.family == "sdxl-clip-lg") else 0
        self.name = f"ComfyUI {type(clip.cond_stage_model).__name__}"
        self._empty = probe[:, :77]
        self._empty_pooled = pooled

    def _tokens(self, text):
        tokens = self.clip.tokenize(text, return_word_ids=True)
        key = "l" if "l" in tokens else next(iter(tokens))
        return tokens, key

    def token_ids(self, text: str) -> list[int]:
        tokens, key = self._tokens(text)
        return [t[0] for chunk in tokens[key] for t in chunk if t[2] != 0]

    @torch.no_grad()
    def _encode_one(self, text: str):
        tokens = self.clip.tokenize(text)
        cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        return cond.float().cpu(), (pooled.float().cpu() if pooled is not None else None)

    @torch.no_grad()
    def encode(self, prompts):
        from embedding_sanitizer.encoders import EncodedBatch

        conds, pooled, ids, real = [], [], [], []
        for text in prompts:
            cond, p = self._encode_one(text)
            tokens, key = self._tokens(text)
            flat = [t for chunk in tokens[key] for t in chunk]
            conds.append(cond[0])
            pooled.append(p[0] if p is not None else None)
            ids.append([t[0] if isinstance(t[0], int) else 0 for t in flat])
            real.append([t[2] != 0 for t in flat])
        length = max(c.shape[0] for c in conds)
        for i, c in enumerate(conds):
            # A shorter prompt in a longer batch gets empty chunks, as the engine's own encoders do.
            while c.shape[0] < length:
                c = torch.cat([c, self._empty[0]])
                ids[i] += [0] * 77
                real[i] += [False] * 77
            conds[i] = c
            ids[i], real[i] = ids[i][:length], real[i][:length]
        real_t = torch.tensor(real, dtype=torch.bool)
        inv = self._inverse_vocab()
        tokens = [[str(inv.get(t, t)).replace("</w>", "") if r else "" for t, r in zip(row, mask)]
                  for row, mask in zip(ids, real)]
        pooled_t = torch.stack(pooled) if self.pooled_dim else None
        return EncodedBatch(torch.stack(conds), pooled_t, torch.tensor(ids), tokens, real_t,
                            torch.ones_like(real_t))

    def _inverse_vocab(self):
        _, key = self._tokens("a")
        tok = getattr(self.clip.tokenizer, f"clip_{key}", None)
        return getattr(tok, "inv_vocab", None) or {}


def _split_terms(text: str) -> list[str]:
    return [t.strip() for t in re.split(r"[\n,]", text or "") if t.strip()]


def _safe_filename(name: str) -> str:
    base = (name or "").strip().removesuffix(".safetensors")
    if not base or "/" in base or "\\" in base or not re.fullmatch(r"[\w.\- ]+", base) or base.startswith("."):
        raise ValueError(f"Train Embedding Sanitizer: '{name}' is not a usable file name "
                         f"(letters, digits, space, . _ - only)")
    return base + ".safetensors"


class TrainEmbeddingSanitizer:
    DESCRIPTION = ("Trains a sanitizer for the CLIP it is given (your checkpoint's text encoder) and saves it "
                   "into models/sanitizers. Takes minutes on a GPU; the progress bar shows the steps.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The CLIP of the checkpoint the sanitizer is for (SD 1.x, SD 2.x, SDXL...)."}),
                "preset": (PRESETS, {"default": "nudity + violence",
                                     "tooltip": "Built-in concepts to erase; 'custom only' uses just your terms below."}),
                "steps": ("INT", {"default": 1500, "min": 10, "max": 100000, "step": 10,
                                  "tooltip": "Optimisation steps (1500 is the default training)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                                 "tooltip": "Seed for the synthesized prompts and the training: same seed, same result."}),
                "filename": ("STRING", {"default": "my-sanitizer",
                                        "tooltip": "Saved as models/sanitizers/<filename>.safetensors."}),
                "overwrite": ("BOOLEAN", {"default": False,
                                          "tooltip": "Replace an existing file of that name (otherwise an error)."}),
            },
            "optional": {
                "custom_concept": ("STRING", {"default": "", "tooltip": "Name of your own concept (one word), e.g. 'gore'."}),
                "custom_terms": ("STRING", {"multiline": True, "default": "",
                                            "tooltip": "Terms of your concept, one per line or comma-separated."}),
                "custom_anchors": ("STRING", {"multiline": True, "default": "",
                                              "tooltip": "Safe replacements of the same role (one per line or comma-separated); "
                                                         "give one-, two- and three-word anchors."}),
                "pairs_per_concept": ("INT", {"default": 2500, "min": 32, "max": 100000,
                                              "tooltip": "Synthesized unsafe/anchor prompt pairs per concept "
                                                         "(benign prompts scale with it)."}),
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
              custom_terms="", custom_anchors="", pairs_per_concept=2500):
        concepts = self._concepts(preset, custom_concept, custom_terms, custom_anchors)
        name = _safe_filename(filename)
        target = os.path.join(folder_paths.get_folder_paths(FOLDER)[0], name)
        if os.path.exists(target) and not overwrite:
            raise ValueError(f"Train Embedding Sanitizer: {target} exists; pick another filename or set overwrite")
        benign = TrainConfig.benign * int(pairs_per_concept) // TrainConfig.pairs_per_concept
        config = TrainConfig(steps=int(steps), seed=int(seed), pairs_per_concept=int(pairs_per_concept),
                             benign=benign, heldout_pairs_per_concept=max(16, pairs_per_concept // 8),
                             heldout_benign=max(32, benign // 10))
        bar = comfy.utils.ProgressBar(int(steps))

        def progress(step, total, losses):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if total:
                bar.update_absolute(step, total)

        # ComfyUI runs nodes under torch.inference_mode(); training needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            encoder = ComfyClipEncoder(clip)
            model, summary = train_sanitizer(encoder, concepts, config, progress=progress)
        save_sanitizer(model, target, summary)
        heldout = summary.get("heldout", {})
        text = (f"saved {target}\nencoder {encoder.name} ({encoder.family}), concepts "
                f"{[c.name for c in concepts]}, steps {steps}, seed {seed}\n"
                + ", ".join(f"{k} {v}" for k, v in heldout.items())
                + "".join(f"\nwarning: {w}" for w in summary["warnings"]))
        return {"ui": {"text": [text]}, "result": (model, text)}

    @staticmethod
    def _concepts(preset, custom_concept, custom_terms, custom_anchors) -> list[Concept]:
        builtin = builtin_concepts()
        chosen = {"nudity + violence": ["nudity", "violence"], "nudity": ["nudity"],
                  "violence": ["violence"], "custom only": []}[preset]
        concepts = [builtin[n] for n in chosen]
        terms, anchors = _split_terms(custom_terms), _split_terms(custom_anchors)
        if terms or anchors or (custom_concept or "").strip():
            if not terms or not anchors:
                raise ValueError("Train Embedding Sanitizer: a custom concept needs both terms and anchors")
            held = max(1, len(terms) // 5) if len(terms) >= 5 else 0
            concepts.append(Concept((custom_concept or "custom").strip(), tuple(terms[held:]), tuple(anchors),
                                    tuple(terms[:held])))
        if not concepts:
            raise ValueError("Train Embedding Sanitizer: 'custom only' needs custom terms and anchors")
        return concepts
