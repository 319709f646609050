"""The built-in sanitizer inside a real ComfyUI: no file in models/sanitizers, random-weight text encoders
(SD 1.x and SDXL on the vendored ComfyUI; SD3 and Flux, with a one-layer T5-XXL, on ComfyUI 0.3.x only)."""

from __future__ import annotations

import pytest
import torch

from embedding_sanitizer.builtin import BUILTIN_NAME, BuiltinSanitizer, NoTextError

from .test_nodes import apply, assert_unchanged, encode, snapshot

PROMPT = "a nude woman on a beach"      # the embedded MiniLM judge flags "nude" here
BENIGN = "a photo of a cat sleeping on a sofa"


@pytest.fixture
def empty_folder(pack, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sanitizers", ([str(tmp_path)], {".safetensors"}))
    return tmp_path


@pytest.fixture(scope="module")
def builtin(nodes):
    return nodes["EmbeddingSanitizerLoader"]().load(BUILTIN_NAME)[0]


def encode_sanitized(nodes, clip, text, sanitizer, intensity=1.0):
    out = nodes["EmbeddingSanitizerCLIPTextEncode"]().encode(clip, text, sanitizer, intensity)
    return out["result"][0], out["result"][1], out["ui"]


def test_loader_lists_the_builtin_first_and_loads_it_without_a_file(nodes, empty_folder):
    names, options = nodes["EmbeddingSanitizerLoader"].INPUT_TYPES()["required"]["sanitizer_name"]
    assert names == [BUILTIN_NAME] and options["default"] == BUILTIN_NAME
    assert isinstance(nodes["EmbeddingSanitizerLoader"]().load(BUILTIN_NAME)[0], BuiltinSanitizer)
    assert nodes["EmbeddingSanitizerLoader"].IS_CHANGED(BUILTIN_NAME) == BUILTIN_NAME


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "sd3", "flux"])
def test_builtin_erases_in_the_host_space_and_keeps_benign_prompts(nodes, builtin, clip_text_encode, kind, request,
                                                                    empty_folder):
    clip = request.getfixturevalue(f"{kind}_clip")
    plain = encode(clip_text_encode, clip, PROMPT)
    snap = snapshot(plain)
    result, report, ui = apply(nodes, plain, builtin, 1.0, 0.5, clip=clip, text=PROMPT)
    assert_unchanged(plain, snap)
    assert report.splitlines()[0].startswith(f"sanitizer: {BUILTIN_NAME}")
    (embedding, extras), = result
    assert embedding.shape == plain[0][0].shape and embedding.dtype == plain[0][0].dtype
    assert extras.keys() >= plain[0][1].keys()
    assert not torch.equal(embedding, plain[0][0])
    entry = ui["token_scores"][0]
    erased = [t["token"] for t in entry["tokens"] if t["erased"]]
    # Flux's rows are T5's only, and T5 spells the word in two pieces.
    assert entry["labelled"] and set({"flux": ["nu", "de"]}.get(kind, ["nude"])) <= set(erased)
    if kind != "sd1":       # SDXL's, SD3's and Flux's image models read the pooled vector: it moves too
        assert not torch.equal(extras["pooled_output"], plain[0][1]["pooled_output"])
    # The encode node does the same; intensity 0 and a benign prompt come back bit-identical.
    encoded, _, _ = encode_sanitized(nodes, clip, PROMPT, builtin)
    assert torch.equal(encoded[0][0], embedding)
    for text, intensity in ((PROMPT, 0.0), (BENIGN, 1.0)):
        untouched, _, _ = encode_sanitized(nodes, clip, text, builtin, intensity)
        reference = encode(clip_text_encode, clip, text)
        assert torch.equal(untouched[0][0], reference[0][0])
        assert torch.equal(untouched[0][1]["pooled_output"], reference[0][1]["pooled_output"])


def test_builtin_without_the_text_says_so(nodes, builtin, sd1_clip, clip_text_encode):
    plain = encode(clip_text_encode, sd1_clip, PROMPT)
    with pytest.raises(NoTextError, match="connect clip and text"):
        apply(nodes, plain, builtin, 1.0, 0.5)
