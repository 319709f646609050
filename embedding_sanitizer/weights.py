"""Sanitizer weight files: safetensors tensors plus one JSON metadata entry.

The JSON (under the metadata key "embedding_sanitizer") holds the format
version, the network's configuration, the encoder it was trained on and a
training summary. Loading checks all of it against the tensors and refuses
anything inconsistent with a one-line reason; pickles are never opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import validation
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
# Sane bounds for every size in the metadata, checked before anything is built from them.
SIZE_BOUNDS = {"embed_dim": (1, 16384), "pooled_dim": (0, 16384), "chunk_length": (0, 8192),
               "max_tokens": (1, 8192), "width": (1, 8192), "layers": (1, 64), "heads": (1, 256)}
MAX_CONCEPTS = 64
MAX_HEADER_BYTES = 16 * 2 ** 20
FLOAT_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


class WeightFileError(ValueError):
    """A weight file is missing, unreadable, not a sanitizer, or inconsistent."""


def file_sha256(path: Union[os.PathLike, str]) -> str:
    """A file's SHA-256, read in 1 MiB blocks (weight files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_weights_path() -> Path:
    return DEFAULT_WEIGHTS


def save_sanitizer(model: EmbeddingSanitizer, path: Union[str, Path], training: dict,
                   overwrite: bool = True) -> Path:
    """Write tensors + metadata to `path` atomically (a temp file renamed into place).
    Without `overwrite`, a file at `path` (even one that appeared while we wrote) is kept
    and FileExistsError raised."""
    meta = {"format_version": FORMAT_VERSION, **model.config.to_dict(), "training": training}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    path = write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={
        METADATA_KEY: json.dumps(meta, sort_keys=True)}), overwrite)
    model.metadata = meta
    return path


def write_atomically(path: Union[str, Path], write: Callable[[str], None], overwrite: bool = True) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which is then renamed into place, so a
    reader never sees half a file. Without `overwrite`, a file at `path` (even one that appeared
    while we wrote) is kept and FileExistsError raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)     # mkstemp makes it private; a host may run as another user
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_without_replacing(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(path: Union[str, Path]) -> None:
    """Raise ValueError now where save_sanitizer(path) would fail only after a training of
    minutes to hours: `path` is a folder, or no file can be made beside it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the weight file's name, e.g. {path / 'sanitizer.safetensors'}")
    folder = path.parent
    if folder.is_dir():
        try:     # the same temporary file save_sanitizer makes: a name too long or a read-only disk fails here
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise ValueError(f"cannot write {path}: {exc.strerror or exc}; choose another place") from None
        os.close(fd)
        os.unlink(tmp)
        return
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {existing} is not a folder you can write to; choose another place")


def _place_without_replacing(tmp: str, path: Path) -> None:
    """Rename tmp to path unless path exists; a hard link makes the check and the rename one step."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists (it appeared while the file was being written); "
                              f"nothing was replaced") from None
    except OSError:              # no hard links on this file system: check, then rename
        if path.exists():
            raise FileExistsError(f"{path} exists; nothing was replaced") from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def read_metadata(path: Union[str, Path]) -> dict:
    """The validated JSON metadata of a weight file, without loading its tensors."""
    path = Path(path)
    return _parse_metadata(path, _read_header(path))


def load_sanitizer(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> EmbeddingSanitizer:
    """Build the network only after the header's tensor list matches what the metadata
    implies (sizes already bounded): a hostile file cannot make us allocate more than it holds."""
    path = Path(path)
    header = _read_header(path)
    meta = _parse_metadata(path, header)
    try:
        config = SanitizerConfig(**{k: meta[k] for k in (
            "embed_dim", "concepts", "pooled_dim", "chunk_length", "max_tokens", "width", "layers",
            "heads", "encoder_family", "encoder_name")},
            # Files written before the prior or the probe existed have none: weight 0, as trained.
            prompt_prior=meta.get("prompt_prior", 0.0), prompt_probe=meta.get("prompt_probe", 0.0))
        with torch.device("meta"):       # shapes only, no memory
            expected = {k: tuple(v.shape) for k, v in EmbeddingSanitizer(config).state_dict().items()}
    except ValueError as exc:
        raise WeightFileError(f"{path.name}: its metadata describes no valid network ({exc})") from None
    found = {k: v for k, v in header.items() if k != "__metadata__"}
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise WeightFileError(f"{path.name}: tensors do not match its metadata "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for key, shape in expected.items():
        if tuple(found[key]["shape"]) != shape:
            raise WeightFileError(f"{path.name}: tensor '{key}' has shape {tuple(found[key]['shape'])}, "
                                  f"its metadata implies {shape}")
    model = EmbeddingSanitizer(config)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {}
            for key in expected:
                tensor = f.get_tensor(key)
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


def _read_header(path: Path) -> dict:
    """The safetensors header (tensor entries and '__metadata__'), checked entry by entry
    against the file's size; float tensors only."""
    if not path.is_file():
        raise WeightFileError(f"no sanitizer weight file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(_PICKLE_MAGICS):
            raise WeightFileError(f"{path.name}: this is a pickle (.pt/.ckpt) file; sanitizer weights are "
                                  f"safetensors only and pickles are never loaded")
        if len(head) < 8:
            raise WeightFileError(f"{path.name}: file is empty or truncated ({len(head)} bytes)")
        header_size = int.from_bytes(head, "little")
        if header_size > size - 8:
            raise WeightFileError(f"{path.name}: not a safetensors file, or truncated "
                                  f"(its header claims {header_size} bytes, the file has {size})")
        if header_size > MAX_HEADER_BYTES:
            raise WeightFileError(f"{path.name}: its header is {header_size} bytes, more than a sanitizer's "
                                  f"{MAX_HEADER_BYTES} at most")
        raw = f.read(header_size)
    header = _json(path, raw, "header")
    if not isinstance(header, dict):
        raise WeightFileError(f"{path.name}: not a safetensors file (its header is not a JSON object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightFileError(f"{path.name}: not a safetensors file (its '__metadata__' is not text entries)")
    data_size = size - 8 - header_size
    for key, entry in header.items():
        if key != "__metadata__":
            _check_tensor_entry(path.name, key, entry, data_size)
    return header


def _check_tensor_entry(name: str, key: str, entry, data_size: int) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list) \
            or not isinstance(entry.get("data_offsets"), list) or len(entry["data_offsets"]) != 2:
        raise WeightFileError(f"{name}: header entry '{key[:60]}' is not a safetensors tensor entry")
    dtype = entry.get("dtype")
    if dtype not in FLOAT_DTYPE_BYTES:
        raise WeightFileError(f"{name}: tensor '{key[:60]}' is {str(dtype)[:20]}; sanitizer weights are "
                              f"floating point ({', '.join(FLOAT_DTYPE_BYTES)})")
    numbers = entry["shape"] + entry["data_offsets"]
    if len(entry["shape"]) > 8 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise WeightFileError(f"{name}: tensor '{key[:60]}' has an impossible shape or offsets")
    begin, end = entry["data_offsets"]
    count = 1
    for n in entry["shape"]:
        count *= n
    if not begin <= end <= data_size or end - begin != count * FLOAT_DTYPE_BYTES[dtype]:
        raise WeightFileError(f"{name}: tensor '{key[:60]}' does not fit in the file, which is probably "
                              f"truncated or corrupted")


def _json(path: Path, raw, what: str):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:   # invalid text or UTF-8, or nested too deeply
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise WeightFileError(f"{path.name}: its {what} is not valid JSON ({detail})") from None


def _parse_metadata(path: Path, header: dict) -> dict:
    raw = header.get("__metadata__", {}).get(METADATA_KEY)
    if raw is None:
        raise WeightFileError(f"{path.name}: a safetensors file, but not an Embedding Sanitizer "
                              f"(no '{METADATA_KEY}' metadata)")
    meta = _json(path, raw, "metadata")
    _check_metadata(path.name, meta)
    return meta


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
        raise WeightFileError(f"{name}: format version {_short(meta['format_version'])} is not supported "
                              f"(this version reads {FORMAT_VERSION}); update Embedding Sanitizer")
    for key, (low, high) in SIZE_BOUNDS.items():
        if not low <= meta[key] <= high:
            raise WeightFileError(f"{name}: metadata '{key}' is {_short(meta[key])}, outside {low}..{high}")
    concepts = meta["concepts"]
    try:
        if not concepts or len(concepts) > MAX_CONCEPTS or validation.concepts(concepts) != tuple(concepts):
            raise validation.InvalidValue("names must be distinct, without surrounding spaces")
    except validation.InvalidValue as exc:
        raise WeightFileError(f"{name}: metadata 'concepts' must be a list of 1 to {MAX_CONCEPTS} distinct "
                              f"names ({exc})") from None
    if meta["chunk_length"] and meta["max_tokens"] != meta["chunk_length"]:
        raise WeightFileError(f"{name}: max_tokens {meta['max_tokens']} differs from chunk_length "
                              f"{meta['chunk_length']}")
    if meta["width"] % meta["heads"]:
        raise WeightFileError(f"{name}: network sizes are inconsistent "
                              f"(width {meta['width']}, heads {meta['heads']}, layers {meta['layers']})")


def _short(number: int) -> str:
    text = str(number)
    return text if len(text) <= 24 else text[:20] + "..."
