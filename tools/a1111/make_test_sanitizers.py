"""Weight files for the local webui check (random, NOT trained; never ship them):

- test-sd1-active.safetensors: an sd1-clip-l sanitizer that scores every token high and
  moves it, so its effect on the positive conditioning is unmistakable;
- test-sdxl.safetensors: an sdxl-clip-lg sanitizer, to check the mismatch warning/refusal
  with an SD 1.x checkpoint.

    python tools/a1111/make_test_sanitizers.py <webui>/models/sanitizers
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig, save_sanitizer  # noqa: E402


def make(family, dim, pooled, seed):
    torch.manual_seed(seed)
    model = EmbeddingSanitizer(SanitizerConfig(embed_dim=dim, pooled_dim=pooled, chunk_length=77, width=64,
                                               heads=2, layers=1, encoder_family=family,
                                               encoder_name=f"random test {family}"))
    with torch.no_grad():
        model.score_head.bias.fill_(4.0)
        model.sanitize_head.weight.normal_(0, 0.05)
    return model


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    note = {"note": "random weights for the local webui check, not trained"}
    save_sanitizer(make("sd1-clip-l", 768, 0, 0), out / "test-sd1-active.safetensors", note)
    save_sanitizer(make("sdxl-clip-lg", 2048, 1280, 1), out / "test-sdxl.safetensors", note)
    print(f"wrote test sanitizers into {out}")
