"""ComfyUI glue shared by the nodes: the models/sanitizers folder, the family check, and
running the engine over a CONDITIONING list. No tensor math lives here."""

from __future__ import annotations

import logging
import os

import folder_paths
import torch

from embedding_sanitizer import SanitizerShapeError, families, validation
from embedding_sanitizer.builtin import BUILTIN_NAME, NoTextError, is_builtin, no_text_message
from embedding_sanitizer.conditioning import filled_width, valid_rows
from embedding_sanitizer.disguise import has_reading, plain_reading
from embedding_sanitizer.metrics import embedding_cosine
from embedding_sanitizer.hosts.comfy_operator import mark_sanitized
from embedding_sanitizer.report import format_report, prompt_summary, token_entries, token_report

from .text_encoders import ComfyTextEncoder, clip_family, labels_for

FOLDER = "sanitizers"
EXTENSIONS = {".safetensors"}
CATEGORY = "conditioning/sanitizer"
# Family ids the first Train node wrote from the width alone; only the width can be checked.
LEGACY_PREFIX = "comfyui-clip-"


def register_folder() -> None:
    """models/sanitizers, added beside (never instead of) an extra_model_paths.yaml entry, and
    created, so that a first run shows users where trained or downloaded sanitizers go."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError as exc:      # a read-only install still loads; the Train node reports its own error
        logging.warning("[Embedding Sanitizer] could not create %s: %s", default, exc.strerror or exc)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))
        return
    paths = list(entry[0])
    if default not in paths:
        paths.append(default)
    # A yaml-made entry has an empty extension set, which would list every file.
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def describe_sanitizer(model) -> str:
    if is_builtin(model):
        return BUILTIN_NAME
    cfg = model.config
    return f"{families.comfy_family_label(cfg.encoder_family)}, D={cfg.embed_dim}"


def sanitizer_in_use(model) -> str:
    """The report's first line: which sanitizer ran, so a user can tell the precise one from the fallback."""
    if is_builtin(model):
        return (f"sanitizer: {BUILTIN_NAME}, judged on the prompt's text; a sanitizer trained for this "
                f"text encoder is more precise")
    return f"sanitizer: trained for {describe_sanitizer(model)}"


def _mismatch(model, embedding: torch.Tensor, source: str, detail: str = "") -> ValueError:
    return ValueError(
        f"Embedding Sanitizer mismatch: this sanitizer was trained for {describe_sanitizer(model)}, "
        f"but the conditioning has shape {tuple(embedding.shape)}, which looks like {source}. "
        f"Load a sanitizer trained for this text encoder (or train one with "
        f"'Train Embedding Sanitizer')." + (f" Details: {detail}" if detail else ""))


def check_family(model, embedding: torch.Tensor, pooled, clip=None) -> None:
    """Refuse a conditioning from another text encoder than the sanitizer's.

    With the CLIP that encoded it, its family is known exactly; without, the shapes of rows and
    pooled vector name the family (CLIP-L and T5-base differ in the pooled vector they carry; SD3
    with T5 and without in the features its rows fill)."""
    trained = model.config.encoder_family
    if trained.startswith(LEGACY_PREFIX) or not (trained in families.FAMILIES or trained.startswith("comfyui-")):
        return
    width = embedding.shape[-1]
    if clip is not None:
        found = clip_family(clip, width)
        if found != trained:
            raise _mismatch(model, embedding, families.comfy_family_label(found))
        return
    pooled_width = pooled.shape[-1] if torch.is_tensor(pooled) else None
    candidates = families.from_conditioning(width, pooled_width, filled_width(embedding))
    if candidates and trained not in {f.id for f in candidates}:
        raise _mismatch(model, embedding, " or ".join(f.label for f in candidates))


def _width_source(width: int) -> str:
    known = [f.label for f in families.FAMILIES.values() if f.embed_dim == width]
    return " or ".join(known) if known else f"an encoder of width {width}"


def _entry_label(entry_index: int, entries: int, item: int, items: int) -> str:
    """'' for a plain prompt; which part (Conditioning Combine, areas) and batch image otherwise."""
    parts = [] if entries == 1 else [f"part {entry_index + 1} of {entries}"]
    if items > 1:
        parts.append(f"image {item + 1} of {items}")
    return ", ".join(parts)


def sanitize_conditioning(conditioning, model, intensity: float, threshold: float, clip=None, text=None,
                          concepts=None):
    """A new CONDITIONING list (each dict copied, every key kept), report text and UI entries.

    With `clip` and `text` (what was encoded) the scores are labelled with the prompt's tokens, and
    the text is read through its disguises ("n u d e", "n4k3d": embedding_sanitizer.disguise)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError("Sanitize Conditioning: expected a non-empty CONDITIONING list")
    try:
        intensity, threshold = validation.intensity(intensity), validation.threshold(threshold)
    except validation.InvalidValue as exc:
        raise ValueError(f"Embedding Sanitizer: {exc}") from None
    out, ui, texts, labels, readings = [], [], [sanitizer_in_use(model)], {}, {}
    builtin = is_builtin(model)
    reader = None if builtin else _DisguiseReader(model, clip, text)
    host_encoder = _LazyTextEncoder(clip) if builtin and clip is not None else None
    for entry_index, entry in enumerate(conditioning):
        embedding, extras = entry[0], entry[1]
        pooled = extras.get("pooled_output")
        check_family(model, embedding, pooled, clip)
        # The built-in sanitizer moves whatever pooled vector there is; a trained one the one it was trained on.
        use_pooled = pooled if (torch.is_tensor(pooled) and (builtin or model.config.pooled_dim)) else None
        rows = embedding.shape[1]
        if clip is not None and text is not None and rows not in labels:
            labels[rows] = labels_for(clip, text, rows)
        attention_mask = valid_rows(embedding, extras.get("attention_mask"))
        if builtin:
            if host_encoder is None or not isinstance(text, str):
                raise NoTextError(f"Embedding Sanitizer: {no_text_message('a conditioning without clip and text')}; "
                                  f"connect clip and text")
            if not labels.get(rows):
                raise NoTextError(f"Embedding Sanitizer: {no_text_message('this conditioning')} (the text given "
                                  f"does not match its {rows} rows)")
            result = model.sanitize(embedding, use_pooled, text=text, encoder=host_encoder, intensity=intensity,
                                    threshold=threshold, concepts=concepts, attention_mask=attention_mask)
        else:
            if labels.get(rows) and rows not in readings:
                readings[rows] = reader.read(rows)
            reading = readings.get(rows)
            try:
                result = model.sanitize(embedding, use_pooled, intensity=intensity, threshold=threshold,
                                        concepts=concepts, attention_mask=attention_mask,
                                        plain_reading=reading and reading.repeat(embedding.shape[0]))
            except SanitizerShapeError as exc:
                raise _mismatch(model, embedding, _width_source(embedding.shape[-1]), str(exc)) from None
        new_extras = extras.copy()
        if use_pooled is not None:
            new_extras["pooled_output"] = result.pooled
        mark_sanitized(new_extras, model, embedding, use_pooled, result, intensity, threshold, concepts)
        out.append([result.embedding, new_extras, *entry[2:]])

        found = labels.get(rows)
        tokens, real = found if found else ([f"#{i}" for i in range(rows)], [True] * rows)
        cosines = embedding_cosine(result.embedding, embedding)
        for b in range(embedding.shape[0]):
            report = token_report(result, b, tokens, real)
            name = _entry_label(entry_index, len(conditioning), b, embedding.shape[0])
            texts.append(format_report(report, float(cosines[b]), label=name))
            ui.append({"label": name, "labelled": found is not None, **prompt_summary(report),
                       "cosine": round(float(cosines[b]), 6), "concepts": list(result.concepts),
                       "tokens": token_entries(report)})
    if clip is None or text is None:
        texts.append("note: connect clip and text to label the scores with the prompt's tokens and read its "
                     "disguised words")
    elif not all(u["labelled"] for u in ui):
        texts.append("note: the text does not match the conditioning's rows; tokens shown by position")
    if reader is not None and reader.note:
        texts.append(reader.note)
    return out, "\n".join(texts), ui


class _LazyTextEncoder:
    """The CLIP as the built-in sanitizer's host encoder, made on first use: making one encodes
    a probe, which a prompt with no flagged word never needs."""

    def __init__(self, clip):
        self.clip, self.encoder = clip, None

    def _get(self) -> ComfyTextEncoder:
        if self.encoder is None:
            try:
                self.encoder = ComfyTextEncoder(self.clip)
            except ValueError:
                raise ValueError("Embedding Sanitizer: the built-in sanitizer cannot match this text encoder's "
                                 "rows to its tokens; load a sanitizer trained for it") from None
        return self.encoder

    def encode(self, prompts):
        return self._get().encode(prompts)

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        return self._get().span_positions(text, start, end)


class _DisguiseReader:
    """The text's disguised spans, scored as the CLIP reads them plainly, and the concepts' terms
    found in it. It encodes the plain text once more, so only for a text that holds a disguise,
    and tokenizes it only where it holds either."""

    def __init__(self, model, clip, text):
        self.model, self.clip, self.text, self.note = model, clip, text, ""
        self.disguised = clip is not None and isinstance(text, str) and has_reading(model, text)
        self.encoder = None

    def read(self, rows: int):
        if not self.disguised:
            return None
        if self.encoder is None:
            try:
                self.encoder = ComfyTextEncoder(self.clip)
            except ValueError:      # an encoder whose rows are its own: its tokens cannot be found
                self.disguised = False
                self.note = ("note: disguised words were not read plainly: this text encoder's rows cannot be "
                             "matched to its tokens")
                return None
            self.note = "note: the text was also read plainly (disguised and misspelled words) and for the concepts' terms"
        return plain_reading(self.model, self.encoder, [self.text], rows)


def node_output(conditioning, report: str, ui: list) -> dict:
    """What the sanitizing nodes return: the result, and the scores for web/js/token_scores.js."""
    return {"ui": {"token_scores": ui, "text": [report]}, "result": (conditioning, report)}
