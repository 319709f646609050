"""A random-weight checkpoint of the real single-file layout, made with ComfyUI's own classes, that
ComfyUI detects as SD 1.x and samples on the CPU in about a second.

The UNet keeps the real channel width and context size (what model detection reads) but has one
resolution level and one block per level; the VAE and CLIP-L text encoder are full size.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_SD1 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
            "num_res_blocks": [1], "transformer_depth": [1], "channel_mult": [1], "transformer_depth_middle": 1,
            "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
            "transformer_depth_output": [1, 1], "use_temporal_attention": False, "use_temporal_resblock": False}
VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _random(module: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in module.state_dict().items():
        if name.endswith("text_projection.weight"):
            state[name] = torch.eye(*p.shape)
        elif p.dim() == 1 and ("norm" in name and name.endswith("weight")):
            state[name] = torch.ones(p.shape)
        elif p.is_floating_point():
            state[name] = torch.randn(p.shape, generator=g) * 0.02
        else:
            state[name] = p.clone()
    return state


def _unet(config: dict) -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(**config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)


def write_sd1_checkpoint(path: Path, seed: int = 0) -> Path:
    """model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.* in fp16."""
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file
    with torch.no_grad():
        state = {f"model.diffusion_model.{k}": v for k, v in _random(_unet(UNET_SD1), seed).items()}
        vae = AutoencoderKL(ddconfig=VAE, embed_dim=4)
        state.update({f"first_stage_model.{k}": v for k, v in _random(vae, seed + 1).items()})
        clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
        state.update({f"cond_stage_model.{k}": v for k, v in _random(clip, seed + 2).items()
                      if k.startswith("transformer.")})
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))
    return path

