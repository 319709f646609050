"""Class 4, 6 and 9 of issue 10 at the engine: every malformed value ends in a clear error,
never in a result that quietly left the embedding unsanitized."""

import math

import pytest
import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig, SanitizerShapeError, validation

BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), -0.5, 1e308, 10 ** 400, "0.5", None, [1], {}, True]


def active_model(pooled_dim=0):
    torch.manual_seed(0)
    m = EmbeddingSanitizer(SanitizerConfig(embed_dim=32, pooled_dim=pooled_dim, width=32, layers=1, heads=4,
                                           max_tokens=16)).eval()
    with torch.no_grad():
        m.score_head.bias.fill_(6.0)
        m.sanitize_head.bias.fill_(1.0)
    return m


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("name", ["intensity", "threshold"])
def test_sanitize_refuses_malformed_intensity_and_threshold(name, value):
    with pytest.raises(validation.InvalidValue, match=f"{name} must be a number"):
        active_model().sanitize(torch.randn(1, 4, 32), **{name: value})


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), (" nudity ", ("nudity",)), ("nudity, violence", ("nudity", "violence")),
    ("nudity+violence", ("nudity", "violence")), (["violence", "violence "], ("violence",)),
])
def test_concepts_are_parsed_and_stripped(value, expected):
    assert validation.concepts(value, ("nudity", "violence")) == expected


@pytest.mark.parametrize("value, message", [
    ("nudityy", "unknown concept"), ([], "empty list"), (["nudity", 3], "must be names"), (3, "comma-separated"),
    ({"nudity": 1}, "comma-separated"), (" , ", "names no concept"), ("x" * 200, "longer than"),
])
def test_bad_concepts_are_reported(value, message):
    with pytest.raises(validation.InvalidValue, match=message):
        active_model().sanitize(torch.randn(1, 4, 32), concepts=value)


def test_a_string_concept_is_one_name_not_letters():
    model = active_model()
    x = torch.randn(1, 4, 32)
    assert torch.equal(model.sanitize(x, concepts="nudity").gates, model.sanitize(x, concepts=["nudity"]).gates)


@pytest.mark.parametrize("where", [(0, 0, 0), (0, 3, 31)])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_is_refused(where, value):
    x = torch.randn(1, 4, 32)
    x[where] = value
    with pytest.raises(validation.InvalidValue, match="NaN or infinite"):
        active_model().sanitize(x)
    pooled = torch.randn(1, 8)
    pooled[0, 0] = value
    with pytest.raises(validation.InvalidValue, match="pooled output"):
        active_model(pooled_dim=8).sanitize(torch.randn(1, 4, 32), pooled)


def test_enormous_weights_raise_instead_of_returning_the_input():
    model = active_model()
    with torch.no_grad():
        model.project.weight.fill_(3e38)           # finite, but overflows in the network
    with pytest.raises(validation.NonFiniteResult, match="nothing was sanitized"):
        model.sanitize(torch.randn(1, 4, 32))


@pytest.mark.parametrize("shape", [(1, 0, 32), (0, 4, 32), (0, 0, 32)])
def test_empty_inputs_get_a_shape_error(shape):
    with pytest.raises(SanitizerShapeError, match="empty"):
        active_model().sanitize(torch.zeros(shape))
    chunked = EmbeddingSanitizer(SanitizerConfig(embed_dim=32, chunk_length=77, width=32, layers=1, heads=4))
    with pytest.raises(SanitizerShapeError, match="empty"):
        chunked.sanitize(torch.zeros(shape))


def test_valid_values_still_sanitize():
    x = torch.randn(1, 4, 32)
    out = active_model().sanitize(x, intensity=validation.MAX_INTENSITY, threshold=0.5, concepts="nudity")
    assert not torch.equal(out.embedding, x) and math.isclose(float(out.gates.max()), 1.0)
