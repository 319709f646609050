"""Train Embedding Sanitizer inside ComfyUI: ComfyUI's CLIP, progress bar, interruption, saving."""

from __future__ import annotations

from pathlib import Path

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
    assert summary.startswith("Saved ") and "AUROC" in summary and out["ui"]["text"] == [summary]
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


GORE = dict(custom_terms="gore, guts", custom_anchors="paint, ribbons")


@pytest.mark.parametrize("filename, kw, message", [
    ("x", dict(custom_terms="gore"), "terms and anchors"),
    ("x", dict(preset="custom only"), "custom only"),
    ("x", dict(preset="everything"), "unknown preset"),
    ("../escape", {}, "file name"),
    ("a" * 236, {}, "at most 200"),
    ("\u00e9" * 95, {}, "at most 200"),                   # 190 characters, 190 x 2 bytes
    ("CON", {}, "reserves"), ("nul", {}, "reserves"), ("aux.v2", {}, "reserves"), ("LPT1", {}, "reserves"),
    ("trailing.", {}, "reserves"),
    ("x", dict(preset="nudity", custom_concept="nudity", **GORE), "named 'nudity' like a concept"),
    ("x", dict(preset="nudity + violence", custom_concept=" violence ", **GORE), "like a concept"),
    ("x", dict(custom_concept="gore, blood", **GORE), "single word"),
    ("x", dict(custom_concept="g+b", **GORE), "single word"),
    ("x", dict(custom_concept="gore blood", **GORE), "single word"),
])
def test_bad_requests_are_refused_before_encoding(nodes, sd1_clip, monkeypatch, filename, kw, message):
    import sys
    module = sys.modules[type(nodes["EmbeddingSanitizerTrain"]()).__module__]

    def must_not_encode(clip):
        raise AssertionError("encoding started before the request was checked")
    monkeypatch.setattr(module, "ComfyTextEncoder", must_not_encode)
    with pytest.raises(ValueError, match=message):
        run_train(nodes, sd1_clip, filename, **kw)


def test_a_file_that_appears_during_training_is_kept(nodes, sd1_clip, sanitizers_dir, monkeypatch):
    import sys
    module = sys.modules[type(nodes["EmbeddingSanitizerTrain"]()).__module__]
    real_train = module.train_sanitizer
    target = sanitizers_dir / "appeared.safetensors"

    def train_while_someone_saves(*args, **kwargs):
        result = real_train(*args, **kwargs)
        target.write_bytes(b"another user's file")
        return result
    monkeypatch.setattr(module, "train_sanitizer", train_while_someone_saves)
    out = run_train(nodes, sd1_clip, "appeared", steps=2)
    assert target.read_bytes() == b"another user's file"
    assert (sanitizers_dir / "appeared-2.safetensors").is_file()
    assert "appeared-2.safetensors (appeared.safetensors appeared while training and was kept)" in out["result"][1]


def test_refusals_name_no_server_path(nodes, sd1_clip, sanitizers_dir):
    import folder_paths
    folder = Path(folder_paths.get_folder_paths("sanitizers")[0])
    taken = folder / "taken.safetensors"
    taken.write_bytes(b"a user's file")
    try:
        with pytest.raises(ValueError, match="taken.safetensors exists") as refused:
            run_train(nodes, sd1_clip, "taken")
    finally:
        taken.unlink()
    assert str(folder) not in str(refused.value)
