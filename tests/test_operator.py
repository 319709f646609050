"""Operator enforcement, host-free: the configuration and the marks sanitized conditionings carry."""

from __future__ import annotations

import json
import math

import pytest
import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig
from embedding_sanitizer.model import DEFAULT_THRESHOLD
from embedding_sanitizer.hosts.comfy_operator import (MARK_KEY, OperatorConfigError, enforcement_plan, mark_sanitized,
                                          parse_operator_config, read_operator_config, weights_fingerprint,
                                          with_operator)

DIGEST = "ab" * 32


def policy(min_intensity=1.0, threshold=0.5, concepts=None):
    return parse_operator_config({"sanitizers": {"sd1-clip-l": "a.safetensors"}, "min_intensity": min_intensity,
                                  "threshold": threshold, **({"concepts": concepts} if concepts else {})}, "c.json")


def test_config_resolves_relative_files_next_to_itself(tmp_path):
    config = parse_operator_config({"sanitizers": {"sd1-clip-l": "sd1.safetensors",
                                                   "sdxl-clip-lg": {"file": "/srv/x.safetensors", "sha256": DIGEST.upper()}},
                                    "min_intensity": 1.5, "concepts": ["nudity", "nudity", " violence "]},
                                   tmp_path / "operator.json")
    assert config.sanitizers["sd1-clip-l"].path == tmp_path / "sd1.safetensors"
    assert str(config.sanitizers["sdxl-clip-lg"].path) == "/srv/x.safetensors"
    assert config.sanitizers["sdxl-clip-lg"].sha256 == DIGEST
    assert config.min_intensity == 1.5 and config.concepts == ("nudity", "violence")


def test_config_defaults_to_intensity_one_the_hosts_threshold_and_every_concept(tmp_path):
    config = parse_operator_config({"sanitizers": {"sd1-clip-l": "a.safetensors"}}, tmp_path / "c.json")
    assert config.min_intensity == 1.0 and config.threshold == DEFAULT_THRESHOLD and config.concepts is None


def test_config_without_trained_files_leaves_every_family_to_the_builtin_sanitizer(tmp_path):
    for data in ({}, {"sanitizers": {}}):
        assert parse_operator_config(data, tmp_path / "c.json").sanitizers == {}


@pytest.mark.parametrize("data, fragment", [
    ([], "JSON object"),
    ({"sanitizers": ["sd1.safetensors"]}, "must map encoder families"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intesity": 2}, "unknown key"),     # a typo must not weaken it
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": 0}, "above 0"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": -1}, "above 0"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": math.nan}, "above 0"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": 1e9}, "at most"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": True}, "above 0"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": "1"}, "above 0"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "threshold": 1.0}, "below 1"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "threshold": -0.1}, "below 1"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "threshold": math.inf}, "below 1"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "concepts": []}, "non-empty list"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "concepts": "nudity"}, "non-empty list"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "concepts": [""]}, "names no concept"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "concepts": ["nude art"]}, "single word"),     # the one name rule
    # A null read as "absent" would mean every concept, or an unpinned file.
    ({"sanitizers": {"sd1-clip-l": "a"}, "concepts": None}, "non-empty list"),
    ({"sanitizers": {"sd1-clip-l": {"file": "a", "sha256": None}}}, "64 hexadecimal"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "threshold": None}, "threshold"),
    ({"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": None}, "intensity"),
    ({"sanitizers": {"sd1-clip-l": 3}}, "file name"),
    ({"sanitizers": {"sd1-clip-l": {"file": ""}}}, "file name"),
    ({"sanitizers": {"sd1-clip-l": {"file": "a", "sha": "x"}}}, "file name"),
    ({"sanitizers": {"sd1-clip-l": {"file": "a", "sha256": "xyz"}}}, "64 hexadecimal"),
    ({"sanitizers": {" ": "a"}}, "empty"),
])
def test_config_refuses_bad_values(tmp_path, data, fragment):
    with pytest.raises(OperatorConfigError, match=fragment):
        parse_operator_config(data, tmp_path / "operator.json")


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(OperatorConfigError, match="cannot read"):
        read_operator_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(OperatorConfigError, match="not valid JSON"):
        read_operator_config(bad)
    twice = tmp_path / "twice.json"
    twice.write_text('{"sanitizers": {"sd1-clip-l": "a"}, "min_intensity": 2, "min_intensity": 0.1}')
    with pytest.raises(OperatorConfigError, match="'min_intensity' is given twice"):
        read_operator_config(twice)
    nested = tmp_path / "nested.json"
    nested.write_text('{"sanitizers": {"sd1-clip-l": {"file": "a", "sha256": "%s", "sha256": "%s"}}}' % ("a" * 64, "b" * 64))
    with pytest.raises(OperatorConfigError, match="'sha256' is given twice"):
        read_operator_config(nested)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"sanitizers": {"sd1-clip-l": "x.safetensors"}}))
    assert read_operator_config(good).source == good


def sanitizer(pooled_dim=0, seed=0):
    torch.manual_seed(seed)
    model = EmbeddingSanitizer(SanitizerConfig(embed_dim=16, pooled_dim=pooled_dim, chunk_length=77, width=32,
                                               layers=1, heads=4, encoder_family="sd1-clip-l"))
    with torch.no_grad():
        torch.nn.init.normal_(model.score_head.weight, std=1.0)
        model.score_head.bias.fill_(0.0)
        torch.nn.init.normal_(model.sanitize_head.weight, std=0.1)
        if pooled_dim:
            torch.nn.init.normal_(model.pooled_head.weight, std=0.1)
    return model.eval()


def marked(model, intensity=1.0, threshold=0.5, concepts=None, pooled=False):
    embedding = torch.randn(1, 77, 16)
    source_pooled = torch.randn(1, 8) if pooled else None
    result = model.sanitize(embedding, source_pooled, intensity=intensity, threshold=threshold, concepts=concepts)
    extras = {}
    mark_sanitized(extras, model, embedding, source_pooled, result, intensity, threshold, concepts)
    return extras[MARK_KEY], embedding, result


def test_fingerprint_is_the_weights_not_the_object():
    a, b, c = sanitizer(seed=0), sanitizer(seed=0), sanitizer(seed=1)
    assert weights_fingerprint(a) == weights_fingerprint(b) != weights_fingerprint(c)


def test_an_unmarked_entry_is_sanitized_at_the_minimum():
    emb = torch.randn(1, 77, 16)
    plan = enforcement_plan(None, emb, None, "f", policy(threshold=0.25))
    assert not plan.keep and plan.embedding is emb and plan.mark is None
    assert (plan.intensity, plan.threshold) == (1.0, 0.25)
    plan = enforcement_plan("forged", emb, None, "f", policy())     # anything but a real mark
    assert not plan.keep and plan.embedding is emb


def test_a_mark_with_the_operators_weights_at_the_minimum_is_kept():
    model = sanitizer()
    mark, source, result = marked(model, intensity=1.5, threshold=0.2)
    plan = enforcement_plan(mark, result.embedding, None, weights_fingerprint(model), policy(concepts=["nudity"]))
    assert plan.keep and plan.embedding is result.embedding


@pytest.mark.parametrize("kwargs, intensity, threshold", [
    ({"intensity": 0.0}, 1.0, 0.5), ({"intensity": 0.5, "threshold": 0.1}, 1.0, 0.1),
    ({"intensity": 2.0, "threshold": 0.9}, 2.0, 0.5), ({"concepts": ("violence",)}, 1.0, 0.5)])
def test_weaker_node_sanitizing_is_redone_from_the_original(kwargs, intensity, threshold):
    model = sanitizer()
    mark, source, result = marked(model, **kwargs)
    plan = enforcement_plan(mark, result.embedding, None, weights_fingerprint(model), policy())
    assert not plan.keep and plan.embedding is source
    assert (plan.intensity, plan.threshold) == (intensity, threshold)     # whichever is stronger


def test_another_sanitizers_work_is_redone_from_the_original_at_the_minimum():
    mine, theirs = sanitizer(seed=0), sanitizer(seed=1)
    mark, source, result = marked(theirs, intensity=3.0)
    plan = enforcement_plan(mark, result.embedding, None, weights_fingerprint(mine), policy())
    assert not plan.keep and plan.embedding is source and (plan.intensity, plan.threshold) == (1.0, 0.5)


def test_a_mark_only_vouches_for_its_own_tensors():
    model = sanitizer(pooled_dim=8)
    mark, source, result = marked(model, pooled=True)
    fingerprint = weights_fingerprint(model)
    assert enforcement_plan(mark, result.embedding, result.pooled, fingerprint, policy()).keep
    # Concatenated with unsanitized text, or the same values in a new tensor: not vouched for.
    for embedding in (torch.cat([result.embedding, torch.randn(1, 77, 16)], 1), result.embedding.clone()):
        plan = enforcement_plan(mark, embedding, result.pooled, fingerprint, policy())
        assert not plan.keep and plan.embedding is embedding and plan.mark is None
    # An unsanitized pooled output swapped in (SDXL's pooled output steers the image).
    swapped = torch.randn(1, 8)
    plan = enforcement_plan(mark, result.embedding, swapped, fingerprint, policy())
    assert not plan.keep and plan.pooled is swapped


def test_a_mark_without_pooled_ignores_the_unused_pooled_output():
    model = sanitizer(pooled_dim=0)       # SD 1.x: its pooled output is not used by the UNet
    mark, _, result = marked(model)
    assert enforcement_plan(mark, result.embedding, torch.randn(1, 8), weights_fingerprint(model), policy()).keep


def test_operator_marks_record_the_file_without_tensors():
    mark, _, _ = marked(sanitizer(), intensity=1.25)
    record = with_operator(mark, "sd1.safetensors").record()
    assert record["by"] == "operator" and record["file"] == "sd1.safetensors" and record["intensity"] == 1.25
    assert record["concepts"] == "all" and len(record["weights_sha256"]) == 16
    json.dumps(record)


@pytest.mark.parametrize("raw, fragment", [
    ('{"sanitizers": {"sd1-clip-l": "é.safetensors"}}'.encode("latin-1"), "not UTF-8"),
    ('{"sanitizers": {"sd1-clip-l": "a.safetensors"}}'.encode("utf-16"), "not UTF-8"),
    (b'{"sanitizers": {"sd1-clip-l": "a.safetensors"}, "min_intensity": 1' + b"0" * 400 + b"}", "minimum intensity"),
    (b'{"sanitizers": {"sd1-clip-l": "a.safetensors"}, "threshold": 1' + b"0" * 5000 + b"}", "not a valid"),
    (b"[" * 30_000 + b"]" * 30_000, "not a valid"),       # under the size cap: nesting past the recursion limit
    (b" " * (70 * 1024), "larger than"),
])
def test_hostile_config_files_are_config_errors_never_other_exceptions(tmp_path, raw, fragment):
    path = tmp_path / "operator.json"
    path.write_bytes(raw)
    with pytest.raises(OperatorConfigError, match=fragment):
        read_operator_config(path)
