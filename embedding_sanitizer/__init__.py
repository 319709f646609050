"""Embedding Sanitizer: score prompt tokens for harmfulness and erase unsafe concepts
from a text encoder's output embedding. Plain PyTorch, no host imports."""

from .model import EmbeddingSanitizer, SanitizeResult, SanitizerConfig, SanitizerShapeError
from .weights import WeightFileError, default_weights_path, load_sanitizer, read_metadata, save_sanitizer

__all__ = [
    "EmbeddingSanitizer", "SanitizeResult", "SanitizerConfig", "SanitizerShapeError",
    "WeightFileError", "default_weights_path", "load_sanitizer", "read_metadata", "save_sanitizer",
]
