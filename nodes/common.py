"""ComfyUI glue shared by the nodes: the models/sanitizers folder, token labels,
and running the engine over a CONDITIONING list. No tensor math lives here."""

from __future__ import annotations

import os

import folder_paths
import torch

from embedding_sanitizer import SanitizerShapeError
from embedding_sanitizer.metrics import embedding_cosine
from embedding_sanitizer.operator import mark_sanitized
from embedding_sanitizer.report import format_report, prompt_summary, token_report

FOLDER = "sanitizers"
EXTENSIONS = {".safetensors"}
CATEGORY = "conditioning/sanitizer"


def register_folder() -> None:
    """models/sanitizers, added beside (never instead of) an extra_model_paths.yaml entry."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))
        return
    paths = list(entry[0])
    if default not in paths:
        paths.append(default)
    # A yaml-made entry has an empty extension set, which would list every file.
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def sanitizer_dirs() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER))


# Which encoder a conditioning width comes from, for error messages.
WIDTHS = {768: "SD 1.x (CLIP-L)", 1024: "SD 2.x (OpenCLIP ViT-H)", 1280: "CLIP-G alone (SDXL refiner)",
          2048: "SDXL (CLIP-L + CLIP-G)", 4096: "T5 (SD3 / Flux)"}
FAMILIES = {"sd1-clip-l": "SD 1.x (CLIP-L)", "sd2-clip-h": "SD 2.x (OpenCLIP ViT-H)",
            "sdxl-clip-lg": "SDXL (CLIP-L + CLIP-G)", "minilm": "MiniLM (not an image-model encoder)"}


def describe_sanitizer(model) -> str:
    cfg = model.config
    return f"{FAMILIES.get(cfg.encoder_family, cfg.encoder_family)}, D={cfg.embed_dim}"


def mismatch_message(model, embedding: torch.Tensor, detail: str) -> str:
    width = embedding.shape[-1]
    source = WIDTHS.get(width, f"an encoder of width {width}")
    return (f"Embedding Sanitizer mismatch: this sanitizer was trained for {describe_sanitizer(model)}, "
            f"but the conditioning has shape {tuple(embedding.shape)}, which looks like {source}. "
            f"Load a sanitizer trained for this text encoder (or train one with "
            f"'Train Embedding Sanitizer'). Details: {detail}")


def token_labels(clip, text: str):
    """Display string and `real` flag per conditioning row for `text` encoded by `clip`.

    Row 77*c + j is chunk c, position j. BOS/EOS/padding have word_id 0.
    """
    tokens = clip.tokenize(text, return_word_ids=True)
    key = "l" if "l" in tokens else next(iter(tokens))
    tok = getattr(clip.tokenizer, f"clip_{key}", None)
    if tok is None:
        tok = getattr(clip.tokenizer, getattr(clip.tokenizer, "clip", ""), None)
    inv = getattr(tok, "inv_vocab", None) or {}
    labels, real = [], []
    for chunk in tokens[key]:
        for item in chunk:
            token, word_id = item[0], item[2] if len(item) > 2 else 1
            if isinstance(token, int):
                labels.append(str(inv.get(token, token)).replace("</w>", ""))
            else:
                labels.append("<embedding>")
            real.append(word_id != 0)
    return labels, real


def sanitize_conditioning(conditioning, model, intensity: float, threshold: float, labels=None, concepts=None):
    """A new CONDITIONING list (each dict copied, every key kept), report text and UI rows.

    `labels`: (tokens, real) from token_labels, or None to show positions by number.
    """
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError("Sanitize Conditioning: expected a non-empty CONDITIONING list")
    out, ui, texts = [], [], []
    for entry_index, entry in enumerate(conditioning):
        embedding, extras = entry[0], entry[1]
        pooled = extras.get("pooled_output")
        use_pooled = pooled if (torch.is_tensor(pooled) and model.config.pooled_dim) else None
        try:
            result = model.sanitize(embedding, use_pooled, intensity=float(intensity),
                                    threshold=float(threshold), concepts=concepts)
        except SanitizerShapeError as exc:
            raise ValueError(mismatch_message(model, embedding, str(exc))) from None
        new_extras = extras.copy()
        if use_pooled is not None:
            new_extras["pooled_output"] = result.pooled
        mark_sanitized(new_extras, model, embedding, use_pooled, result, intensity, threshold, concepts)
        out.append([result.embedding, new_extras, *entry[2:]])

        rows_tokens, rows_real, labelled = _labels_for(embedding.shape[1], labels)
        cosines = embedding_cosine(result.embedding, embedding)
        for b in range(embedding.shape[0]):
            rows = token_report(result, b, rows_tokens, rows_real)
            name = f"cond {entry_index}" + (f" item {b}" if embedding.shape[0] > 1 else "")
            texts.append(format_report(rows, float(cosines[b]), label=name))
            ui.append({"label": name, "labelled": labelled, **prompt_summary(rows),
                       "cosine": round(float(cosines[b]), 6),
                       "concepts": list(result.concepts),
                       "tokens": [{k: r[k] for k in ("position", "token", "score", "gate", "concept", "erased")}
                                  for r in rows]})
    if labels is not None and not all(u["labelled"] for u in ui):
        texts.append("note: the text does not match the conditioning's length; tokens shown by position")
    elif labels is None:
        texts.append("note: connect clip and text to label the scores with the prompt's tokens")
    return out, "\n".join(texts), ui


def _labels_for(length: int, labels):
    if labels is not None and len(labels[0]) == length:
        return labels[0], labels[1], True
    # No usable labels: every position by number (padding cannot be told apart).
    return [f"#{i}" for i in range(length)], [True] * length, False
