import math

import pytest
import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig, SanitizerShapeError
from embedding_sanitizer import model as model_module


def make(**kw):
    torch.manual_seed(0)
    cfg = dict(embed_dim=32, concepts=("nudity", "violence"), width=32, layers=1, heads=4, max_tokens=16)
    cfg.update(kw)
    return EmbeddingSanitizer(SanitizerConfig(**cfg)).eval()


def fix_scores(model, *probabilities):
    """Make the score head output constant per-concept probabilities."""
    with torch.no_grad():
        model.score_head.weight.zero_()
        model.score_head.bias.copy_(torch.tensor([math.log(p / (1 - p)) for p in probabilities]))


def fix_delta(model, value=1.0):
    with torch.no_grad():
        model.sanitize_head.bias.fill_(value)


def test_untrained_sanitizer_is_identity_and_gates_nothing():
    model = make()
    e = torch.randn(2, 10, 32)
    out = model.sanitize(e)
    assert torch.equal(out.embedding, e)
    assert out.gates.max() < 0.01          # the low initial score bias


def test_intensity_zero_returns_inputs_bit_for_bit():
    model = make(pooled_dim=8)
    fix_scores(model, 0.9, 0.9)
    fix_delta(model)
    e = torch.randn(2, 10, 32)
    e[0, 0, 0] = -0.0
    p = torch.randn(2, 8)
    out = model.sanitize(e, p, intensity=0.0)
    assert torch.equal(out.embedding.view(torch.int32), e.view(torch.int32))
    assert torch.equal(out.pooled.view(torch.int32), p.view(torch.int32))
    assert out.embedding is not e and out.pooled is not p
    assert out.scores.shape == (2, 10, 2) and out.scores.min() > 0.89   # scores still reported


def test_gate_is_clamped_intensity_times_score_and_output_adds_gated_delta():
    model = make()
    fix_scores(model, 0.4, 0.1)
    fix_delta(model, 2.0)
    e = torch.randn(1, 5, 32)
    for intensity, gate in ((1.0, 0.4), (2.0, 0.8), (3.0, 1.0), (0.5, 0.2)):
        out = model.sanitize(e, intensity=intensity)
        assert torch.allclose(out.gates, torch.full((1, 5), gate), atol=1e-5)
        assert torch.allclose(out.embedding, e + gate * 2.0, atol=1e-5)


def test_threshold_and_concept_selection():
    model = make()
    fix_scores(model, 0.4, 0.1)
    fix_delta(model)
    e = torch.randn(1, 5, 32)
    assert model.sanitize(e, threshold=0.5).gates.max() == 0
    assert torch.allclose(model.sanitize(e, threshold=0.3).gates, torch.full((1, 5), 0.4), atol=1e-5)
    assert torch.allclose(model.sanitize(e, concepts=["violence"]).gates, torch.full((1, 5), 0.1), atol=1e-5)
    with pytest.raises(ValueError, match="unknown concept"):
        model.sanitize(e, concepts=["clowns"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_shape_kept_and_input_not_modified(dtype):
    model = make(pooled_dim=8)
    fix_scores(model, 0.7, 0.2)
    fix_delta(model, 0.5)
    with torch.no_grad():
        model.pooled_head.bias.fill_(1.0)
    e, p = torch.randn(3, 7, 32, dtype=dtype), torch.randn(3, 8, dtype=dtype)
    e_before, p_before, versions = e.clone(), p.clone(), (e._version, p._version)
    out = model.sanitize(e, p)
    assert out.embedding.dtype == dtype and out.embedding.shape == e.shape
    assert out.pooled.dtype == dtype and out.pooled.shape == p.shape
    assert torch.equal(e, e_before) and torch.equal(p, p_before) and versions == (e._version, p._version)
    assert not torch.equal(out.embedding, e)
    # p' = p + max_t(g_t) * Delta_p
    assert torch.allclose(out.pooled.double(), p.double() + 0.7, atol=2e-2)


def test_chunks_are_processed_independently(monkeypatch):
    monkeypatch.setattr(model_module, "GATE_SPREAD", 0.0)     # the spread reads the whole prompt, by design
    model = make(chunk_length=8)
    with torch.no_grad():
        model.sanitize_head.weight.normal_()
        model.score_head.weight.normal_()
    a, b = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    both = model.sanitize(torch.cat([a, b], dim=1))
    alone = model.sanitize(b)
    assert torch.allclose(both.embedding[:, 8:], alone.embedding, atol=1e-5)
    assert torch.allclose(both.scores[:, 8:], alone.scores, atol=1e-5)


def test_whole_sequences_longer_than_the_position_table_are_read_in_windows(monkeypatch):
    # T5 / LLM rows have no fixed length; a sanitizer with 16 positions reads 40 rows as 16 + 16 + 8.
    monkeypatch.setattr(model_module, "GATE_SPREAD", 0.0)
    model = make(pooled_dim=8)
    with torch.no_grad():
        model.sanitize_head.weight.normal_()
        model.score_head.weight.normal_()
        model.pooled_head.weight.normal_()
    e, p = torch.randn(2, 40, 32), torch.randn(2, 8)
    whole = model.sanitize(e, p)
    assert whole.embedding.shape == e.shape and whole.scores.shape == (2, 40, 2)
    for start in (0, 16, 32):
        window = model.sanitize(e[:, start:start + 16])
        assert torch.allclose(whole.scores[:, start:start + 16], window.scores, atol=1e-5)
        assert torch.allclose(whole.embedding[:, start:start + 16], window.embedding, atol=1e-5)
    assert torch.isfinite(whole.pooled).all() and not torch.equal(whole.pooled, p)
    # The padded tail of the last window is masked: 40 rows give what the same 40 rows plus masked rows give.
    longer = torch.cat([e, torch.randn(2, 5, 32)], dim=1)
    mask = torch.tensor([[True] * 40 + [False] * 5] * 2)
    masked = model.sanitize(longer, p, attention_mask=mask)
    assert torch.allclose(masked.embedding[:, :40], whole.embedding, atol=1e-5)
    assert torch.allclose(masked.pooled, whole.pooled, atol=1e-5)


def test_a_changed_prompt_changes_throughout_and_an_unchanged_one_not_at_all():
    model = make()
    fix_delta(model)
    with torch.no_grad():
        model.score_head.weight.zero_()
    e = torch.randn(2, 6, 32)
    # Prompt 0: one token over the threshold; prompt 1: none. Position 5 of prompt 0 is padding.
    logits = torch.full((2, 6, 2), -4.0)
    logits[0, 2, 0] = 4.0
    with torch.no_grad():
        scores = torch.sigmoid(logits)
    mask = torch.tensor([[True] * 5 + [False], [True] * 6])
    gates = model.spread_gates(model.gates_from_scores(scores, torch.ones(2, dtype=torch.bool), 1.0, 0.5, mask), mask)
    top = float(scores[0, 2, 0])
    assert gates[0, 2] == pytest.approx(top)
    assert torch.allclose(gates[0, [0, 1, 3, 4]], torch.full((4,), model_module.GATE_SPREAD * top))
    assert gates[0, 5] == 0 and gates[1].max() == 0
    assert model_module.GATE_SPREAD < 0.5       # the report's "erased" (gate >= 0.5) names the flagged word only


def test_padding_is_masked_and_left_unchanged():
    model = make()
    with torch.no_grad():
        model.sanitize_head.weight.normal_()
        model.score_head.bias.fill_(0.0)
    e = torch.randn(1, 6, 32)
    padded = torch.cat([e, torch.randn(1, 4, 32)], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    short, long = model.sanitize(e), model.sanitize(padded, attention_mask=mask)
    assert torch.allclose(long.embedding[:, :6], short.embedding, atol=1e-5)
    assert torch.equal(long.embedding[:, 6:], padded[:, 6:])
    assert long.gates[:, 6:].max() == 0


def test_shape_errors_name_expected_and_received():
    model = make(chunk_length=8, pooled_dim=8)
    with pytest.raises(SanitizerShapeError, match=r"\(2, 8, 16\).*\(batch, tokens, 32\)"):
        model.sanitize(torch.randn(2, 8, 16))
    with pytest.raises(SanitizerShapeError, match="12 tokens, expected a multiple of 8"):
        model.sanitize(torch.randn(1, 12, 32))
    with pytest.raises(SanitizerShapeError, match=r"pooled shape \(1, 4\).*\(1, 8\)"):
        model.sanitize(torch.randn(1, 8, 32), torch.randn(1, 4))


def test_pooled_passes_through_when_the_sanitizer_has_no_pooled_head():
    model = make()
    fix_scores(model, 0.9, 0.9)
    p = torch.randn(1, 5)
    out = model.sanitize(torch.randn(1, 4, 32), p)
    assert torch.equal(out.pooled, p) and out.pooled is not p
    assert model.sanitize(torch.randn(1, 4, 32)).pooled is None


def test_the_prompt_prior_shifts_every_token_of_a_leaning_prompt_and_only_by_its_lean():
    model = make(prompt_prior=2.0)
    fix_scores(model, 0.1, 0.1)
    direction = torch.zeros(32)
    direction[0] = 1.0
    with torch.no_grad():
        model.prior_direction[0] = direction             # nudity leans along feature 0
        model.prior_spread.fill_(0.25)
    leaning = torch.randn(1, 6, 32) * 0.1 + direction * 3
    plain = torch.randn(1, 6, 32) * 0.1
    plain[..., 0] = 0.0
    logit = lambda s: torch.log(s / (1 - s))      # noqa: E731
    lean = model.prior(leaning, torch.ones(1, 6, dtype=torch.bool))[0]
    scores = model.sanitize(leaning).scores[0]
    # Every token of the leaning prompt moves by prompt_prior * lean; violence and the plain prompt do not.
    assert lean[0] > 3.5 and lean[1] == 0
    assert torch.allclose(logit(scores[:, 0]), torch.full((6,), math.log(1 / 9)) + 2.0 * lean[0], atol=1e-4)
    assert torch.allclose(scores[:, 1], torch.full((6,), 0.1), atol=1e-6)
    assert torch.allclose(model.sanitize(plain).scores, torch.full((1, 6, 2), 0.1), atol=1e-6)
    # Padding does not count towards the prompt's lean.
    padded = torch.cat([leaning, plain], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 6])
    assert torch.allclose(model.prior(padded, mask)[0], lean, atol=1e-5)


def test_the_probe_adds_its_weighted_logit_to_every_token_beside_the_prior():
    model = make(prompt_prior=1.0, prompt_probe=0.5)
    fix_scores(model, 0.1, 0.1)
    e = torch.randn(1, 6, 32)
    valid = torch.ones(1, 6, dtype=torch.bool)
    logit = lambda s: torch.log(s / (1 - s))      # noqa: E731
    before = logit(model.sanitize(e).scores[0])
    with torch.no_grad():
        model.probe_direction[1, 3] = 4.0             # violence reads feature 3
        model.probe_offset[1] = -2.0
    probe = model.probe(e, valid)[0]
    assert probe[0] == 0 and probe[1] != 0
    after = logit(model.sanitize(e).scores[0])
    assert torch.allclose(after[:, 0], before[:, 0], atol=1e-5)
    assert torch.allclose(after[:, 1], before[:, 1] + 0.5 * probe[1], atol=1e-4)


def test_without_a_prompt_prior_or_probe_there_is_nothing_to_set():
    assert not hasattr(make(), "prior_direction") and not hasattr(make(), "probe_direction")
    assert {"prior_direction", "prior_centre", "prior_spread"} <= set(make(prompt_prior=1.0).state_dict())
    assert set(make(prompt_probe=0.5).state_dict()) - set(make().state_dict()) == {"probe_direction", "probe_offset"}
