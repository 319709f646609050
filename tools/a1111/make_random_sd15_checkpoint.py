"""Write a random-weight Stable Diffusion 1.x checkpoint with the real single-file layout
(ldm keys: model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*),
so a webui can load it without downloading a model. For the local webui run only.

The architecture comes from the webui checkout itself, nothing is copied here:
  --ldm <A1111 checkout>: its configs/v1-inference.yaml, built with the ldm package of its
      repositories/stable-diffusion-stability-ai (run with the webui's venv);
  --configs <dir> --convert <dir> (Forge): diffusers-layout config.json files (Forge ships them
      under backend/huggingface/runwayml/stable-diffusion-v1-5), converted to the ldm keys by
      the huggingface_guess checkout's diffusers_convert.
The text encoder is transformers' CLIPTextModel with CLIP-L's text config (make_offline_clip_tokenizer.py).

    python tools/a1111/make_random_sd15_checkpoint.py --ldm <a1111 checkout> --out model.safetensors
    python tools/a1111/make_random_sd15_checkpoint.py --configs <dir> --convert <huggingface_guess dir> --out model.safetensors
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_offline_clip_tokenizer import TEXT_CONFIG  # noqa: E402


def ldm_parts(webui: str) -> dict:
    """prefix -> (module, its state dict in ldm keys): UNet and VAE from the A1111 checkout's own
    config and ldm code."""
    sys.path.insert(0, os.path.join(webui, "repositories", "stable-diffusion-stability-ai"))
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf
    params = OmegaConf.load(os.path.join(webui, "configs", "v1-inference.yaml")).model.params
    unet = instantiate_from_config(params.unet_config)
    for module in unet.modules():     # ldm zero-initializes the output layers: the prompt would not matter
        if module is not unet and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    vae = instantiate_from_config(params.first_stage_config)
    return {"model.diffusion_model.": (unet, dict), "first_stage_model.": (vae, dict)}


def diffusers_parts(configs: str, convert: str) -> dict:
    """prefix -> (module, its state dict in ldm keys): UNet and VAE from diffusers configs, converted by
    huggingface_guess."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    sys.path.insert(0, convert)
    from huggingface_guess import diffusers_convert
    read = lambda sub: {k: v for k, v in json.load(open(os.path.join(configs, sub, "config.json"))).items()  # noqa: E731
                        if not k.startswith("_")}
    return {"model.diffusion_model.": (UNet2DConditionModel(**read("unet")), diffusers_convert.convert_unet_state_dict),
            "first_stage_model.": (AutoencoderKL(**read("vae")), diffusers_convert.convert_vae_state_dict)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ldm", help="A1111 checkout (configs/v1-inference.yaml, repositories/stable-diffusion-stability-ai)")
    ap.add_argument("--configs", help="Forge: diffusers layout folder with unet/ and vae/ config.json")
    ap.add_argument("--convert", help="Forge: folder that holds the huggingface_guess package")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if bool(args.ldm) == bool(args.configs and args.convert):
        ap.error("give either --ldm or both --configs and --convert")

    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(args.seed)
    with torch.no_grad():
        parts = ldm_parts(args.ldm) if args.ldm else diffusers_parts(args.configs, args.convert)
        for p in parts["model.diffusion_model."][0].parameters():     # small weights: random but numerically tame
            p.mul_(0.1)
        clip = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_CONFIG.items() if k != "architectures"}))
        # A1111 rescales every cond to keep its mean (emphasis "Original"): with LayerNorm's initial zero
        # bias that mean is about 0, sometimes exactly, and 0 / 0 makes the cond NaN. Real CLIP has biases.
        for module in clip.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
        parts["cond_stage_model.transformer."] = (clip, dict)
    sd = {prefix + k: v for prefix, (module, to_ldm) in parts.items() for k, v in to_ldm(module.state_dict()).items()}
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    save_file(sd, args.out)
    print(f"wrote {args.out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
