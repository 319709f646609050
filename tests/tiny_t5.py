"""A tiny T5 encoder and SentencePiece-style tokenizer, built offline, for the SD3 / Flux engine tests.

The tokenizer is a Unigram model with T5's special ids (pad 0, </s> 1, <unk> 2), its "▁" word
marks and pre-tokenizer, and a few whole-word pieces; every other word is spelled letter by letter.
"""

from __future__ import annotations

import string

import torch

WORDS = ["a", "nude", "woman", "on", "beach", "cat", "photo", "of", "red", "car", "castle", "naked", "knife"]
VOCAB = 64          # the tiny T5's embedding rows: more than the tokenizer's pieces, as T5-XXL's 32128 > 32100


def write_tokenizer(folder) -> None:
    """tokenizer.json of a tiny T5-like tokenizer into `folder`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + ",.!"]
    assert len(pieces) <= VOCAB
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip(left=False, right=True)])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))


def t5_model(d_model: int, layers: int = 1, seed: int = 0):
    """A random T5 v1.1-style encoder (gated GELU), `d_model` wide, with small heads and feed-forward."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=VOCAB, d_model=d_model, d_kv=8, d_ff=32, num_layers=layers, num_heads=2,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0)
    return T5EncoderModel(config).eval()


def t5_file_state(model) -> dict:
    """The state dict as ComfyUI's t5xxl_*.safetensors files hold it: the tied embedding once."""
    return {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
