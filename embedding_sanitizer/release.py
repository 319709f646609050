"""Train the released sanitizers from one recipe file (docs/training.md, "Releasing").

A recipe names the license, the built-in concepts, TrainConfig fields and one entry per
sanitizer: a name, the encoder family it is for, the text encoder to train on (a path, or given
on the command line) and the weight file name. Every entry is checked before the first one
trains, so a typo fails in a second, not after an hour. Each weight file is written with a
model card beside it (<file>.md): what it is for, how it was trained and how it did on held-out
terms. Both are written atomically, and neither replaces an existing file unless `force`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from . import families
from .lexicon import builtin_concepts
from .train import TrainConfig, summary_text
from .weights import file_sha256

RECIPE_KEYS = {"license", "concepts", "config", "sanitizers"}
ENTRY_KEYS = {"name", "family", "encoder", "file"}
# The families whose encoders the engine builds from a checkpoint or text-encoder files
# (encoders.load_encoder): those of CLIP towers (with T5-XXL for SD3 and Flux), and the embedded MiniLM.
ENGINE_FAMILIES = {f.id for f in families.FAMILIES.values() if f.clip_widths} | {"minilm"}


@dataclass(frozen=True)
class ReleaseEntry:
    name: str                  # what --only and --encoder NAME=PATH call it
    family: str                # the family id the encoder must turn out to be
    encoder: Optional[str]     # an encoders.load_encoder spec; None: given on the command line
    file: str                  # the weight file's name in the output folder


@dataclass(frozen=True)
class Recipe:
    license: str
    concepts: tuple[str, ...]
    config: dict               # TrainConfig fields; pairs_per_concept scales the corpus (TrainConfig.scaled)
    entries: tuple[ReleaseEntry, ...]


def _fail(where, message: str):
    raise ValueError(f"{where}: {message}")


def read_recipe(path) -> Recipe:
    """The recipe at `path`, checked; encoder paths in it are relative to its folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(path, f"not a JSON recipe ({exc})")
    if not isinstance(data, dict) or set(data) - RECIPE_KEYS or not {"license", "sanitizers"} <= set(data):
        _fail(path, f"a recipe is an object with 'license', 'sanitizers' and optionally 'concepts', 'config' "
                    f"(keys: {sorted(RECIPE_KEYS)})")
    if not isinstance(data["license"], str) or not data["license"].strip():
        _fail(path, "'license' must name the license the files are released under")
    builtin = builtin_concepts()
    concepts = data.get("concepts", sorted(builtin))
    if not isinstance(concepts, list) or not concepts or any(c not in builtin for c in concepts):
        _fail(path, f"'concepts' must list built-in concepts, from {sorted(builtin)}")
    config = data.get("config", {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"device"}
    if not isinstance(config, dict) or set(config) - fields:
        _fail(path, f"'config' takes TrainConfig fields only: unknown {sorted(set(config) - fields)}")
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            _fail(path, f"config {key} must be a number of at least 0, got {value!r:.40}")
    entries = data["sanitizers"]
    if not isinstance(entries, list) or not entries:
        _fail(path, "'sanitizers' must list at least one entry")
    read = [_entry(path, i, e) for i, e in enumerate(entries)]
    for key in ("name", "file"):
        seen = [getattr(e, key) for e in read]
        if len(set(seen)) != len(seen):
            _fail(path, f"two sanitizers share a {key}")
    return Recipe(data["license"].strip(), tuple(concepts), config, tuple(read))


def _entry(path: Path, index: int, entry) -> ReleaseEntry:
    where = f"{path} sanitizers[{index}]"
    if not isinstance(entry, dict) or set(entry) - ENTRY_KEYS or not {"name", "family", "file"} <= set(entry):
        _fail(where, f"an entry has 'name', 'family', 'file' and optionally 'encoder' (keys: {sorted(ENTRY_KEYS)})")
    if entry["family"] not in families.FAMILIES:
        _fail(where, f"unknown family {entry['family']!r}; known: {sorted(families.FAMILIES)}")
    file = entry["file"]
    if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
        _fail(where, "'file' must be a plain file name ending in .safetensors")
    encoder = entry.get("encoder")
    if encoder is not None:
        # Relative to the recipe, so a recipe and its encoders can move together.
        encoder = ",".join(str(path.parent / part) for part in str(encoder).split(","))
    return ReleaseEntry(str(entry["name"]), entry["family"], encoder, file)


def card_path(weight: Path) -> Path:
    return weight.with_suffix(".md")


def plan(recipe: Recipe, out_dir, encoders: Mapping[str, str] = {}, only: Optional[Sequence[str]] = None,
         force: bool = False) -> list[tuple[ReleaseEntry, Path]]:
    """The entries to train with their weight paths, after every check that needs no training:
    names, encoder sources, families the engine can build, files that would be replaced."""
    from .encoders import t5_tokenizer

    names = [e.name for e in recipe.entries]
    for name in [*(only or ()), *encoders]:
        if name not in names:
            raise ValueError(f"no sanitizer named {name!r} in the recipe; its names: {names}")
    chosen = []
    for entry in recipe.entries:
        if only and entry.name not in only:
            continue
        if entry.family not in ENGINE_FAMILIES:
            raise ValueError(f"{entry.name}: the engine cannot build a {families.label(entry.family)} encoder "
                             f"yet (only {sorted(ENGINE_FAMILIES)}); train it with ComfyUI's Train node, "
                             f"or leave it out with --only")
        entry = dataclasses.replace(entry, encoder=encoders.get(entry.name, entry.encoder))
        if entry.encoder is None and entry.family != "minilm":
            raise ValueError(f"{entry.name}: no text encoder given; pass --encoder {entry.name}=PATH")
        if families.FAMILIES[entry.family].t5_rows:
            t5_tokenizer()      # raises, saying where to get it, before anything trains
        weight = Path(out_dir) / entry.file
        for existing in (weight, card_path(weight)):
            if existing.exists() and not force:
                raise FileExistsError(f"{existing} exists; pass --force to replace it")
        chosen.append((entry, weight))
    return chosen


def release(recipe: Recipe, out_dir, encoders: Mapping[str, str] = {}, only: Optional[Sequence[str]] = None,
            force: bool = False, device: Optional[str] = None, command: str = "",
            log: Callable[[str], None] = print) -> list[Path]:
    """Train and write every chosen entry (weight file and card); returns the weight paths."""
    from .encoders import load_encoder
    from .train import train_sanitizer
    from .weights import save_sanitizer, write_atomically

    chosen = plan(recipe, out_dir, encoders, only, force)
    builtin = builtin_concepts()
    concepts = [builtin[name] for name in recipe.concepts]
    pairs = recipe.config.get("pairs_per_concept", TrainConfig.pairs_per_concept)
    config = dataclasses.replace(TrainConfig(device=device).scaled(pairs, concepts), **recipe.config)
    written = []
    for entry, weight in chosen:
        encoder = load_encoder(entry.encoder, device)
        if encoder.family != entry.family:
            raise ValueError(f"{entry.name}: {entry.encoder} holds a {families.label(encoder.family)} encoder, "
                             f"not {families.label(entry.family)}")
        log(f"training {entry.name} ({families.label(entry.family)}) on {encoder.name}")
        model, summary = train_sanitizer(encoder, concepts, config)
        summary["command"] = command
        save_sanitizer(model, weight, summary, overwrite=force)
        card = model_card(entry, summary, weight, recipe.license)
        write_atomically(card_path(weight), lambda tmp: Path(tmp).write_text(card, encoding="utf-8"), force)
        log(f"wrote {weight} and {card_path(weight).name}\n{summary_text(summary)}")
        written.append(weight)
    return written


def model_card(entry: ReleaseEntry, summary: dict, weight: Path, license: str) -> str:
    """The Markdown card of a released weight file: what a user needs to pick it and trust it."""
    heldout = summary.get("heldout") or {}
    rows = {key: value for key, value in heldout.items() if not isinstance(value, dict)}
    rows.update({f"unsafe_touched_share ({name})": share
                 for name, share in heldout.get("unsafe_touched_share_by_concept", {}).items()})
    figures = "\n".join(f"| {key} | {value} |" for key, value in rows.items())
    sentences = summary_text(summary).replace("\n", "\n\n")      # one Markdown paragraph each
    concepts = "\n".join(f"- {name}: {c['train_terms']} training terms, {c['heldout_terms']} held-out terms, "
                         f"{c['anchors']} anchors" for name, c in summary["concepts"].items())
    return f"""# {weight.stem}

An Embedding Sanitizer for **{families.label(entry.family)}** (family `{entry.family}`): it scores each
prompt token for the concepts below and erases them from this text encoder's output embedding. It
fits this encoder family only; hosts refuse it on another.

- File: `{weight.name}` (SHA-256 `{file_sha256(weight)}`)
- Trained on: {summary['encoder']}
- Date: {summary['date']}
- License: {license}

## Concepts

{concepts}

## Held-out figures

Measured on prompts built from terms the training never saw, and on benign prompts it never saw.

{sentences}

| figure | value |
|---|---|
{figures}

## Recipe

`{summary.get('command', '')}`, with TrainConfig (embedding_sanitizer/train.py):

```json
{json.dumps(summary['config'], indent=2, sort_keys=True)}
```
"""
