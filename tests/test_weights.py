import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import embedding_sanitizer.weights as weights
from embedding_sanitizer import (EmbeddingSanitizer, SanitizerConfig, WeightFileError, default_weights_path,
                       load_sanitizer, read_metadata, save_sanitizer)

SUMMARY = {"steps": 3, "heldout": {"auroc": 0.5}}


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = EmbeddingSanitizer(SanitizerConfig(embed_dim=24, pooled_dim=6, chunk_length=77, width=16, heads=2,
                                           layers=1, encoder_family="sdxl-clip-lg", encoder_name="test"))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.1)
    return m.eval()


def test_round_trip_keeps_outputs_and_metadata(tmp_path, model):
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    loaded = load_sanitizer(path)
    e, p = torch.randn(2, 154, 24), torch.randn(2, 6)
    a, b = model.sanitize(e, p), loaded.sanitize(e, p)
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.pooled, b.pooled)
    meta = read_metadata(path)
    assert meta["format_version"] == 1 and meta["encoder_family"] == "sdxl-clip-lg"
    assert meta["embed_dim"] == 24 and meta["pooled_dim"] == 6 and meta["chunk_length"] == 77
    assert meta["concepts"] == ["nudity", "violence"] and meta["training"] == SUMMARY
    assert loaded.metadata == meta


def test_save_is_atomic(tmp_path, model, monkeypatch):
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    before = path.read_bytes()

    def broken(tensors, filename, metadata):
        open(filename, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", broken)
    with pytest.raises(OSError):
        save_sanitizer(model, path, {"steps": 4})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_truncated_and_garbage_files_are_refused(tmp_path, model):
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="truncated|corrupted"):
        load_sanitizer(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not a model at all")
    with pytest.raises(WeightFileError, match="not a safetensors file"):
        load_sanitizer(junk)
    with pytest.raises(WeightFileError, match="no sanitizer weight file"):
        load_sanitizer(tmp_path / "missing.safetensors")


class Exploit:
    def __reduce__(self):
        return (open, ("/tmp/embedding-sanitizer-pwned", "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_pickles_are_refused_and_never_executed(tmp_path, writer):
    import os
    target = "/tmp/embedding-sanitizer-pwned"
    if os.path.exists(target):
        os.remove(target)
    path = tmp_path / "evil.safetensors"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(Exploit(), protocol=4))
    else:
        torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(WeightFileError, match="pickle"):
        load_sanitizer(path)
    assert not os.path.exists(target)


def rewrite(path, tensors=None, **changes):
    meta = read_metadata(path)
    meta.update(changes)
    from safetensors.torch import load_file
    tensors = tensors or load_file(str(path))
    save_file(tensors, str(path), metadata={"embedding_sanitizer": json.dumps(meta)})


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99}, "format version 99"),
    ({"embed_dim": 32}, "shape"),
    ({"concepts": ["a", "b", "c"]}, "shape"),
    ({"concepts": []}, "concepts"),
    ({"width": 15}, "inconsistent"),
    ({"pooled_dim": "six"}, "should be int"),
    ({"max_tokens": 10}, "max_tokens 10 differs"),
])
def test_inconsistent_metadata_is_refused(tmp_path, model, changes, message):
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    rewrite(path, **changes)
    with pytest.raises(WeightFileError, match=message):
        load_sanitizer(path)


def test_missing_metadata_and_nonfinite_tensors(tmp_path, model):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightFileError, match="not an Embedding Sanitizer"):
        load_sanitizer(plain)
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    tensors["project.weight"][0, 0] = float("nan")
    rewrite(path, tensors)
    with pytest.raises(WeightFileError, match="NaN"):
        load_sanitizer(path)


def test_files_from_before_the_prior_and_probe_load_without_them(tmp_path, model):
    path = save_sanitizer(model, tmp_path / "old.safetensors", SUMMARY)
    meta = read_metadata(path)
    del meta["prompt_prior"], meta["prompt_probe"]
    from safetensors.torch import load_file
    write_raw(path, load_file(str(path)), json.dumps(meta))
    loaded = load_sanitizer(path)
    e = torch.randn(1, 77, 24)
    assert loaded.config.prompt_prior == loaded.config.prompt_probe == 0.0
    assert torch.equal(loaded(e)[0], model(e)[0])


def test_embedded_default_is_valid_and_meets_its_targets():
    meta = read_metadata(default_weights_path())
    assert meta["encoder_family"] == "minilm" and meta["embed_dim"] == 384
    assert default_weights_path().stat().st_size < 10e6
    heldout = meta["training"]["heldout"]
    assert heldout["auroc"] >= 0.95
    assert heldout["benign_cosine_mean"] >= 0.99
    # the embedded file was trained before "gated" was renamed "touched"
    assert heldout.get("benign_touched_share", heldout.get("benign_gated_share")) <= 0.05
    assert meta["training"]["command"].startswith("python -m embedding_sanitizer train")


def write_raw(path, tensors, metadata_text):
    save_file(tensors, str(path), metadata={"embedding_sanitizer": metadata_text})


@pytest.mark.parametrize("changes, message", [
    ({"layers": 10 ** 9}, "'layers' is 1000000000, outside"),
    ({"embed_dim": 10 ** 30}, "'embed_dim' is 10000000000000000000\\.\\.\\., outside"),
    ({"width": 2 ** 70}, "'width' is"),
    ({"pooled_dim": -6}, "'pooled_dim' is -6, outside"),
    ({"max_tokens": 0, "chunk_length": 0}, "'max_tokens' is 0, outside"),
    ({"width": 0}, "'width' is 0, outside"),
    ({"heads": 0}, "'heads' is 0, outside"),
    ({"concepts": ["nudity", "nudity"]}, "distinct"),
    ({"concepts": [" nudity", "violence"]}, "distinct"),
    ({"concepts": ["nudity", 7]}, "concepts"),
    ({"concepts": [f"c{i}" for i in range(65)]}, "1 to 64"),
    ({"layers": 64, "width": 8192, "heads": 8}, "tensors do not match"),   # in bounds: still nothing built
    ({"format_version": 10 ** 400}, "format version"),
    ({"prompt_prior": "1"}, "prompt_prior must be a number, got str"),
    ({"prompt_prior": 1e9}, "prompt_prior must be from 0 to 16.0, got 1e\\+09"),
    ({"prompt_prior": -1}, "prompt_prior must be from 0"),
    ({"prompt_prior": 10 ** 400}, "prompt_prior must be from 0 to 16.0, got an integer out of range"),
    ({"prompt_prior": 1.0}, "tensors do not match"),       # a prior needs its three tensors
    ({"prompt_probe": [0.5]}, "prompt_probe must be a number, got list"),
    ({"prompt_probe": float("nan")}, "prompt_probe must be from 0 to 16.0, got nan"),
    ({"prompt_probe": 0.5}, "tensors do not match"),       # a probe needs its two tensors
])
def test_hostile_metadata_is_one_line_error_naming_the_file(tmp_path, model, changes, message):
    path = save_sanitizer(model, tmp_path / "hostile.safetensors", SUMMARY)
    rewrite(path, **changes)
    with pytest.raises(WeightFileError, match=message) as info:
        load_sanitizer(path)
    text = str(info.value)
    assert text.startswith("hostile.safetensors: ") and "\n" not in text


@pytest.mark.parametrize("text, message", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"a": ' * 50000 + "1" + "}" * 50000, "nested too deeply"),
    ("[1, 2]", "JSON object"),
    ("{not json", "not valid JSON"),
])
def test_metadata_text_that_is_not_a_json_object(tmp_path, model, text, message):
    path = tmp_path / "m.safetensors"
    write_raw(path, {"w": torch.zeros(2)}, text)
    with pytest.raises(WeightFileError, match=message):
        read_metadata(path)


def test_deeply_nested_header_is_refused(tmp_path):
    body = ('{"a":' * 100000 + "1" + "}" * 100000).encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(WeightFileError, match="deep.safetensors: its header is not valid JSON"):
        load_sanitizer(path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int8])
def test_only_float_tensors_load(tmp_path, model, dtype):
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    tensors["project.weight"] = tensors["project.weight"].to(dtype)
    rewrite(path, tensors)
    with pytest.raises(WeightFileError, match="'project.weight' is .*floating point"):
        load_sanitizer(path)


def test_half_precision_files_still_load(tmp_path, model):
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    from safetensors.torch import load_file
    rewrite(path, {k: v.half() for k, v in load_file(str(path)).items()})
    assert load_sanitizer(path).config.embed_dim == 24


def test_offsets_outside_the_file_are_refused(tmp_path, model):
    path = save_sanitizer(model, tmp_path / "s.safetensors", SUMMARY)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [10 ** 12]
    body = json.dumps(header).encode()
    path.write_bytes(len(body).to_bytes(8, "little") + body + bytes(data[8 + n:]))
    with pytest.raises(WeightFileError, match="does not fit in the file"):
        load_sanitizer(path)


def test_save_without_overwrite_keeps_a_file_that_appeared(tmp_path, model, monkeypatch):
    target = tmp_path / "s.safetensors"
    real_save = weights.save_file

    def save_while_someone_else_writes(tensors, filename, metadata):
        target.write_bytes(b"someone else's file")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(weights, "save_file", save_while_someone_else_writes)
    with pytest.raises(FileExistsError, match="appeared"):
        save_sanitizer(model, target, SUMMARY, overwrite=False)
    assert target.read_bytes() == b"someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]
    monkeypatch.setattr(weights, "save_file", real_save)
    save_sanitizer(model, tmp_path / "new.safetensors", SUMMARY, overwrite=False)
    assert load_sanitizer(tmp_path / "new.safetensors").config.embed_dim == 24
