"""Every text encoder ComfyUI loads: family identity, token labels, whole sequences, batched encoding.

SD 1.x / SDXL run on the vendored ComfyUI (March 2024), which has no T5 and no SD3 / Flux. The
tests marked `newer_comfy` need ComfyUI 0.3.x (COMFYUI_ROOT=...; see tools/comfyui/run_newer_comfyui.sh)
and are skipped otherwise: T5-base through CLIPLoader type stable_audio, SD3 (CLIP-L + CLIP-G,
with and without a one-layer T5-XXL), Flux (CLIP-L + a one-layer T5-XXL), the built-in sanitizer
on T5-base and on SD3 without T5, training on T5-base and on SD3 with T5.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from embedding_sanitizer.disguise import plain_reading
from embedding_sanitizer.model import GATE_SPREAD, token_scores

from .comfy_env import random_clip
from .conftest import active_sanitizer, newer
from .test_nodes import LONG, PROMPT, apply, assert_unchanged, encode, snapshot

DATA = Path(__file__).resolve().parent / "data"
WEIGHTED = "a (nude:1.3) woman, (bloody knife:0.8) in a kitchen"
SD3 = r"SD3 / SD3\.5 \(CLIP-L \+ CLIP-G padded to 4096, then T5-XXL\)"
SD3_NO_T5 = r"SD3 / SD3\.5 without T5"


def text_encoders():
    import sys
    module = sys.modules["embedding_sanitizer_pack.nodes.text_encoders"]     # loaded by the `pack` fixture
    return module.ComfyTextEncoder, module.labels_for


@pytest.fixture(autouse=True)
def _pack_loaded(pack):
    return pack


def one_by_one(clip, prompts):
    out = []
    for text in prompts:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        out.append((cond.float(), None if pooled is None else pooled.float()))
    return out


def check_batched_encoding(clip, pooled_read: bool, streams: int = 1):
    """`streams`: how many tokenizers the rows come from (SD3 with T5: CLIP, then T5)."""
    ComfyTextEncoder, _ = text_encoders()
    encoder = ComfyTextEncoder(clip)
    prompts = [PROMPT, "a quiet lake", WEIGHTED, LONG, "a red apple on a table", "a nude figure"]
    batch = encoder.encode(prompts)
    assert batch.embedding.shape[0] == len(prompts)
    for i, (cond, pooled) in enumerate(one_by_one(clip, prompts)):
        rows = cond.shape[1]
        torch.testing.assert_close(batch.embedding[i, :rows], cond[0], atol=1e-4, rtol=1e-3)
        # Rows past this prompt's own (a longer prompt is in the batch) are masked zeros.
        assert not batch.attention_mask[i, rows:].any() and not batch.real_mask[i, rows:].any()
        assert (batch.embedding[i, rows:] == 0).all()
        if pooled_read:
            torch.testing.assert_close(batch.pooled[i], pooled[0], atol=1e-4, rtol=1e-3)
    assert (batch.pooled is not None) == pooled_read
    assert "".join(t for t, r in zip(batch.tokens[0], batch.real_mask[0].tolist()) if r).replace("\u2423", "") \
        == PROMPT.replace(" ", "") * streams
    return encoder


# ---------------------------------------------------------------- vendored ComfyUI (CI)

@pytest.mark.parametrize("kind,family,pooled", [("sd1", "sd1-clip-l", 0), ("sdxl", "sdxl-clip-lg", 1280)])
def test_comfy_encoder_family_and_batched_encoding(kind, family, pooled, sd1_clip, sdxl_clip):
    clip = {"sd1": sd1_clip, "sdxl": sdxl_clip}[kind]
    encoder = check_batched_encoding(clip, pooled > 0)
    assert (encoder.family, encoder.pooled_dim, encoder.chunk_length, encoder.leading_specials) == \
        (family, pooled, 77, 1)
    assert encoder.token_ids("a nude woman") == [320, 16630, 2308]
    assert encoder.span_positions("a nude woman", 2, 12) == [2, 3]            # after the start token


def test_prompts_of_one_layout_take_one_encoder_call(sd1_clip, monkeypatch):
    ComfyTextEncoder, _ = text_encoders()
    encoder = ComfyTextEncoder(sd1_clip)
    calls = []
    original = sd1_clip.encode_from_tokens
    monkeypatch.setattr(sd1_clip, "encode_from_tokens", lambda tokens, **kw: calls.append(1) or original(tokens, **kw))
    prompts = [f"a photo of a {w} in a garden" for w in ("cat", "dog", "nude woman", "tree") * 8] + [LONG]
    counted = []
    encoder.on_encoded = counted.append
    encoder.encode(prompts)
    assert len(calls) == 1 + 1 + 1     # the short layout, its one-time check against a single encode, LONG
    encoder.encode(prompts[:32])
    assert len(calls) == 4 and sum(counted) == 2 * 32 + 1 and 32 in counted    # checked once per layout


def test_same_width_other_encoder_is_refused_with_both_names(nodes, sd1_sanitizer, sd1_clip, clip_text_encode):
    t5_like = [[torch.randn(1, 128, 768), {"pooled_output": None}]]
    with pytest.raises(ValueError, match=r"trained for SD 1\.x \(CLIP-L\).*looks like T5-base"):
        apply(nodes, t5_like, sd1_sanitizer)
    flux = active_sanitizer(4096, 768, "flux-t5xxl-clip-l", chunk_length=0, max_tokens=256)
    sd3_like = [[torch.randn(1, 154, 4096), {"pooled_output": torch.randn(1, 2048)}]]
    with pytest.raises(ValueError, match=r"trained for Flux.*looks like SD3"):
        apply(nodes, sd3_like, flux)
    sd3 = active_sanitizer(4096, 2048, "sd3-clip-lg-t5xxl", chunk_length=0, max_tokens=77)
    flux_like = [[torch.randn(1, 256, 4096), {"pooled_output": torch.randn(1, 768)}]]
    with pytest.raises(ValueError, match=r"trained for SD3.*looks like Flux"):
        apply(nodes, flux_like, sd3)
    # SD3 without T5 has SD3's shapes, but its rows fill only CLIP-L + CLIP-G's 2048 features.
    sd3_no_t5_like = [[torch.randn(1, 154, 4096), {"pooled_output": torch.randn(1, 2048)}]]
    sd3_no_t5_like[0][0][:, :, 2048:] = 0.0
    with pytest.raises(ValueError, match=f"trained for {SD3}.*looks like {SD3_NO_T5}"):
        apply(nodes, sd3_no_t5_like, sd3)
    sd3_no_t5 = active_sanitizer(4096, 2048, "sd3-clip-lg")
    with pytest.raises(ValueError, match=f"trained for {SD3_NO_T5}.*looks like {SD3}"):
        apply(nodes, sd3_like, sd3_no_t5)
    assert not torch.equal(apply(nodes, sd3_no_t5_like, sd3_no_t5)[0][0][0], sd3_no_t5_like[0][0])
    # With the CLIP connected, its class decides: an SD3 sanitizer is refused for an SD 1.x CLIP.
    cond = encode(clip_text_encode, sd1_clip, PROMPT)
    with pytest.raises(ValueError, match=r"trained for SD3.*looks like SD 1\.x"):
        apply(nodes, [[torch.randn(1, 77, 4096), cond[0][1]]], sd3, clip=sd1_clip, text=PROMPT)


def test_whole_sequence_conditioning_of_any_length_keeps_masks_and_keys(nodes):
    """Flux-shaped rows longer than the sanitizer's positions, an attention mask, zeroed padding."""
    flux = active_sanitizer(4096, 768, "flux-t5xxl-clip-l", chunk_length=0, max_tokens=256)
    rows = torch.randn(1, 300, 4096)
    rows[:, 290:] = 0.0                                   # padding ComfyUI zeroed
    mask = torch.ones(1, 300)
    mask[:, 280:] = 0                                     # and padding its mask hides
    cond = [[rows, {"pooled_output": torch.randn(1, 768), "guidance": 3.5, "attention_mask": mask}]]
    snap = snapshot(cond)
    same, _, _ = apply(nodes, cond, flux, intensity=0.0)
    assert torch.equal(same[0][0], rows) and torch.equal(same[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    out, report, ui = apply(nodes, cond, flux, intensity=1.0)
    assert_unchanged(cond, snap)
    assert out[0][1]["guidance"] == 3.5 and out[0][1]["attention_mask"] is mask
    assert torch.equal(out[0][0][:, 280:], rows[:, 280:])                 # masked rows untouched
    assert not torch.equal(out[0][0][:, :280], rows[:, :280])
    assert not torch.equal(out[0][1]["pooled_output"], cond[0][1]["pooled_output"])   # Flux reads it
    entry = ui["token_scores"][0]
    assert entry["label"] == "" and "cond 0" not in report and report.splitlines()[1].startswith("prompt score")
    assert all(t["gate"] == 0 for t in entry["tokens"] if t["position"] >= 280)


def test_report_lists_only_erased_tokens(nodes, sd1_clip, clip_text_encode):
    quiet = active_sanitizer(768, 0, "sd1-clip-l", score_bias=-8.0, score_std=0.0)
    calm = "a photo of a cat on a sofa"          # no term of the concepts, which would be read as words
    _, report, ui = apply(nodes, encode(clip_text_encode, sd1_clip, calm), quiet, clip=sd1_clip, text=calm)
    assert "erased: none" in report and "flagged" not in report
    loud = active_sanitizer(768, 0, "sd1-clip-l", score_bias=8.0, score_std=0.0)
    _, report, _ = apply(nodes, encode(clip_text_encode, sd1_clip, PROMPT), loud, clip=sd1_clip, text=PROMPT)
    assert "erased: a (" in report and "nude (" in report


@pytest.mark.parametrize("name,clip_kind", [("old-sd1.safetensors", "sd1"), ("old-sdxl.safetensors", "sdxl")])
def test_old_weight_files_load_and_apply(name, clip_kind, nodes, sanitizers_dir, sd1_clip, sdxl_clip,
                                          clip_text_encode):
    """Files written by the engine before this change (tests/comfyui/data) still load and work."""
    shutil.copy(DATA / name, sanitizers_dir / name)
    model = nodes["EmbeddingSanitizerLoader"]().load(name)[0]
    clip = {"sd1": sd1_clip, "sdxl": sdxl_clip}[clip_kind]
    cond = encode(clip_text_encode, clip, PROMPT)
    out, _, ui = apply(nodes, cond, model, clip=clip, text=PROMPT)
    assert not torch.equal(out[0][0], cond[0][0]) and ui["token_scores"][0]["tokens"][4]["token"] == "nude"
    other = sdxl_clip if clip_kind == "sd1" else sd1_clip
    with pytest.raises(ValueError, match="mismatch"):
        apply(nodes, encode(clip_text_encode, other, PROMPT), model)


# ---------------------------------------------------------------- ComfyUI 0.3.x (local script)

@pytest.fixture(scope="module")
def t5_base_clip(comfy_sd, tmp_path_factory):
    """T5-base at full size, random weights, loaded by ComfyUI's CLIPLoader as type stable_audio."""
    newer(comfy_sd)
    import folder_paths
    import nodes as comfy_nodes
    from comfy.text_encoders import sa_t5
    from safetensors.torch import save_file
    built = random_clip(comfy_sd, sa_t5.SAT5Tokenizer, sa_t5.SAT5Model, layers=99)
    state = {k: v.half().contiguous() for k, v in built.cond_stage_model.t5base.transformer.state_dict().items()}
    folder = tmp_path_factory.mktemp("text_encoders")
    save_file(state, str(folder / "t5_base_random.safetensors"))
    folder_paths.add_model_folder_path("text_encoders", str(folder))
    return comfy_nodes.CLIPLoader().load_clip("t5_base_random.safetensors", type="stable_audio")[0]


@pytest.fixture(scope="module")
def sd3_clip_to_train(comfy_sd):
    """SD3 with CLIP-L and CLIP-G of two layers (SD3 reads the penultimate) and T5-XXL of one layer, narrowed
    inside (its rows are 4096 wide, as the real ones), so the prompts of a training run encode in a minute."""
    newer(comfy_sd)
    from comfy.text_encoders import sd3_clip as sd3
    return random_clip(comfy_sd, sd3.SD3Tokenizer, sd3.sd3_clip(clip_l=True, clip_g=True, t5=True),
                       model_options={"t5xxl_model_config": {"num_layers": 1, "d_ff": 64, "num_heads": 1}})


@pytest.fixture(scope="module")
def sd3_clip_no_t5(comfy_sd):
    newer(comfy_sd)
    from comfy.text_encoders import sd3_clip as sd3
    return random_clip(comfy_sd, sd3.SD3Tokenizer, sd3.sd3_clip(clip_l=True, clip_g=True, t5=False))


def rows_follow_gates(out, cond, entry):
    """Intensity 1 changes the rows it gates and no other."""
    for t in entry["tokens"]:
        changed = not torch.equal(out[0][0][0, t["position"]], cond[0][0][0, t["position"]])
        assert changed == (t["gate"] > 0), t


def test_t5_base_through_the_stable_audio_loader(nodes, t5_base_clip, sd1_clip, sd1_sanitizer, clip_text_encode):
    import nodes as comfy_nodes
    ComfyTextEncoder, labels_for = text_encoders()
    cond = comfy_nodes.CLIPTextEncode().encode(t5_base_clip, PROMPT)[0]
    rows = cond[0][0]
    assert rows.shape == (1, 128, 768) and cond[0][1].get("pooled_output") is None
    padding = rows[0].abs().amax(dim=-1) == 0
    assert padding.any()                                  # ComfyUI zeroes T5-base's masked padding
    sanitizer = active_sanitizer(768, 0, "t5-base", chunk_length=0, max_tokens=128, score_bias=-0.5)
    same, _, _ = apply(nodes, cond, sanitizer, intensity=0.0)
    assert torch.equal(same[0][0], rows)
    snap = snapshot(cond)
    out, _, ui = apply(nodes, cond, sanitizer, threshold=0.3, clip=t5_base_clip, text=PROMPT)
    assert_unchanged(cond, snap)
    entry = ui["token_scores"][0]
    assert entry["labelled"]
    # SentencePiece pieces as text ("nu", "de"), no "▁" marks; a lone word-start piece shows as ␣.
    assert "".join(t["token"] for t in entry["tokens"]).replace("\u2423", "") == PROMPT.replace(" ", "")
    rows_follow_gates(out, cond, entry)
    assert torch.equal(out[0][0][0, padding], rows[0, padding])
    # Same width as CLIP-L: told apart by the CLIP's class, or by the missing pooled vector.
    with pytest.raises(ValueError, match=r"trained for SD 1\.x.*looks like T5-base"):
        apply(nodes, cond, sd1_sanitizer, clip=t5_base_clip, text=PROMPT)
    with pytest.raises(ValueError, match=r"trained for SD 1\.x.*looks like T5-base"):
        apply(nodes, cond, sd1_sanitizer)
    with pytest.raises(ValueError, match=r"trained for T5-base.*looks like SD 1\.x"):
        apply(nodes, encode(clip_text_encode, sd1_clip, PROMPT), sanitizer)
    encoder = check_batched_encoding(t5_base_clip, False)
    assert (encoder.family, encoder.chunk_length, encoder.max_tokens, encoder.leading_specials) == \
        ("t5-base", 0, 128, 0)
    text = "a nude woman"
    assert [labels_for(t5_base_clip, text, 128)[0][p] for p in encoder.span_positions(text, 2, 6)] == ["nu", "de"]


def test_flux_rows_and_pooled_are_sanitized_guidance_kept(nodes, flux_clip, clip_text_encode):
    import node_helpers
    cond = encode(clip_text_encode, flux_clip, PROMPT)
    cond = node_helpers.conditioning_set_values(cond, {"guidance": 3.5})     # what FluxGuidance does
    assert cond[0][0].shape == (1, 256, 4096) and cond[0][1]["pooled_output"].shape == (1, 768)
    sanitizer = active_sanitizer(4096, 768, "flux-t5xxl-clip-l", chunk_length=0, max_tokens=256)
    snap = snapshot(cond)
    same, _, _ = apply(nodes, cond, sanitizer, intensity=0.0)
    assert torch.equal(same[0][0], cond[0][0]) and torch.equal(same[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    out, _, ui = apply(nodes, cond, sanitizer, threshold=0.5, clip=flux_clip, text=PROMPT)
    assert_unchanged(cond, snap)
    assert out[0][1]["guidance"] == 3.5 and out[0][1].keys() == cond[0][1].keys() | {"embedding_sanitizer"}
    assert not torch.equal(out[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    entry = ui["token_scores"][0]
    assert "".join(t["token"] for t in entry["tokens"]).replace("\u2423", "") == PROMPT.replace(" ", "")
    rows_follow_gates(out, cond, entry)
    encoder = check_batched_encoding(flux_clip, True)
    assert (encoder.family, encoder.pooled_dim, encoder.chunk_length) == ("flux-t5xxl-clip-l", 768, 0)
    # The encode node is CLIPTextEncode then Sanitize Conditioning given the same clip and text (which
    # it reads for the vocabulary's words and disguises).
    encoded = nodes["EmbeddingSanitizerCLIPTextEncode"]().encode(flux_clip, PROMPT, sanitizer, 1.0)
    torch.testing.assert_close(encoded["result"][0][0][0], apply(nodes, encode(clip_text_encode, flux_clip, PROMPT),
                                                                 sanitizer, clip=flux_clip, text=PROMPT)[0][0][0])
    # Disguised words are found in T5's rows, which are Flux's.
    disguised = "a photo of a n u d e woman"
    covered = plain_reading(sanitizer, encoder, [disguised], 256).rows[0].nonzero().flatten().tolist()
    tokens = encoder.encode([disguised]).tokens[0]
    assert [tokens[r] for r in covered if tokens[r] != "\u2423"] == ["n", "u", "d", "e"]     # and their word starts


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_the_engine_encodes_sd3_and_flux_as_comfyui_does(kind, request, monkeypatch):
    """encoders.T5Encoder (what `release` trains SD3 / Flux sanitizers on) built from the weights of
    ComfyUI's own encoders, with the T5 tokenizer ComfyUI ships: the same rows, pooled vector, real
    tokens and term rows as ComfyUI, for a short and a long (two CLIP chunks) prompt."""
    from embedding_sanitizer.encoders import T5_TOKENIZER_ENV, _t5_family

    from .conftest import ROOT
    clip = request.getfixturevalue(f"{kind}_clip")
    monkeypatch.setenv(T5_TOKENIZER_ENV, str(ROOT / "comfy" / "text_encoders" / "t5_tokenizer"))
    held = clip.cond_stage_model
    states = [getattr(held, part).transformer.state_dict() for part in ("clip_l", "clip_g", "t5xxl")
              if getattr(held, part, None) is not None]
    engine = _t5_family(states, f"ComfyUI's {kind}", "cpu")
    ComfyTextEncoder, _ = text_encoders()
    comfy = ComfyTextEncoder(clip)
    assert (engine.family, engine.max_tokens, engine.leading_specials) == \
        (comfy.family, comfy.max_tokens, comfy.leading_specials)
    for text in (PROMPT, LONG):
        ours, theirs = engine.encode([text]), comfy.encode([text])
        torch.testing.assert_close(ours.embedding, theirs.embedding, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(ours.pooled, theirs.pooled, atol=1e-4, rtol=1e-3)
        assert torch.equal(ours.real_mask, theirs.real_mask)
    start = PROMPT.index("nude")
    assert engine.span_positions(PROMPT, start, start + 4) == comfy.span_positions(PROMPT, start, start + 4) != []


@pytest.mark.parametrize("with_t5", [True, False])
def test_sd3_clip_rows_then_t5_rows(with_t5, nodes, sd3_clip, sd3_clip_no_t5, clip_text_encode):
    clip = sd3_clip if with_t5 else sd3_clip_no_t5
    cond = encode(clip_text_encode, clip, PROMPT)
    assert cond[0][0].shape == (1, 154 if with_t5 else 77, 4096) and cond[0][1]["pooled_output"].shape == (1, 2048)
    family, chunks = ("sd3-clip-lg-t5xxl", 0) if with_t5 else ("sd3-clip-lg", 77)
    sanitizer = active_sanitizer(4096, 2048, family, chunk_length=chunks, max_tokens=77)
    same, _, _ = apply(nodes, cond, sanitizer, intensity=0.0)
    assert torch.equal(same[0][0], cond[0][0])
    out, _, ui = apply(nodes, cond, sanitizer, threshold=0.5, clip=clip, text=PROMPT)
    assert not torch.equal(out[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    text = "".join(t["token"] for t in ui["token_scores"][0]["tokens"]).replace("\u2423", "")
    assert text == PROMPT.replace(" ", "") * (2 if with_t5 else 1)               # CLIP rows, then T5 rows
    rows_follow_gates(out, cond, ui["token_scores"][0])
    flux = active_sanitizer(4096, 768, "flux-t5xxl-clip-l", chunk_length=0, max_tokens=256)
    with pytest.raises(ValueError, match=r"trained for Flux.*looks like SD3"):
        apply(nodes, cond, flux, clip=clip, text=PROMPT)
    # Same shapes with and without T5: what the CLIP holds tells them apart.
    other = active_sanitizer(4096, 2048, "sd3-clip-lg" if with_t5 else "sd3-clip-lg-t5xxl", chunk_length=0,
                             max_tokens=77)
    trained, found = (SD3_NO_T5, SD3) if with_t5 else (SD3, SD3_NO_T5)
    for connected in ({"clip": clip, "text": PROMPT}, {}):          # or, without the CLIP, the rows' features
        with pytest.raises(ValueError, match=f"trained for {trained}.*looks like {found}"):
            apply(nodes, cond, other, **connected)
    encoder = check_batched_encoding(clip, True, streams=2 if with_t5 else 1)
    assert (encoder.family, encoder.chunk_length, encoder.max_tokens, encoder.pooled_dim) == (family, chunks, 77, 2048)
    # A term is found in every stream: "nude woman" in CLIP's rows, and in T5's after them.
    text = "a photo of a nude woman"
    rows = encoder.span_positions(text, text.index("nude"), len(text))
    tokens = encoder.encode([text]).tokens[0]
    assert [tokens[r] for r in rows] == ["nude", "woman"] + (["nu", "de", "woman"] if with_t5 else [])
    assert rows[:2] == [5, 6] and all(r >= 77 for r in rows[2:])
    assert encoder.span_positions(text, text.index("nude") + 1, len(text)) == []     # not a token boundary
    # Disguised words are read plainly in every stream too.
    disguised = "a photo of a n u d e woman"
    covered = plain_reading(sanitizer, encoder, [disguised], cond[0][0].shape[1]).rows[0].nonzero().flatten().tolist()
    assert covered[:4] == [5, 6, 7, 8] and any(r >= 77 for r in covered) == with_t5


@pytest.mark.slow
def test_train_on_sd3_with_t5_in_comfyui_then_apply_and_refuse_others(nodes, sanitizers_dir, sd3_clip_to_train,
                                                                      sd3_clip_no_t5, sd1_clip, clip_text_encode,
                                                                      monkeypatch):
    """The Train node on SD3's CLIP-L + CLIP-G + T5-XXL: a term is labelled in the CLIP rows and in the
    T5 rows; the sanitizer applies to that conditioning and refuses SD3 without T5."""
    import node_helpers
    from embedding_sanitizer import train
    from .test_training import run_train
    labelled = []
    term_labels = train.term_labels

    def spy(examples, spans, concepts, cache):
        labelled.extend(spans)
        return term_labels(examples, spans, concepts, cache)
    monkeypatch.setattr(train, "term_labels", spy)
    clip = sd3_clip_to_train
    out = run_train(nodes, clip, "trained-sd3", preset="nudity + violence", steps=2)
    model, summary = out["result"]
    assert (model.config.encoder_family, model.config.chunk_length, model.config.max_tokens,
            model.config.pooled_dim) == ("sd3-clip-lg-t5xxl", 0, 77, 2048)
    assert len(labelled) >= 16 and all(min(rows) < 77 <= max(rows) for rows in labelled)   # both streams
    loaded = nodes["EmbeddingSanitizerLoader"]().load("trained-sd3.safetensors")[0]

    cond = node_helpers.conditioning_set_values(encode(clip_text_encode, clip, PROMPT), {"end_percent": 0.8})
    rows, pooled = cond[0][0], cond[0][1]["pooled_output"]
    snap = snapshot(cond)
    same, _, _ = apply(nodes, cond, loaded, intensity=0.0, clip=clip, text=PROMPT)
    assert torch.equal(same[0][0], rows) and torch.equal(same[0][1]["pooled_output"], pooled)
    # Two training steps flag no word in particular: a threshold that the highest-scoring CLIP row and
    # T5 row reach, and other rows do not, gates rows of both streams by their own scores; a changed
    # prompt changes throughout (model.GATE_SPREAD), so every other row moves by a share of the largest.
    scores = token_scores(loaded.sanitize(rows, pooled).scores)[0]
    threshold = float(min(scores[:77].max(), scores[77:].max()))
    over = scores >= threshold
    assert over[:77].any() and over[77:].any() and not over.all()
    gates = loaded.sanitize(rows, pooled, threshold=threshold).gates[0]
    own = torch.where(over, scores.clamp(0.0, 1.0), 0.0)
    torch.testing.assert_close(gates, torch.maximum(own, GATE_SPREAD * own.max()))
    out_cond, _, ui = apply(nodes, cond, loaded, intensity=1.0, threshold=threshold, clip=clip, text=PROMPT)
    assert_unchanged(cond, snap)
    assert torch.equal((out_cond[0][0][0] != rows[0]).any(dim=-1), gates > 0)
    assert not torch.equal(out_cond[0][1]["pooled_output"], pooled)                 # SD3 reads the pooled vector
    assert out_cond[0][1].keys() == cond[0][1].keys() | {"embedding_sanitizer"} and out_cond[0][1]["end_percent"] == 0.8
    text = "".join(t["token"] for t in ui["token_scores"][0]["tokens"]).replace("\u2423", "")
    assert text == PROMPT.replace(" ", "") * 2

    with pytest.raises(ValueError, match=f"mismatch: this sanitizer was trained for {SD3}.*looks like {SD3_NO_T5}"):
        nodes["EmbeddingSanitizerCLIPTextEncode"]().encode(sd3_clip_no_t5, PROMPT, loaded, 1.0)
    with pytest.raises(ValueError, match=f"trained for {SD3}.*looks like SD 1\\.x"):
        apply(nodes, encode(clip_text_encode, sd1_clip, PROMPT), loaded, clip=sd1_clip, text=PROMPT)


@pytest.mark.slow
def test_train_on_t5_base_in_comfyui_then_apply_and_refuse_others(comfy_sd, nodes, sanitizers_dir, sd1_clip,
                                                                   clip_text_encode):
    newer(comfy_sd)
    import nodes as comfy_nodes
    from comfy.text_encoders import sa_t5
    from .test_training import run_train
    clip = random_clip(comfy_sd, sa_t5.SAT5Tokenizer, sa_t5.SAT5Model, layers=2)
    out = run_train(nodes, clip, "trained-t5")
    model, summary = out["result"]
    assert model.config.encoder_family == "t5-base" and model.config.chunk_length == 0
    loaded = nodes["EmbeddingSanitizerLoader"]().load("trained-t5.safetensors")[0]
    cond = comfy_nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    result, _, ui = apply(nodes, cond, loaded, clip=clip, text=PROMPT)
    assert result[0][0].shape == cond[0][0].shape and ui["token_scores"][0]["labelled"]
    with pytest.raises(ValueError, match=r"trained for T5-base.*looks like SD 1\.x"):
        apply(nodes, encode(clip_text_encode, sd1_clip, PROMPT), loaded, clip=sd1_clip, text=PROMPT)


@pytest.mark.parametrize("clip_fixture", ["t5_base_clip", "sd3_clip_no_t5"])
def test_the_builtin_sanitizer_on_t5_alone_and_sd3_without_t5(nodes, clip_fixture, request):
    import nodes as comfy_nodes

    from embedding_sanitizer.builtin import BUILTIN_NAME
    clip = request.getfixturevalue(clip_fixture)
    builtin = nodes["EmbeddingSanitizerLoader"]().load(BUILTIN_NAME)[0]
    text, benign = "a nude woman on a beach", "a photo of a cat sleeping on a sofa"
    cond = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
    snap = snapshot(cond)
    out, report, ui = apply(nodes, cond, builtin, 1.0, 0.5, clip=clip, text=text)
    assert_unchanged(cond, snap)
    assert report.splitlines()[0].startswith(f"sanitizer: {BUILTIN_NAME}")
    assert not torch.equal(out[0][0], cond[0][0])
    # T5's SentencePiece spells the word "nu" + "de", CLIP's BPE "nude": either way it is shown erased.
    assert "nude" in "".join(t["token"] for t in ui["token_scores"][0]["tokens"] if t["erased"])
    plain = comfy_nodes.CLIPTextEncode().encode(clip, benign)[0]
    untouched, _, _ = apply(nodes, plain, builtin, 1.0, 0.5, clip=clip, text=benign)
    assert torch.equal(untouched[0][0], plain[0][0])
