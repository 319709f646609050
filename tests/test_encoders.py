import pytest
import torch
from safetensors.torch import save_file

from embedding_sanitizer.encoders import BOS, EOS, clip_tokenizer, load_encoder, random_clip_encoder


def test_clip_tokenizer_gives_the_real_clip_ids():
    tok = clip_tokenizer()
    # Ids of the released CLIP vocabulary (openai/clip-vit-large-patch14).
    assert tok("a photo of a cat")["input_ids"] == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert tok.convert_ids_to_tokens([2368]) == ["cat</w>"]


def test_minilm_embeddings_and_masks(minilm):
    batch = minilm.encode(["a photo of a cat", "a dog"])
    assert batch.embedding.shape == (2, 7, 384) and batch.pooled is None
    assert batch.attention_mask.tolist()[1] == [True] * 4 + [False] * 3
    assert batch.real_mask.tolist()[0] == [False] + [True] * 5 + [False]   # [CLS] and [SEP] hidden
    assert batch.tokens[1][:4] == ["", "a", "dog", ""]
    # Padding does not change a prompt's embedding.
    alone = minilm.encode(["a dog"]).embedding
    assert torch.allclose(alone[0], batch.embedding[1, :4], atol=1e-5)


def test_sd1_clip_chunks_long_prompts():
    enc = random_clip_encoder("sd1-clip-l")          # the real ViT-L/14 text architecture
    assert enc.embed_dim == 768 and enc.pooled_dim == 0 and enc.chunk_length == 77
    long_prompt = " ".join(["castle"] * 80)
    batch = enc.encode(["a cat", long_prompt])
    assert batch.embedding.shape == (2, 154, 768)
    assert batch.real_mask.sum(dim=1).tolist() == [2, 80]
    ids = batch.token_ids[1]
    assert ids[0] == BOS and ids[76] == EOS and ids[77] == BOS and ids[77 + 6] == EOS
    assert batch.tokens[1][1] == "castle" and batch.tokens[1][0] == ""
    # The short prompt's second chunk is an empty chunk, and its first chunk equals encoding it alone.
    assert torch.allclose(enc.encode(["a cat"]).embedding[0], batch.embedding[0, :77], atol=1e-4)
    # A character span's rows follow the chunks: token 76 of 80 is row 1 of the second chunk.
    long_term = long_prompt + " nude woman"
    start = long_term.index("nude")
    assert enc.span_positions(long_term, start, len(long_term)) == [77 + 1 + 5, 77 + 1 + 6]
    assert enc.span_positions("a nude woman", 2, 6) == [2]
    assert enc.span_positions("a nude woman", 3, 6) == []          # no token starts inside "nude"
    assert enc.span_positions("a vagin@, 8k", 2, 8) == [2, 3, 4]    # "@," is read as "@" and ","


def test_minilm_span_positions_follow_cls_and_truncation(minilm):
    text = "a photo of a naked woman"
    assert minilm.span_positions(text, text.index("naked"), len(text)) == [5, 6]
    assert minilm.span_positions(text, text.index("naked") + 2, len(text)) == []
    assert minilm.span_positions(text, text.index("naked"), text.index("naked") + 2) == [5]   # the token holding it
    truncated = "word " * 200 + "naked"
    assert minilm.span_positions(truncated, truncated.index("naked"), len(truncated)) == []


def test_sdxl_concatenates_l_and_g_penultimate_and_pools_g():
    enc = random_clip_encoder("sdxl-clip-lg", layers=2)
    batch = enc.encode(["a red car"])
    assert batch.embedding.shape == (1, 77, 2048) and batch.pooled.shape == (1, 1280)
    ids = torch.tensor([[BOS, *enc.token_ids("a red car"), EOS] + [0] * 72])
    out = enc.models[1](input_ids=ids, output_hidden_states=True)
    assert torch.allclose(batch.embedding[0, :, 768:], out.hidden_states[-2][0], atol=1e-4)
    assert torch.allclose(batch.pooled, out.text_embeds, atol=1e-4)


def hf_to_openclip(state, prefix):
    """The inverse of the loader's conversion, to build an SDXL/SD2 checkpoint layout."""
    out = {}
    for key, value in state.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
        elif key.startswith("text_model.encoder.layers."):
            layer, rest = key[len("text_model.encoder.layers."):].split(".", 1)
            base = f"{prefix}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.q_proj."):
                kind = rest.rsplit(".", 1)[1]
                parts = [state[f"text_model.encoder.layers.{layer}.self_attn.{n}.{kind}"]
                         for n in ("q_proj", "k_proj", "v_proj")]
                out[base + "attn.in_proj_" + kind] = torch.cat(parts)
            elif rest.startswith(("self_attn.k_proj", "self_attn.v_proj")):
                continue
            else:
                rest = (rest.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1")
                        .replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
                out[base + rest] = value
    return out


def test_sd1_checkpoint_layout_loads(tmp_path):
    ref = random_clip_encoder("sd1-clip-l", layers=2, seed=1)
    state = {"cond_stage_model.transformer." + k: v for k, v in ref.models[0].state_dict().items()
             if not k.startswith("text_projection")}
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)   # a UNet key beside it
    save_file(state, str(tmp_path / "sd15.safetensors"))
    enc = load_encoder(tmp_path / "sd15.safetensors")
    assert enc.family == "sd1-clip-l" and len(enc.models[0].text_model.encoder.layers) == 2
    assert torch.allclose(enc.encode(["a cat"]).embedding, ref.encode(["a cat"]).embedding, atol=1e-5)


def test_sdxl_checkpoint_and_diffusers_layouts_load(tmp_path):
    ref = random_clip_encoder("sdxl-clip-lg", layers=2, seed=2)
    l_state, g_state = (m.state_dict() for m in ref.models)
    state = {"conditioner.embedders.0.transformer." + k: v for k, v in l_state.items()
             if not k.startswith("text_projection")}
    state.update(hf_to_openclip(g_state, "conditioner.embedders.1.model."))
    save_file(state, str(tmp_path / "sdxl.safetensors"))
    expected = ref.encode(["a cat on a sofa"])
    for source in (tmp_path / "sdxl.safetensors", tmp_path / "diffusers"):
        if source.name == "diffusers":
            for folder, part in (("text_encoder", l_state), ("text_encoder_2", g_state)):
                (source / folder).mkdir(parents=True)
                save_file({k: v.contiguous() for k, v in part.items()}, str(source / folder / "model.safetensors"))
        enc = load_encoder(source)
        got = enc.encode(["a cat on a sofa"])
        assert enc.family == "sdxl-clip-lg"
        assert torch.allclose(got.embedding, expected.embedding, atol=1e-4)
        assert torch.allclose(got.pooled, expected.pooled, atol=1e-4)


def test_bad_encoder_sources_are_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04 pickle")
    with pytest.raises(ValueError, match="pickles are never loaded"):
        load_encoder(ckpt)
    other = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="no text encoder found"):
        load_encoder(other)
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "nothing.safetensors")
