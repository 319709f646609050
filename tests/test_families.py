"""The one table of text-encoder families: ids users' weight files carry, and how hosts find them."""

import pytest
import torch

from embedding_sanitizer import families
from embedding_sanitizer.encoders import CLIPEncoder, random_clip_encoder


def test_ids_weight_files_already_carry_keep_their_meaning():
    assert families.webui_families() == {"sd1": "sd1-clip-l", "sd2": "sd2-clip-h", "sdxl": "sdxl-clip-lg"}
    sd1, sdxl = families.get("sd1-clip-l"), families.get("sdxl-clip-lg")
    assert (sd1.embed_dim, sd1.pooled_dim, sd1.chunk_length) == (768, 0, 77)
    assert (sdxl.embed_dim, sdxl.pooled_dim, sdxl.chunk_length, sdxl.clip_widths) == (2048, 1280, 77, (768, 1280))


def test_same_width_families_are_told_apart_by_the_pooled_vector():
    assert [f.id for f in families.from_conditioning(768, 768)] == ["sd1-clip-l"]
    assert [f.id for f in families.from_conditioning(768, None)] == ["t5-base"]
    assert [f.id for f in families.from_conditioning(4096, 2048)] == ["sd3-clip-lg-t5xxl", "sd3-clip-lg"]
    # SD3 with T5 and without: the same shapes, but without T5 the rows fill only CLIP's 2048 features.
    assert [f.id for f in families.from_conditioning(4096, 2048, 4096)] == ["sd3-clip-lg-t5xxl"]
    assert [f.id for f in families.from_conditioning(4096, 2048, 2048)] == ["sd3-clip-lg"]
    assert [f.id for f in families.from_conditioning(4096, 768, 4096)] == ["flux-t5xxl-clip-l"]
    assert [f.id for f in families.from_conditioning(4096, 768)] == ["flux-t5xxl-clip-l"]
    assert families.from_conditioning(4096, None) == []          # T5-XXL alone (Chroma, ...): unknown


def test_comfy_classes_name_their_family_and_others_get_their_own():
    assert families.comfy_family_id("FluxClipModel_", 4096) == "flux-t5xxl-clip-l"   # ComfyUI's per-load subclass
    assert families.comfy_family_id("SAT5Model", 768) == "t5-base"
    assert families.comfy_family_id("SD1ClipModel", 768) == "sd1-clip-l"
    assert families.comfy_family_id("HiDreamTEModel", 4096) == "comfyui-HiDreamTEModel-4096"
    # SD3's class holds the sub-encoders that were loaded: with T5, without, or another mix.
    assert families.comfy_family_id("SD3ClipModel_", 4096, ("clip_l", "clip_g", "t5xxl")) == "sd3-clip-lg-t5xxl"
    assert families.comfy_family_id("SD3ClipModel_", 4096, ("clip_l", "clip_g")) == "sd3-clip-lg"
    mix = families.comfy_family_id("SD3ClipModel_", 4096, ("clip_l", "t5xxl"))
    assert mix == "comfyui-SD3ClipModel(clip_l+t5xxl)-4096" and "(D=4096)" in families.comfy_family_label(mix)
    assert "HiDreamTEModel (D=4096)" in families.comfy_family_label("comfyui-HiDreamTEModel-4096")
    assert families.label("sdxl-clip-lg") == "SDXL (CLIP-L + CLIP-G)" and families.label("custom") == "custom"


def test_the_engine_clip_encoder_reads_widths_and_pooled_from_the_table():
    encoder = random_clip_encoder("sdxl-clip-lg", layers=1)
    assert isinstance(encoder, CLIPEncoder)
    assert (encoder.embed_dim, encoder.pooled_dim) == (2048, 1280)
    # SD3 and Flux list their CLIP towers too, but their rows need T5 (encoders.T5Encoder).
    with pytest.raises(ValueError, match="also reads T5-XXL"):
        random_clip_encoder("flux-t5xxl-clip-l", layers=1)


def test_filled_width_tells_sd3_without_t5_from_with():
    from embedding_sanitizer.conditioning import filled_width
    rows = torch.randn(1, 154, 4096)
    assert filled_width(rows) == 4096
    rows[:, :, 2048:] = 0.0                     # SD3's CLIP-L + CLIP-G rows, zero-padded to 4096
    assert filled_width(rows) == 2048 and filled_width(torch.zeros(1, 77, 768)) == 0
