"""A test-only webui extension that run_in_webui.sh installs beside this one: at every sampling
step it logs whether the text conditioning the model is about to use is the raw encoding of the
prompt texts, i.e. what reaches the sampler, not what Embedding Sanitizer says it did.

It registers its `on_cfg_denoiser` callback after the sanitizer's (its folder name sorts after
`embedding-sanitizer`), so it sees the step's conds as the model gets them. One JSON line per step
in $ES_SPY_LOG: the checkpoint, CFG scale, prompt, and per image whether its positive block
(`cond_raw`) and negative block (`uncond_raw`) equal the webui's own encoding of the plain text
(`null` where a prompt has AND parts); `refused` instead when touching the conds raises (the
sanitizer's refusal).
"""

import json
import os

import torch
from modules import prompt_parser, script_callbacks, shared

LOG = os.environ.get("ES_SPY_LOG")
RAW = {}


def raw_encoding(text: str, negative: bool) -> torch.Tensor:
    key = (shared.sd_model.sd_checkpoint_info.filename, text, negative)
    if key not in RAW:
        with torch.no_grad():
            cond = shared.sd_model.get_learned_conditioning(
                prompt_parser.SdConditioning([text], is_negative_prompt=negative))
        RAW[key] = (cond["crossattn"] if isinstance(cond, dict) else cond)[0].float().cpu()
    return RAW[key]


def blocks_raw(step_cond, texts, negative):
    blocks = step_cond["crossattn"] if isinstance(step_cond, dict) else step_cond
    if blocks.shape[0] != len(texts):
        return None
    out = []
    for block, text in zip(blocks.float().cpu(), texts):
        raw = raw_encoding(text, negative)
        rows = raw.shape[0]
        out.append(rows <= block.shape[0] and raw.shape[1:] == block.shape[1:]
                   and torch.allclose(block[:rows], raw, rtol=1e-4, atol=1e-5, equal_nan=True))
    return out


def on_cfg_denoiser(params):
    if not LOG:
        return
    p = params.denoiser.p
    record = {"step": params.sampling_step, "model": shared.sd_model.sd_checkpoint_info.name,
              "cfg": p.cfg_scale, "prompt": p.prompt, "negative": p.negative_prompt}
    try:
        record["cond_raw"] = blocks_raw(params.text_cond, p.prompts, False)
        record["uncond_raw"] = blocks_raw(params.text_uncond, p.negative_prompts, True)
    except Exception as e:   # the sanitizer's refused conditioning raises at its first use
        record["refused"] = repr(e)[:300]
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
