"""SD3 and Flux encoders built by the engine (encoders.T5Encoder) from text-encoder files at a tiny size:
random one-layer CLIP towers of the real widths, a random T5 encoder and a tiny offline tokenizer."""

import pytest
import torch
from safetensors.torch import save_file

from embedding_sanitizer.encoders import BOS, EOS, T5_TOKENIZER_ENV, T5Encoder, load_encoder, random_clip_encoder

from tests.tiny_t5 import t5_file_state, t5_model, write_tokenizer

PROMPT = "a nude woman on a beach"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5_tokenizer")
    write_tokenizer(folder)
    return folder


@pytest.fixture(autouse=True)
def _tokenizer_env(tokenizer_dir, monkeypatch):
    monkeypatch.setenv(T5_TOKENIZER_ENV, str(tokenizer_dir))


@pytest.fixture(scope="module")
def parts():
    """(CLIP-L model, CLIP-G model, T5 model): one layer each, random."""
    clip_l, clip_g = random_clip_encoder("sdxl-clip-lg", layers=1, seed=3, device="cpu").models
    return clip_l, clip_g, t5_model(4096, seed=4)


def clip_state(model) -> dict:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def t5_rows(encoder: T5Encoder, text: str, length: int) -> torch.Tensor:
    ids = encoder._t5_ids(text)
    row_ids = torch.tensor([ids + [1] + [0] * (length - len(ids) - 1)])
    return encoder.t5(input_ids=row_ids).last_hidden_state[0]


@pytest.fixture(scope="module")
def flux_files(parts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux")
    save_file(clip_state(parts[0]), str(folder / "clip_l.safetensors"))
    save_file(t5_file_state(parts[2]), str(folder / "t5xxl_fp16.safetensors"))
    return f"{folder / 't5xxl_fp16.safetensors'},{folder / 'clip_l.safetensors'}"


@torch.no_grad()
def test_flux_reads_t5_rows_and_pools_clip_l_unprojected(flux_files, parts):
    encoder = load_encoder(flux_files, device="cpu")
    assert encoder.family == "flux-t5xxl-clip-l" and (encoder.embed_dim, encoder.pooled_dim) == (4096, 768)
    assert (encoder.max_tokens, encoder.leading_specials, encoder.chunk_length) == (256, 0, 0)
    long_prompt = " ".join(["castle"] * 300)                 # past T5's 256 rows: not cut
    batch = encoder.encode([PROMPT, long_prompt])
    t5_ids = encoder._t5_ids(PROMPT)
    assert batch.embedding.shape == (2, 301, 4096) and batch.pooled.shape == (2, 768)
    # Rows: T5's last hidden state over the tokens, </s> and padding to 256, all attended.
    torch.testing.assert_close(batch.embedding[0, :256], t5_rows(encoder, PROMPT, 256), atol=1e-4, rtol=1e-4)
    assert not batch.attention_mask[0, 256:].any() and (batch.embedding[0, 256:] == 0).all()
    assert batch.real_mask[0].sum() == len(t5_ids) and batch.real_mask[1].sum() == 300
    assert batch.token_ids[0, len(t5_ids)] == 1 and batch.tokens[0][t5_ids.index(encoder._t5_ids("nude")[0])] == "nude"
    # Pooled: CLIP-L's final-norm end-of-text state of the first chunk, no projection (ComfyUI's Flux).
    clip_ids = encoder._clip_ids(PROMPT)
    chunk = torch.tensor([[BOS, *clip_ids, EOS] + [EOS] * (75 - len(clip_ids))])
    own = parts[0](input_ids=chunk).last_hidden_state[0, 1 + len(clip_ids)]
    torch.testing.assert_close(batch.pooled[0], own, atol=1e-4, rtol=1e-4)
    # A character span's rows are T5 rows; a span no token starts at has none.
    start = PROMPT.index("nude")
    nude_rows = encoder.span_positions(PROMPT, start, start + 4)
    assert nude_rows and all(batch.tokens[0][r] for r in nude_rows)
    assert encoder.span_positions(PROMPT, start + 1, start + 4) == []


@torch.no_grad()
def test_sd3_checkpoint_gives_clip_chunks_padded_to_4096_then_t5_rows(parts, tmp_path):
    clip_l, clip_g, t5 = parts
    state = {f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_state(clip_l).items()}
    state.update({f"text_encoders.clip_g.transformer.{k}": v for k, v in clip_state(clip_g).items()})
    state.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5_file_state(t5).items()})
    state["model.diffusion_model.x_embedder.proj.weight"] = torch.zeros(1)      # the MMDiT beside them
    save_file(state, str(tmp_path / "sd3_medium_incl_clips_t5xxlfp16.safetensors"))
    encoder = load_encoder(tmp_path / "sd3_medium_incl_clips_t5xxlfp16.safetensors", device="cpu")
    assert encoder.family == "sd3-clip-lg-t5xxl" and (encoder.embed_dim, encoder.pooled_dim) == (4096, 2048)
    assert (encoder.max_tokens, encoder.leading_specials) == (77, 1)
    long_prompt = " ".join(["castle"] * 80) + " nude woman"       # two CLIP chunks, then T5
    batch = encoder.encode([PROMPT, long_prompt])
    clip_ids = encoder._clip_ids(PROMPT)
    ids = torch.tensor([[BOS, *clip_ids, EOS] + [pad] * (75 - len(clip_ids)) for pad in (EOS, 0)])
    out_l, out_g = (m(input_ids=i[None], output_hidden_states=True) for m, i in zip((clip_l, clip_g), ids))
    rows = batch.embedding[0]
    torch.testing.assert_close(rows[:77, :768], out_l.hidden_states[-2][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rows[:77, 768:2048], out_g.hidden_states[-2][0], atol=1e-4, rtol=1e-4)
    assert (rows[:77, 2048:] == 0).all()
    torch.testing.assert_close(rows[77:154], t5_rows(encoder, PROMPT, 77), atol=1e-4, rtol=1e-4)
    pooled = torch.cat([out_l.last_hidden_state[0, 1 + len(clip_ids)], out_g.text_embeds[0]])
    torch.testing.assert_close(batch.pooled[0], pooled, atol=1e-4, rtol=1e-4)
    # The long prompt: 2 CLIP chunks (154 rows), then T5's rows; its terms are found in both.
    start = long_prompt.index("nude")
    found = encoder.span_positions(long_prompt, start, start + 4)
    t5_index = encoder._t5_ids(long_prompt).index(encoder._t5_ids("nude")[0])
    assert found == [77 + 1 + 5, 154 + t5_index]
    assert [batch.tokens[1][r] for r in found] == ["nude", "nude"]
    assert batch.real_mask[0].sum() == len(clip_ids) + len(encoder._t5_ids(PROMPT))


@pytest.mark.parametrize("files, message", [
    (("t5",), "T5-XXL needs CLIP-L beside it"),
    (("clip_l", "clip_l", "t5"), "T5-XXL needs CLIP-L"),
    (("clip_l", "t5", "t5"), "got 2 T5"),
])
def test_t5_without_the_clip_towers_its_family_needs_is_refused(files, message, parts, tmp_path):
    states = {"clip_l": clip_state(parts[0]), "t5": t5_file_state(parts[2])}
    paths = []
    for i, part in enumerate(files):
        paths.append(tmp_path / f"{i}_{part}.safetensors")
        save_file(states[part], str(paths[-1]))
    with pytest.raises(ValueError, match=message) as refused:
        load_encoder(",".join(map(str, paths)), device="cpu")
    assert "\n" not in str(refused.value)


def test_no_t5_tokenizer_says_where_to_get_one(flux_files, monkeypatch, tmp_path):
    monkeypatch.delenv(T5_TOKENIZER_ENV)
    with pytest.raises(FileNotFoundError, match=f"set {T5_TOKENIZER_ENV}.*ComfyUI.*downloads nothing"):
        load_encoder(flux_files, device="cpu")
    monkeypatch.setenv(T5_TOKENIZER_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tokenizer.json does not exist"):
        load_encoder(flux_files, device="cpu")


def test_an_sd3_checkpoint_without_t5_is_refused(parts, tmp_path):
    state = {f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_state(parts[0]).items()}
    save_file(state, str(tmp_path / "sd3_medium.safetensors"))
    with pytest.raises(ValueError, match="without T5-XXL"):
        load_encoder(tmp_path / "sd3_medium.safetensors", device="cpu")


@torch.no_grad()
def test_a_flux_diffusers_folder_with_t5_in_shards_loads_the_same_weights(parts, tmp_path):
    clip_l, _, t5 = parts
    for folder in ("text_encoder", "text_encoder_2"):
        (tmp_path / folder).mkdir()
    save_file(clip_state(clip_l), str(tmp_path / "text_encoder" / "model.safetensors"))
    state = t5_file_state(t5)
    keys = sorted(state)
    for i, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:])):
        save_file({k: state[k] for k in part}, str(tmp_path / "text_encoder_2" / f"model-0000{i + 1}-of-00002.safetensors"))
    encoder = load_encoder(tmp_path, device="cpu")
    assert encoder.family == "flux-t5xxl-clip-l"
    ids = encoder._t5_ids(PROMPT)
    expected = t5(input_ids=torch.tensor([ids + [1] + [0] * (255 - len(ids))])).last_hidden_state[0]
    torch.testing.assert_close(encoder.encode([PROMPT]).embedding[0], expected, atol=1e-5, rtol=1e-5)
