"""The text-encoder families a sanitizer can belong to: the one table every host imports.

A sanitizer is trained on one text encoder's rows and only fits that encoder. Width alone
cannot tell encoders apart (CLIP-L and T5-base are both 768 wide; T5-XXL rows and SD3's
zero-padded CLIP rows are both 4096 wide), so a family is named by an id recorded in the
weight file, and recognised from what a host loaded: ComfyUI's text-encoder class and the
sub-encoders it holds (SD3 with or without T5), the conditioning's row width and the width of
the pooled vector it carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Family:
    id: str                              # recorded in weight files; never rename one
    label: str                           # what users read in messages
    embed_dim: int                       # width of the rows the image model reads
    pooled_dim: int                      # width of the pooled vector the image model reads; 0 = none
    chunk_length: int                    # 77: independent CLIP chunks; 0: one whole sequence
    conditioning_pooled: Optional[int]   # width of the pooled vector a ComfyUI conditioning carries
    clip_widths: tuple[int, ...] = ()    # CLIP towers the engine builds (encoders.py), in row order
    comfy_models: tuple[str, ...] = ()   # ComfyUI text-encoder classes (CLIP.cond_stage_model)
    webui_type: Optional[str] = None     # the A1111/Forge model type it serves
    comfy_image_models: tuple[str, ...] = ()   # ComfyUI image-model configs that read it (operator mode)
    comfy_parts: tuple[str, ...] = ()    # the sub-encoders the ComfyUI class must hold (SD3's are optional)
    window: int = 0                      # whole-sequence families: rows read together (0: an empty prompt's rows)
    filled_width: int = 0                # features the rows fill, zeros after (SD3's CLIP rows); 0: not checked
    t5_rows: int = 0                     # T5-XXL rows a prompt is padded to (ComfyUI's min_length); 0: no T5
    clip_rows: bool = True               # whether the CLIP towers give rows (Flux's CLIP-L gives only the pooled vector)


FAMILIES: dict[str, Family] = {f.id: f for f in (
    Family("sd1-clip-l", "SD 1.x (CLIP-L)", 768, 0, 77, 768, (768,), ("SD1ClipModel",), "sd1", ("SD15",)),
    Family("sd2-clip-h", "SD 2.x (OpenCLIP ViT-H)", 1024, 0, 77, 1024, (1024,), ("SD2ClipModel",), "sd2", ("SD20",)),
    Family("sdxl-clip-lg", "SDXL (CLIP-L + CLIP-G)", 2048, 1280, 77, 1280, (768, 1280),
           ("SDXLClipModel",), "sdxl", ("SDXL",)),
    Family("sdxl-refiner-clip-g", "SDXL refiner / Stable Cascade (CLIP-G)", 1280, 1280, 77, 1280, (),
           ("SDXLRefinerClipModel", "StableCascadeClipModel")),
    # SD3's rows are CLIP chunks of 77, then T5 rows: in windows of 77 each CLIP chunk is read alone at
    # its own positions, as in the CLIP families, and the T5 rows start on a window boundary.
    Family("sd3-clip-lg-t5xxl", "SD3 / SD3.5 (CLIP-L + CLIP-G padded to 4096, then T5-XXL)", 4096, 2048, 0,
           2048, (768, 1280), ("SD3ClipModel",), comfy_parts=("clip_l", "clip_g", "t5xxl"), window=77,
           filled_width=4096, t5_rows=77),
    Family("sd3-clip-lg", "SD3 / SD3.5 without T5 (CLIP-L + CLIP-G padded to 4096)", 4096, 2048, 77, 2048, (),
           ("SD3ClipModel",), comfy_parts=("clip_l", "clip_g"), filled_width=2048),
    Family("flux-t5xxl-clip-l", "Flux (T5-XXL rows, CLIP-L pooled)", 4096, 768, 0, 768, (768,),
           ("FluxClipModel",), t5_rows=256, clip_rows=False),
    Family("t5-base", "T5-base (Stable Audio)", 768, 0, 0, None, (), ("SAT5Model",)),
    Family("minilm", "MiniLM (not an image-model encoder)", 384, 0, 0, None),
)}


def get(family_id: str) -> Optional[Family]:
    return FAMILIES.get(family_id)


def label(family_id: str) -> str:
    family = FAMILIES.get(family_id)
    return family.label if family else family_id


def webui_families() -> dict[str, str]:
    """{A1111/Forge model type: family id}."""
    return {f.webui_type: f.id for f in FAMILIES.values() if f.webui_type}


def comfy_image_model_families() -> dict[str, str]:
    """{ComfyUI image-model config class (supported_models): family id}; subclasses follow their base."""
    return {name: f.id for f in FAMILIES.values() for name in f.comfy_image_models}


def comfy_family_id(model_class: str, embed_dim: int, parts: tuple[str, ...] = ()) -> str:
    """The family of a ComfyUI text encoder, from its class (ComfyUI subclasses some per load,
    adding a trailing '_') and, where the class's sub-encoders are optional (SD3), the `parts` it
    holds. Encoders outside the table get an id of their own, with their parts and width."""
    name = model_class.rstrip("_")
    known = [f for f in FAMILIES.values() if name in f.comfy_models]
    for family in known:
        if not family.comfy_parts or tuple(family.comfy_parts) == tuple(parts):
            return family.id
    if known:        # a class of the table holding other parts (SD3 with CLIP-L and T5 only, ...)
        name = f"{name}({'+'.join(parts)})"
    return f"comfyui-{name}-{embed_dim}"


def comfy_family_label(family_id: str) -> str:
    if family_id in FAMILIES:
        return FAMILIES[family_id].label
    if family_id.startswith("comfyui-"):
        name, _, width = family_id[len("comfyui-"):].rpartition("-")
        return f"the ComfyUI text encoder {name} (D={width})"
    return family_id


def from_conditioning(embed_dim: int, pooled_width: Optional[int], filled_width: Optional[int] = None) -> list[Family]:
    """The known families whose conditioning has rows this wide and a pooled vector this wide
    (None: no pooled vector), and, where a family says, whose rows fill this many features (SD3
    without T5: only CLIP's 2048). Empty when the shape is not one of them."""
    return [f for f in FAMILIES.values()
            if f.embed_dim == embed_dim and f.conditioning_pooled == pooled_width and f.id != "minilm"
            and (not f.filled_width or filled_width is None or f.filled_width == filled_width)]
