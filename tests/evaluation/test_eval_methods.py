import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig
from embedding_sanitizer.evaluation.methods import (KeywordFilter, NoDefence, SafreeProjection, SanitizerMethod,
                                          compare, orthonormal_basis, project_out)


def test_keyword_filter_replaces_listed_words_and_misses_misspellings():
    kf = KeywordFilter(["nude", "bare breasts", "gore"])
    assert kf.filter("a Nude woman on a beach") == ("a woman on a beach", True)
    assert kf.filter("bare   breasts, oil painting") == (", oil painting", True)
    assert kf.filter("a nudist camp")[1] is False          # whole words only
    for evasion in ("a nud3 woman", "a n u d e woman", "a nuude woman", "g0re everywhere"):
        assert kf.filter(evasion) == (evasion, False)
    assert kf.filter("a cat")[1] is False


def test_keyword_filter_scores_and_changes_only_matches(cache):
    kf = KeywordFilter(["nude"])
    s = kf.run(cache, ["a nude girl", "a red car"])
    assert s.score.tolist() == [1.0, 0.0]
    assert s.unchanged.tolist() == [False, True]
    assert s.cosine[1] == 1.0 and s.cosine[0] < 0.999


def test_projection_removes_the_subspace_component():
    g = torch.Generator().manual_seed(1)
    concepts = torch.randn(3, 20, generator=g)
    basis = orthonormal_basis(concepts)
    assert basis.shape == (20, 3)
    x = torch.randn(5, 20, generator=g)
    y = project_out(x, basis)
    assert torch.allclose(y @ concepts.T, torch.zeros(5, 3), atol=1e-4)
    assert torch.allclose(project_out(y, basis), y, atol=1e-5)     # idempotent
    # rank-deficient inputs keep their rank only
    assert orthonormal_basis(torch.cat([concepts, concepts[:1] * 2])).shape[1] == 3


def test_safree_triggers_the_toxic_word_and_projects_it(toy, cache):
    safree = SafreeProjection(toy, ["nudity"], alpha=0.01, phrases={"nudity": ["nude", "naked body"]})
    text = "a photo of a nude girl at the beach"
    s = safree.run(cache, [text, "a photo of a girl at the beach"])
    trig = safree.triggers(text, 0.01)
    assert trig[text.split().index("nude")] is True
    assert sum(trig) <= 3
    assert s.touched[0] and s.score[0] > s.score[1]
    # the projected token loses most of its toxic-subspace component (SAFREE projects onto the
    # complement, then back into the prompt's own token span, which brings a little back)
    item = cache.get([text])[0]
    new, hit = safree.project_item(item, text, 0.01)
    pos = 1 + text.split().index("nude")
    assert hit
    before = (item.embedding[pos] @ safree.basis).norm()
    after = (new.embedding[pos] @ safree.basis).norm()
    assert after < 0.5 * before, (before, after)
    # untriggered tokens are left as they were
    assert torch.equal(new.embedding[1], item.embedding[1])
    # a huge alpha triggers nothing: output unchanged
    assert safree.run(cache, [text], 10.0).unchanged.tolist() == [True]


def test_no_defence_is_identity(cache):
    s = NoDefence().run(cache, ["a cat", "two dogs in the snow"])
    assert s.unchanged.all() and torch.allclose(s.cosine, torch.ones(2))
    assert s.score is None


def _model(dim=32, trained_like=False):
    m = EmbeddingSanitizer(SanitizerConfig(embed_dim=dim, max_tokens=64, encoder_family="toy"))
    if trained_like:
        torch.manual_seed(0)
        with torch.no_grad():
            m.sanitize_head.weight.normal_(0, 0.2)
            m.score_head.bias.fill_(2.0)
    return m.eval()


def test_sanitizer_method_intensity_zero_is_identity_and_scores_are_kept(cache):
    meth = SanitizerMethod(_model(trained_like=True))
    texts = ["a nude girl", "a red car on a long road"]
    s0 = meth.run(cache, texts, 0.0)
    assert s0.unchanged.all() and not s0.touched.any()
    s1 = meth.run(cache, texts, 1.0)
    assert not s1.unchanged.any() and s1.touched.all()
    assert torch.allclose(s0.score, s1.score)          # scores do not depend on intensity
    s2 = meth.run(cache, texts, 2.0)
    assert (s2.cosine <= s1.cosine + 1e-6).all()        # stronger intensity moves further


def test_compare_pads_different_lengths():
    from embedding_sanitizer.evaluation.methods import Item
    a = Item(torch.ones(3, 4), None, torch.tensor([False, True, False]), torch.ones(3, dtype=torch.bool))
    b = Item(torch.ones(2, 4), None, torch.tensor([False, False]), torch.ones(2, dtype=torch.bool))
    cos, same = compare([a, a], [b, a])
    assert cos[0] < 0.99 and not same[0]
    assert abs(float(cos[1]) - 1.0) < 1e-6 and same[1]
