"""Sanitizer weight files: safetensors tensors plus one JSON metadata entry.

The JSON (under the metadata key "embedding_sanitizer") holds the format
version, the network's configuration, the encoder it was trained on and a
training summary. Loading checks all of it against the tensors and refuses
anything inconsistent with a one-line reason; pickles are never opened.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .model import EmbeddingSanitizer, SanitizerConfig

FORMAT_VERSION = 1
METADATA_KEY = "embedding_sanitizer"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "minilm-nudity-violence.safetensors"

_REQUIRED = {
    "format_version": int, "encoder_family": str, "encoder_name": str, "embed_dim": int,
    "pooled_dim": int, "chunk_length": int, "max_tokens": int, "concepts": list,
    "width": int, "layers": int, "heads": int, "training": dict,
}
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class WeightFileError(ValueError):
    """A weight file is missing, unreadable, not a sanitizer, or inconsistent."""


def default_weights_path() -> Path:
    return DEFAULT_WEIGHTS


def save_sanitizer(model: EmbeddingSanitizer, path: Union[str, Path], training: dict) -> Path:
    """Write tensors + metadata to `path` atomically (a temp file renamed into place)."""
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, **model.config.to_dict(), "training": training}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
        os.chmod(tmp, 0o644)     # mkstemp makes it private; a host may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    model.metadata = meta
    return path


def read_metadata(path: Union[str, Path]) -> dict:
    """The validated JSON metadata of a weight file, without loading its tensors."""
    path = Path(path)
    _check_container(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise WeightFileError(f"{path.name}: not a readable safetensors file, probably truncated "
                              f"or corrupted ({exc})") from None
    if raw is None:
        raise WeightFileError(f"{path.name}: a safetensors file, but not an Embedding Sanitizer "
                              f"(no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightFileError(f"{path.name}: its metadata is not valid JSON ({exc})") from None
    _check_metadata(path.name, meta)
    return meta


def load_sanitizer(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> EmbeddingSanitizer:
    path = Path(path)
    meta = read_metadata(path)
    config = SanitizerConfig(**{k: meta[k] for k in (
        "embed_dim", "concepts", "pooled_dim", "chunk_length", "max_tokens", "width", "layers",
        "heads", "encoder_family", "encoder_name")})
    model = EmbeddingSanitizer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            found = set(f.keys())
            if found != set(expected):
                missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
                raise WeightFileError(f"{path.name}: tensors do not match its metadata "
                                      f"(missing {missing[:3]}, unexpected {extra[:3]})")
            state = {}
            for key in expected:
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != expected[key]:
                    raise WeightFileError(f"{path.name}: tensor '{key}' has shape {tuple(tensor.shape)}, "
                                          f"its metadata implies {expected[key]}")
                if not torch.isfinite(tensor).all():
                    raise WeightFileError(f"{path.name}: tensor '{key}' holds NaN or infinite values")
                state[key] = tensor.float()
    except WeightFileError:
        raise
    except Exception as exc:
        raise WeightFileError(f"{path.name}: could not read its tensors ({exc}); "
                              f"the file is probably truncated or corrupted") from None
    model.load_state_dict(state)
    model.metadata = meta
    return model.to(device).eval()


def _check_container(path: Path) -> None:
    if not path.is_file():
        raise WeightFileError(f"no sanitizer weight file at {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_PICKLE_MAGICS):
        raise WeightFileError(f"{path.name}: this is a pickle (.pt/.ckpt) file; sanitizer weights are "
                              f"safetensors only and pickles are never loaded")
    if len(head) < 8:
        raise WeightFileError(f"{path.name}: file is empty or truncated ({len(head)} bytes)")
    header_size = int.from_bytes(head, "little")
    if header_size > path.stat().st_size - 8:
        raise WeightFileError(f"{path.name}: not a safetensors file, or truncated "
                              f"(its header claims {header_size} bytes, the file has {path.stat().st_size})")


def _check_metadata(name: str, meta) -> None:
    if not isinstance(meta, dict):
        raise WeightFileError(f"{name}: metadata must be a JSON object")
    for key, kind in _REQUIRED.items():
        if key not in meta:
            raise WeightFileError(f"{name}: metadata lacks '{key}'")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise WeightFileError(f"{name}: metadata '{key}' should be {kind.__name__}, "
                                  f"got {type(meta[key]).__name__}")
    if meta["format_version"] != FORMAT_VERSION:
        raise WeightFileError(f"{name}: format version {meta['format_version']} is not supported "
                              f"(this version reads {FORMAT_VERSION}); update Embedding Sanitizer")
    if not meta["concepts"] or not all(isinstance(c, str) and c for c in meta["concepts"]):
        raise WeightFileError(f"{name}: metadata 'concepts' must be a non-empty list of names")
    if meta["embed_dim"] <= 0 or meta["pooled_dim"] < 0 or meta["chunk_length"] < 0:
        raise WeightFileError(f"{name}: metadata sizes are out of range "
                              f"(embed_dim {meta['embed_dim']}, pooled_dim {meta['pooled_dim']}, "
                              f"chunk_length {meta['chunk_length']})")
    if meta["chunk_length"] and meta["max_tokens"] != meta["chunk_length"]:
        raise WeightFileError(f"{name}: max_tokens {meta['max_tokens']} differs from chunk_length "
                              f"{meta['chunk_length']}")
    if meta["width"] % max(meta["heads"], 1) or meta["heads"] <= 0 or meta["layers"] <= 0:
        raise WeightFileError(f"{name}: network sizes are inconsistent "
                              f"(width {meta['width']}, heads {meta['heads']}, layers {meta['layers']})")
