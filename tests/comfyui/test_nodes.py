"""Our nodes on real CLIPTextEncode output of ComfyUI's own SD 1.x and SDXL CLIP classes."""

from __future__ import annotations

import json

import pytest
import torch

from .comfy_env import REPO
from .conftest import active_sanitizer

PROMPT = "a photo of a nude woman holding a bloody knife"
LONG = ", ".join(["a very detailed painting of a quiet mountain lake at sunrise"] * 12)  # > 75 tokens


def encode(clip_text_encode, clip, text):
    return clip_text_encode.encode(clip, text)[0]


def snapshot(cond):
    return [(c[0].clone(), {k: (v.clone() if torch.is_tensor(v) else v) for k, v in c[1].items()}) for c in cond]


def assert_unchanged(cond, snap):
    assert len(cond) == len(snap)
    for (t, d), (t0, d0) in zip(cond, snap):
        assert torch.equal(t, t0)
        assert d.keys() == d0.keys()
        for k in d:
            if torch.is_tensor(d[k]):
                assert torch.equal(d[k], d0[k]), k
            else:
                assert d[k] == d0[k], k


def apply(nodes, cond, sanitizer, intensity=1.0, threshold=0.0, **kw):
    out = nodes["EmbeddingSanitizerApply"]().sanitize(cond, sanitizer, intensity, threshold, **kw)
    return out["result"][0], out["result"][1], out["ui"]


def test_mappings_and_tooltips(nodes, pack):
    assert set(nodes) == {"EmbeddingSanitizerLoader", "EmbeddingSanitizerApply",
                          "EmbeddingSanitizerCLIPTextEncode", "EmbeddingSanitizerTrain"}
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes)
    assert pack.WEB_DIRECTORY == "./web"
    for cls in nodes.values():
        assert cls.CATEGORY == "conditioning/sanitizer"
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, entry in group.items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{cls.__name__}.{name} lacks a tooltip"
        assert hasattr(cls, cls.FUNCTION)


def test_every_widget_input_has_a_default(nodes, sanitizer_files):
    """The frontend's node library preview lists every input of a widget type (forceInput ones too)
    with its default, and shows "undefined" where there is none."""
    for cls in nodes.values():
        for group in cls.INPUT_TYPES().values():
            for name, (kind, options) in group.items():
                if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    assert "default" in options, f"{cls.__name__}.{name} has no default"
    names, options = nodes["EmbeddingSanitizerLoader"].INPUT_TYPES()["required"]["sanitizer_name"]
    assert options["default"] == names[0]


def test_locale_labels_name_real_inputs(nodes):
    """locales/<lang>/nodeDefs.json relabels inputs on the canvas; the input names (which saved and
    API workflows use) stay as they are, so every label must name an input that exists."""
    files = sorted((REPO / "locales").glob("*/nodeDefs.json"))
    assert files
    for path in files:
        for node_id, entry in json.loads(path.read_text()).items():
            inputs = {name for group in nodes[node_id].INPUT_TYPES().values() for name in group}
            for name, label in entry.get("inputs", {}).items():
                assert name in inputs and label["name"], f"{path}: {node_id}.{name}"
    english = json.loads((REPO / "locales/en/nodeDefs.json").read_text())
    # The example workflows' loader (320 wide) cuts a longer label beside "built-in (any text encoder)".
    assert english["EmbeddingSanitizerLoader"]["inputs"]["sanitizer_name"]["name"] == "sanitizer"


def test_folder_keeps_yaml_entry_and_lists_only_safetensors(pack, sanitizers_dir, sanitizer_files):
    import folder_paths
    import os
    paths, exts = folder_paths.folder_names_and_paths["sanitizers"]
    assert paths[0] == str(sanitizers_dir)            # the user's yaml entry stays first
    assert any(p.endswith("models/sanitizers") or p.endswith("models\\sanitizers") for p in paths)
    assert os.path.isdir(os.path.join(folder_paths.models_dir, "sanitizers"))     # made when the pack loads
    assert exts == {".safetensors"}
    (sanitizers_dir / "notes.txt").write_text("not a sanitizer")
    listed = pack.NODE_CLASS_MAPPINGS["EmbeddingSanitizerLoader"].INPUT_TYPES()["required"]["sanitizer_name"][0]
    assert "sd1-test.safetensors" in listed and "notes.txt" not in listed


def test_loader_is_changed_follows_the_file(nodes, sanitizer_files, sanitizers_dir):
    import os
    loader = nodes["EmbeddingSanitizerLoader"]
    before = loader.IS_CHANGED("sd1-test.safetensors")
    assert before == loader.IS_CHANGED("sd1-test.safetensors")
    path = sanitizer_files["sd1-test.safetensors"]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert loader.IS_CHANGED("sd1-test.safetensors") != before


def test_loader_bad_file_gives_the_engine_error(nodes, sanitizers_dir):
    (sanitizers_dir / "broken.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="broken.safetensors"):
        nodes["EmbeddingSanitizerLoader"]().load("broken.safetensors")


def test_sd1_keeps_keys_never_mutates_and_changes_the_embedding(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    assert cond[0][0].shape == (1, 77, 768)
    # Keys other nodes add (area, mask, timestep range, strength) must all survive.
    cond = [[cond[0][0], {**cond[0][1], "area": (64, 64, 0, 0), "strength": 0.8, "mask": torch.ones(1, 8, 8),
                          "start_percent": 0.1, "end_percent": 0.9, "set_area_to_bounds": False}]]
    snap = snapshot(cond)
    out, report, ui = apply(nodes, cond, sd1_sanitizer, clip=sd1_clip, text=PROMPT)
    assert_unchanged(cond, snap)
    assert out is not cond and out[0][1] is not cond[0][1]
    assert out[0][1].keys() == cond[0][1].keys() | {"embedding_sanitizer"}   # + what was done (operator mode)
    assert out[0][1]["embedding_sanitizer"].vouches_for(out[0][0], out[0][1]["pooled_output"])
    for k in ("area", "strength", "start_percent", "end_percent", "set_area_to_bounds"):
        assert out[0][1][k] == cond[0][1][k]
    assert out[0][1]["mask"] is cond[0][1]["mask"]
    assert not torch.equal(out[0][0], cond[0][0])          # the active sanitizer moved tokens
    # SD 1.x sanitizers have no pooled head: pooled passes through untouched.
    assert torch.equal(out[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    assert "prompt score" in report


def test_intensity_zero_is_identity(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    out, _, _ = apply(nodes, cond, sd1_sanitizer, intensity=0.0)
    assert torch.equal(out[0][0], cond[0][0])


def test_token_scores_label_the_prompt_and_hide_padding(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    _, _, ui = apply(nodes, cond, sd1_sanitizer, clip=sd1_clip, text=PROMPT)
    assert all(isinstance(v, list) for v in ui.values())      # ComfyUI requires lists in "ui"
    json.dumps(ui)                                            # and it must go over the websocket
    entry = ui["token_scores"][0]
    words = [t["token"] for t in entry["tokens"]]
    assert entry["labelled"] is True
    assert words == ["a", "photo", "of", "a", "nude", "woman", "holding", "a", "bloody", "knife"]
    assert [t["position"] for t in entry["tokens"]] == list(range(1, 11))   # BOS/EOS/padding hidden
    for t in entry["tokens"]:
        assert 0.0 <= t["score"] <= 1.0 and t["erased"] == (t["gate"] >= 0.5)


def test_without_labels_positions_are_numbered(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    _, report, ui = apply(nodes, cond, sd1_sanitizer)
    entry = ui["token_scores"][0]
    assert entry["labelled"] is False and len(entry["tokens"]) == 77 and entry["tokens"][3]["token"] == "#3"
    assert "connect clip and text" in report


def test_long_prompt_two_chunks(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    cond = encode(clip_text_encode, sd1_clip, LONG)
    assert cond[0][0].shape[1] >= 154
    out, _, ui = apply(nodes, cond, sd1_sanitizer, clip=sd1_clip, text=LONG)
    assert out[0][0].shape == cond[0][0].shape
    positions = [t["position"] for t in ui["token_scores"][0]["tokens"]]
    assert ui["token_scores"][0]["labelled"] and max(positions) > 77
    assert 77 not in positions and 0 not in positions          # the second chunk's BOS is hidden too


def test_batch_and_several_entries(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    a = encode(clip_text_encode, sd1_clip, PROMPT)
    b = encode(clip_text_encode, sd1_clip, "a quiet lake")
    batched = [[torch.cat([a[0][0], b[0][0]]), {"pooled_output": torch.cat([a[0][1]["pooled_output"],
                                                                            b[0][1]["pooled_output"]])}],
               [b[0][0], dict(b[0][1], area=(8, 8, 0, 0))]]
    out, report, ui = apply(nodes, batched, sd1_sanitizer)
    assert len(out) == 2 and out[0][0].shape == (2, 77, 768) and out[1][1]["area"] == (8, 8, 0, 0)
    assert [u["label"] for u in ui["token_scores"]] == ["part 1 of 2, image 1 of 2", "part 1 of 2, image 2 of 2",
                                                        "part 2 of 2"]
    # Each item is sanitized on its own: item 0 of the batch equals the single-prompt result.
    single, _, _ = apply(nodes, a, sd1_sanitizer)
    torch.testing.assert_close(out[0][0][:1], single[0][0])


def test_fp16_keeps_dtype(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    half = [[cond[0][0].half(), {"pooled_output": cond[0][1]["pooled_output"].half()}]]
    out, _, _ = apply(nodes, half, sd1_sanitizer)
    assert out[0][0].dtype == torch.float16 and out[0][0].device == half[0][0].device
    assert out[0][1]["pooled_output"].dtype == torch.float16


def test_sdxl_pooled_is_sanitized(nodes, sdxl_clip, sdxl_sanitizer, clip_text_encode):
    cond = encode(clip_text_encode, sdxl_clip, PROMPT)
    assert cond[0][0].shape == (1, 77, 2048) and cond[0][1]["pooled_output"].shape == (1, 1280)
    snap = snapshot(cond)
    out, _, ui = apply(nodes, cond, sdxl_sanitizer, clip=sdxl_clip, text=PROMPT)
    assert_unchanged(cond, snap)
    assert not torch.equal(out[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    assert out[0][1]["pooled_output"].shape == (1, 1280)
    assert [t["token"] for t in ui["token_scores"][0]["tokens"]][4] == "nude"
    # SDXL's rows are CLIP-L's and CLIP-G's tokens side by side: disguised words are found in them too.
    disguised = "a photo of a n u d e woman"
    _, report, _ = apply(nodes, encode(clip_text_encode, sdxl_clip, disguised), sdxl_sanitizer, clip=sdxl_clip,
                         text=disguised)
    assert "read plainly" in report
    from embedding_sanitizer.disguise import plain_reading
    from embedding_sanitizer_pack.nodes.text_encoders import ComfyTextEncoder
    reading = plain_reading(sdxl_sanitizer, ComfyTextEncoder(sdxl_clip), [disguised], 77)
    assert reading.rows[0].nonzero().flatten().tolist() == [5, 6, 7, 8]      # after BOS a photo of a


def test_mismatch_says_so(nodes, sd1_clip, sdxl_clip, sd1_sanitizer, sdxl_sanitizer, clip_text_encode):
    sdxl_cond = encode(clip_text_encode, sdxl_clip, PROMPT)
    with pytest.raises(ValueError, match=r"trained for SD 1\.x.*looks like SDXL"):
        apply(nodes, sdxl_cond, sd1_sanitizer)
    sd1_cond = encode(clip_text_encode, sd1_clip, PROMPT)
    with pytest.raises(ValueError, match=r"trained for SDXL.*looks like SD 1\.x"):
        apply(nodes, sd1_cond, sdxl_sanitizer)


def test_encode_node_equals_encode_then_sanitize(nodes, sd1_clip, sd1_sanitizer, clip_text_encode):
    out = nodes["EmbeddingSanitizerCLIPTextEncode"]().encode(sd1_clip, PROMPT, sd1_sanitizer, 1.0)
    cond, report = out["result"]
    ref, _, _ = apply(nodes, encode(clip_text_encode, sd1_clip, PROMPT), sd1_sanitizer)
    torch.testing.assert_close(cond[0][0], ref[0][0])
    assert "pooled_output" in cond[0][1]
    assert out["ui"]["token_scores"][0]["tokens"][4]["token"] == "nude"


def test_disguised_words_are_scored_as_read_plainly(nodes, sd1_clip, clip_text_encode):
    """'n u d e' is scored as the sanitizer scores 'nude', on the rows of the letters as typed; the
    rest of the prompt keeps its own scores, and the erasure acts on the typed embedding."""
    sanitizer = active_sanitizer(768, 0, "sd1-clip-l", score_std=0.05)    # scores short of 0 and 1
    # No vocabulary: this test is about disguises, and "nude" found as a word would score 1.
    sanitizer.metadata = {"training": {"vocabulary": {c: {"terms": []} for c in sanitizer.concepts}}}
    typed, plain = "a photo of a n u d e woman", "a photo of a nude woman"
    cond = encode(clip_text_encode, sd1_clip, typed)
    snap = snapshot(cond)
    out, report, ui = apply(nodes, cond, sanitizer, clip=sd1_clip, text=typed)
    assert_unchanged(cond, snap)
    with torch.no_grad():
        own, delta, _ = sanitizer(cond[0][0].float())
        read, _, _ = sanitizer(encode(clip_text_encode, sd1_clip, plain)[0][0].float())
    own, word = own[0].amax(-1), read[0, 5].amax()          # row 5: BOS a photo of a nude
    tokens = ui["token_scores"][0]["tokens"]
    assert [t["token"] for t in tokens] == ["a", "photo", "of", "a", "n", "u", "d", "e", "woman"]
    for t in tokens:
        expected = word if t["token"] in "nude" else own[t["position"]]
        assert t["score"] == pytest.approx(float(expected), abs=1e-4), t
    assert not torch.allclose(own[5:9], word)                # the letters' own scores differ
    gate = torch.tensor([t["gate"] for t in tokens[4:8]])
    torch.testing.assert_close(out[0][0][0, 5:9], cond[0][0][0, 5:9] + gate[:, None] * delta[0, 5:9],
                               atol=1e-3, rtol=1e-3)
    assert "read plainly" in report
    # Without the text there is nothing to read plainly: the embedding's own scores.
    _, _, bare = apply(nodes, cond, sanitizer)
    assert bare["token_scores"][0]["tokens"][5]["score"] == pytest.approx(float(own[5]), abs=1e-4)


BAD_WIDGET_VALUES = [float("nan"), float("inf"), -float("inf"), -0.5, 1e308, "0.5", None, [1], {}]


@pytest.mark.parametrize("value", BAD_WIDGET_VALUES, ids=repr)
def test_nan_and_out_of_range_widgets_are_refused(nodes, sd1_clip, sd1_sanitizer, clip_text_encode, value):
    # ComfyUI's own min/max check compares with < and >, which NaN passes: VALIDATE_INPUTS
    # refuses it before the workflow runs, and the node itself refuses it when linked.
    apply_node, encode_node = nodes["EmbeddingSanitizerApply"], nodes["EmbeddingSanitizerCLIPTextEncode"]
    if value is not None:
        assert "intensity must be a number" in apply_node.VALIDATE_INPUTS(intensity=value, threshold=0.0)
        assert "threshold must be a number" in apply_node.VALIDATE_INPUTS(intensity=1.0, threshold=value)
        assert "intensity must be a number" in encode_node.VALIDATE_INPUTS(intensity=value)
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    for kw in ({"intensity": value}, {"threshold": value}):
        with pytest.raises(ValueError, match="must be a number"):
            apply(nodes, cond, sd1_sanitizer, **kw)
    with pytest.raises(ValueError, match="intensity must be a number"):
        encode_node().encode(sd1_clip, PROMPT, sd1_sanitizer, value)


def test_valid_widgets_pass_validation(nodes):
    assert nodes["EmbeddingSanitizerApply"].VALIDATE_INPUTS(intensity=4.0, threshold=1.0) is True
    assert nodes["EmbeddingSanitizerApply"].VALIDATE_INPUTS() is True          # linked inputs: checked at run time
    assert nodes["EmbeddingSanitizerCLIPTextEncode"].VALIDATE_INPUTS(intensity=0) is True


def test_loader_missing_file_names_no_server_path(nodes, sanitizers_dir):
    import folder_paths
    with pytest.raises(FileNotFoundError) as refused:
        nodes["EmbeddingSanitizerLoader"]().load("gone.safetensors")
    assert "gone.safetensors" in str(refused.value)
    assert not any(folder in str(refused.value) for folder in folder_paths.get_folder_paths("sanitizers"))
