"""The release recipe (embedding_sanitizer/release.py) at a tiny size, on a random CLIP-L saved as a file."""

import json

import pytest
from safetensors.torch import save_file

from embedding_sanitizer import load_sanitizer
from embedding_sanitizer.__main__ import main
from embedding_sanitizer.encoders import random_clip_encoder
from embedding_sanitizer.release import plan, read_recipe

TINY = {"steps": 3, "batch_size": 8, "pairs_per_concept": 32, "benign": 40, "weak_prompts": 0, "heldout_pairs_per_concept": 8,
        "heldout_benign": 16, "width": 64, "layers": 1, "prompt_probe": 0}


def write_recipe(folder, sanitizers, **extra):
    path = folder / "release.json"
    path.write_text(json.dumps({"license": "MIT", "concepts": ["nudity"], "config": TINY,
                                "sanitizers": sanitizers, **extra}))
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A standalone CLIP-L text-encoder file, as a maintainer passes one (random weights, one layer)."""
    path = tmp_path_factory.mktemp("encoders") / "clip_l.safetensors"
    model = random_clip_encoder("sd1-clip-l", layers=1, seed=0, device="cpu").models[0]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory, clip_file):
    folder = tmp_path_factory.mktemp("release")
    recipe = write_recipe(folder, [{"name": "sd15", "family": "sd1-clip-l", "file": "sd15-test.safetensors"}])
    out = folder / "dist"
    args = ["release", "--recipe", str(recipe), "--out", str(out), "--encoder", f"sd15={clip_file}", "--device", "cpu"]
    main(args)
    return out, args


def test_release_writes_each_file_with_its_card(released):
    out, _ = released
    assert sorted(p.name for p in out.iterdir()) == ["sd15-test.md", "sd15-test.safetensors"]   # no temp files left
    model = load_sanitizer(out / "sd15-test.safetensors")
    assert model.config.encoder_family == "sd1-clip-l" and list(model.concepts) == ["nudity"]
    card = (out / "sd15-test.md").read_text()
    for needed in ("SD 1.x (CLIP-L)", "`sd1-clip-l`", "nudity:", "License: MIT", "AUROC", "| auroc |",
                   '"steps": 3', "SHA-256", "Date: 20", "python -m embedding_sanitizer release"):
        assert needed in card, needed


def test_release_refuses_to_overwrite_without_force(released, capsys):
    out, args = released
    before = (out / "sd15-test.safetensors").read_bytes()
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (out / "sd15-test.safetensors").read_bytes() == before


def test_force_replaces_both(released):
    out, args = released
    card = out / "sd15-test.md"
    card.write_text("stale")
    main(args + ["--force"])
    assert card.read_text().startswith("# sd15-test")


@pytest.mark.parametrize("entry, options, message", [
    ({"name": "sa", "family": "t5-base", "file": "sa.safetensors"}, {}, "cannot build"),
    ({"name": "sd15", "family": "sd1-clip-l", "file": "sd15.safetensors"}, {}, "pass --encoder sd15=PATH"),
    ({"name": "sd15", "family": "sd1-clip-l", "file": "sd15.safetensors"}, {"only": ["sdxl"]}, "no sanitizer named"),
])
def test_plan_fails_before_any_training(tmp_path, entry, options, message):
    with pytest.raises(ValueError, match=message):
        plan(read_recipe(write_recipe(tmp_path, [entry])), tmp_path / "dist", **options)


@pytest.mark.parametrize("sanitizers, extra, message", [
    ([{"name": "a", "family": "sd9", "file": "a.safetensors"}], {}, "unknown family"),
    ([{"name": "a", "family": "sd1-clip-l", "file": "../a.safetensors"}], {}, "plain file name"),
    ([{"name": "a", "family": "sd1-clip-l", "file": "a.safetensors"}], {"config": {"stepz": 3}}, "unknown"),
    ([{"name": "a", "family": "sd1-clip-l", "file": "a.safetensors"}], {"license": ""}, "license"),
])
def test_bad_recipes_are_refused_in_one_line(tmp_path, sanitizers, extra, message):
    with pytest.raises(ValueError, match=message) as refused:
        read_recipe(write_recipe(tmp_path, sanitizers, **extra))
    assert "\n" not in str(refused.value)


def test_the_shipped_recipe_reads():
    from embedding_sanitizer.paths import PACKAGE_DIR
    recipe = read_recipe(PACKAGE_DIR.parent / "tools" / "release.json")
    assert {e.family for e in recipe.entries} >= {"sd1-clip-l", "sd2-clip-h", "sdxl-clip-lg"}


def test_a_flux_entry_trains_on_clip_l_and_t5_files(tmp_path, clip_file, monkeypatch):
    """SD3 / Flux entries: their text-encoder files given as one comma-separated spec, T5's tokenizer
    from the folder $EMBEDDING_SANITIZER_T5_TOKENIZER names, checked before training."""
    from embedding_sanitizer.encoders import T5_TOKENIZER_ENV
    from tests.tiny_t5 import t5_file_state, t5_model, write_tokenizer

    save_file(t5_file_state(t5_model(64)), str(tmp_path / "t5xxl.safetensors"))     # rows 64 wide, not 4096
    recipe = write_recipe(tmp_path, [{"name": "flux", "family": "flux-t5xxl-clip-l", "file": "flux-test.safetensors",
                                      "encoder": f"{clip_file},t5xxl.safetensors"}])
    monkeypatch.delenv(T5_TOKENIZER_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=T5_TOKENIZER_ENV):
        plan(read_recipe(recipe), tmp_path / "dist")
    write_tokenizer(tmp_path)
    monkeypatch.setenv(T5_TOKENIZER_ENV, str(tmp_path))
    main(["release", "--recipe", str(recipe), "--out", str(tmp_path / "dist"), "--device", "cpu"])
    model = load_sanitizer(tmp_path / "dist" / "flux-test.safetensors")
    config = model.config
    assert (config.encoder_family, config.embed_dim, config.pooled_dim) == ("flux-t5xxl-clip-l", 64, 768)
    assert (config.chunk_length, config.max_tokens) == (0, 256)
    assert "Flux" in (tmp_path / "dist" / "flux-test.md").read_text()
