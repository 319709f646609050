"""Which rows and features of a host's conditioning hold anything, for encoders of any kind.

CLIP rows are always tokens (padding included, which the image model reads). Whole-sequence
encoders (T5, LLMs) may come with an attention mask, and ComfyUI zeroes the rows it masks
(T5-base): a sanitizer must leave those rows as they are, or it gives padding content.
"""

from __future__ import annotations

from typing import Optional

import torch


def valid_rows(embedding: torch.Tensor, attention_mask=None) -> Optional[torch.Tensor]:
    """A (B, T) bool mask of the rows to read and change, or None when every row counts.

    `attention_mask`: the host's mask, used when it is (B, T) or (1, T); another shape belongs
    to something else (ComfyUI models that mask only part of their rows) and is ignored."""
    batch, tokens = embedding.shape[:2]
    valid = embedding.detach().abs().amax(dim=-1) > 0
    if torch.is_tensor(attention_mask) and attention_mask.dim() == 2 and attention_mask.shape[1] == tokens \
            and attention_mask.shape[0] in (1, batch):
        valid = valid & attention_mask.to(valid.device).bool().expand(batch, tokens)
    return None if bool(valid.all()) else valid


def filled_width(embedding: torch.Tensor) -> int:
    """How many leading features of the rows hold anything: SD3 pads its CLIP rows with zeros to
    4096, so without T5 only the first 2048 are filled."""
    used = embedding.detach().reshape(-1, embedding.shape[-1]).ne(0).any(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else 0
