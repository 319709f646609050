"""Train Embedding Sanitizer inside ComfyUI: ComfyUI's CLIP, progress bar, interruption, saving."""

from __future__ import annotations

import pytest
import torch

from .test_nodes import PROMPT, apply, encode

SMALL = dict(steps=6, seed=0, overwrite=False, pairs_per_concept=32)


def run_train(nodes, clip, filename, **kw):
    args = {**SMALL, **kw}
    # ComfyUI executes nodes under inference mode; the node must still be able to train.
    with torch.inference_mode():
        return nodes["EmbeddingSanitizerTrain"]().train(clip, kw.pop("preset", "nudity"), args["steps"],
                                                         args["seed"], filename, args["overwrite"],
                                                         kw.get("custom_concept", ""), kw.get("custom_terms", ""),
                                                         kw.get("custom_anchors", ""), args["pairs_per_concept"])


@pytest.mark.slow
def test_train_saves_reports_progress_and_loads(nodes, sd1_clip, sanitizers_dir, clip_text_encode):
    import comfy.utils
    calls = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, *a, **k: calls.append((value, total)))
    try:
        out = run_train(nodes, sd1_clip, "trained-sd1", custom_concept="gore",
                        custom_terms="gore, guts, entrails, severed head, dismembered body, blood splatter",
                        custom_anchors="paint, ribbons, flowers, red ribbon, a bouquet, autumn leaves")
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    model, summary = out["result"]
    assert (sanitizers_dir / "trained-sd1.safetensors").is_file()
    assert model.config.embed_dim == 768 and model.config.concepts == ("nudity", "gore")
    assert model.config.encoder_family == "sd1-clip-l"
    # The bar shows encoding the training prompts, then the steps, then encoding the held-out prompts.
    steps_at = calls.index((1, 6))
    encoding, training, heldout = calls[:steps_at], calls[steps_at:steps_at + 6], calls[steps_at + 6:]
    assert encoding and len({t for _, t in encoding}) == 1 and encoding[0][1] > 6
    assert [v for v, _ in encoding] == sorted(v for v, _ in encoding) and encoding[-1][0] > encoding[0][0]
    assert training == [(s, 6) for s in range(1, 7)]
    assert heldout and all(t == heldout[0][1] for _, t in heldout)
    assert "saved" in summary and "auroc" in summary and out["ui"]["text"] == [summary]
    # The saved file is listed and works on this CLIP's conditioning.
    listed = nodes["EmbeddingSanitizerLoader"].INPUT_TYPES()["required"]["sanitizer_name"][0]
    assert "trained-sd1.safetensors" in listed
    loaded = nodes["EmbeddingSanitizerLoader"]().load("trained-sd1.safetensors")[0]
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    result, _, _ = apply(nodes, cond, loaded)
    assert result[0][0].shape == cond[0][0].shape
    # Same seed, same file name: refused unless overwrite is set.
    with pytest.raises(ValueError, match="exists"):
        run_train(nodes, sd1_clip, "trained-sd1")


def test_interrupt_stops_training_and_saves_nothing(nodes, sd1_clip, sanitizers_dir):
    import comfy.model_management as mm
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_train(nodes, sd1_clip, "interrupted")
    finally:
        mm.interrupt_current_processing(False)
    assert not (sanitizers_dir / "interrupted.safetensors").exists()


def test_bad_inputs_are_refused(nodes, sd1_clip):
    with pytest.raises(ValueError, match="terms and anchors"):
        run_train(nodes, sd1_clip, "x", custom_terms="gore")
    with pytest.raises(ValueError, match="custom only"):
        run_train(nodes, sd1_clip, "x", preset="custom only")
    with pytest.raises(ValueError, match="file name"):
        run_train(nodes, sd1_clip, "../escape")
