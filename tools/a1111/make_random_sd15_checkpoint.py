"""Write a random-weight Stable Diffusion 1.x checkpoint with the real single-file layout
(ldm keys: model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*),
so a webui can load it without downloading a model. For the local webui run only.

The architecture comes from diffusers-layout config.json files (Forge ships them under
backend/huggingface/runwayml/stable-diffusion-v1-5); the diffusers -> ldm key conversion is
imported at run time from the webui's own huggingface_guess checkout (not copied here).

    python tools/a1111/make_random_sd15_checkpoint.py --configs <dir> --convert <huggingface_guess dir> --out model.safetensors
"""

import argparse
import json
import os
import sys

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", required=True, help="diffusers layout folder with unet/, vae/, text_encoder/ config.json")
    ap.add_argument("--convert", required=True, help="folder that holds the huggingface_guess package")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel
    sys.path.insert(0, args.convert)
    from huggingface_guess import diffusers_convert

    torch.manual_seed(args.seed)
    read = lambda sub: json.load(open(os.path.join(args.configs, sub, "config.json")))  # noqa: E731
    unet_cfg = {k: v for k, v in read("unet").items() if not k.startswith("_")}
    vae_cfg = {k: v for k, v in read("vae").items() if not k.startswith("_")}
    with torch.no_grad():
        unet = UNet2DConditionModel(**unet_cfg)
        for p in unet.parameters():          # small weights: random but numerically tame
            p.mul_(0.1)
        vae = AutoencoderKL(**vae_cfg)
        clip = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in read("text_encoder").items()
                                                if not k.startswith("_") and k != "architectures"}))
    sd = {}
    for k, v in diffusers_convert.convert_unet_state_dict(unet.state_dict()).items():
        sd["model.diffusion_model." + k] = v
    for k, v in diffusers_convert.convert_vae_state_dict(vae.state_dict()).items():
        sd["first_stage_model." + k] = v
    for k, v in clip.state_dict().items():
        sd["cond_stage_model.transformer." + k] = v
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    save_file(sd, args.out)
    print(f"wrote {args.out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
