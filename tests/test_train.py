import json
import random

import pytest
import torch

from embedding_sanitizer.encoders import clip_tokenizer, token_span
from embedding_sanitizer.corpus import make_pairs, misspell
from embedding_sanitizer.lexicon import Concept, builtin_concepts, load_concepts_file
from embedding_sanitizer.corpus import UNKNOWN
from embedding_sanitizer.model import EmbeddingSanitizer, SanitizerConfig
from embedding_sanitizer.train import Cache, TrainConfig, set_prompt_probe, summary_text, train_sanitizer, training_warnings

NUDITY, VIOLENCE = builtin_concepts()["nudity"], builtin_concepts()["violence"]
TINY = dict(steps=120, batch_size=32, pairs_per_concept=80, benign=160, weak_prompts=0, heldout_pairs_per_concept=30,
            heldout_benign=40, width=64, layers=1)


def test_heldout_terms_are_never_train_terms():
    for concept in builtin_concepts().values():
        assert not set(concept.heldout_terms) & set(concept.train_terms)
        assert len(concept.heldout_terms) >= 10 and len(concept.anchors) >= 10


@pytest.mark.parametrize("tokenizer", ["minilm", "clip"])
def test_pairs_have_equal_token_counts_and_a_located_term(tokenizer, minilm):
    ids = minilm.token_ids if tokenizer == "minilm" else (
        lambda text: clip_tokenizer()(text, add_special_tokens=False)["input_ids"])
    for concept in (NUDITY, VIOLENCE):
        pairs = make_pairs(concept, 200, seed=3, count_tokens=lambda t: len(ids(t)))
        assert len(pairs) == 200
        for ex in pairs:
            u, a = ids(ex.unsafe), ids(ex.anchor)
            assert len(u) == len(a), (ex.unsafe, ex.anchor)
            start, end = ex.term_span
            span = token_span(u, ids(ex.unsafe[:start]), ids(ex.unsafe[:end]))
            assert span and ex.unsafe[start:end].strip() == ex.unsafe[start:end] != ""
            outside = [i for i in range(len(u)) if i not in span]
            assert [u[i] for i in outside] == [a[i] for i in outside]


def test_misspellings_change_the_term():
    rng = random.Random(0)
    variants = {misspell("decapitated", rng) for _ in range(50)}
    assert len(variants) > 10 and "decapitated" not in variants


def test_user_concepts_from_json(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"concepts": [{"name": "clowns", "terms": ["clown", "jester"],
                                               "anchors": ["juggler"]}]}))
    [concept] = load_concepts_file(path)
    assert concept.name == "clowns" and concept.train_terms == ("clown", "jester")
    path.write_text(json.dumps({"concepts": [{"name": "clowns", "terms": ["clown"]}]}))
    with pytest.raises(ValueError, match="lacks 'anchors'"):
        load_concepts_file(path)
    with pytest.raises(ValueError, match="no anchors"):
        Concept("x", ("a",), ())


def run(encoder, seed, concepts=(NUDITY, VIOLENCE)):
    return train_sanitizer(encoder, list(concepts), TrainConfig(seed=seed, device="cpu", **TINY))


def test_training_is_deterministic_learns_and_reports(minilm):
    calls, stages = [], []
    model_a, summary = train_sanitizer(minilm, [NUDITY, VIOLENCE], TrainConfig(seed=5, device="cpu", **TINY),
                                       progress=lambda step, total, losses: calls.append((step, total)),
                                       on_stage=lambda stage, prompts: stages.append((stage, prompts)))
    model_b, _ = run(minilm, 5)
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k
    assert calls[-1] == (120, 120)
    data = summary["data"]      # what a host's progress bar is told is what gets encoded
    assert stages == [("training", data["encoded_prompts"]),
                      ("held-out", data["heldout_unsafe"] + data["heldout_benign"])]
    assert summary["data"]["unsafe_pairs"] > 100 and summary["steps"] == 120
    assert set(summary["final_losses"]) == {"erase", "preserve", "score"}
    assert summary["heldout"]["auroc"] > 0.8      # even 120 steps separate held-out terms
    assert set(summary["heldout"]["unsafe_touched_share_by_concept"]) == {"nudity", "violence"}
    assert "AUROC" in summary_text(summary) and summary_text(summary).count("\n") >= 2
    batch = minilm.encode(["a naked woman on a beach", "a woman on a beach"])
    scores = model_a.sanitize(batch.embedding, attention_mask=batch.attention_mask).scores
    assert scores[0].max() > scores[1].max()
    # The prompt-level prior reads in benign spreads: the nude prompt leans towards nudity, the
    # plain one sits within a spread of the benign centre.
    lean = model_a.prior(batch.embedding, batch.attention_mask)[:, 0]
    assert model_a.config.prompt_prior == 1.0 and lean[0] > lean[1] + 1 and abs(lean[1]) < 1.5
    # The probe, fitted after training, is a logit: the nude prompt's far above the plain one's.
    probe = model_a.probe(batch.embedding, batch.attention_mask)[:, 0]
    assert model_a.config.prompt_probe == 0.25 and probe[0] > probe[1] + 4 and probe[1] < -2


def cache_along(direction: torch.Tensor, n: int, seed: int) -> Cache:
    """n two-token prompts whose sentence vectors scatter around `direction`."""
    g = torch.Generator().manual_seed(seed)
    embedding = direction + 0.3 * torch.randn(n, 2, direction.numel(), generator=g)
    valid = torch.ones(n, 2, dtype=torch.bool)
    return Cache(embedding.half(), None, valid, valid, torch.zeros(n, 2, dtype=torch.long))


def test_the_probe_learns_from_real_prompts_where_a_concept_has_them():
    # Nudity has real labelled prompts along one feature and synthetic ones along another;
    # violence has synthetic ones only. Each probe must follow its concept's best source.
    dim = 8
    axis = torch.eye(dim)
    model = EmbeddingSanitizer(SanitizerConfig(embed_dim=dim, width=16, prompt_probe=0.5))
    benign = cache_along(axis[0], 300, 0)
    unsafe = cache_along(axis[0] + axis[1], 100, 1)
    unsafe_violence = cache_along(axis[0] + axis[2], 100, 2)
    both = Cache(*(torch.cat([a, b]) if a is not None else None for a, b in zip(vars(unsafe).values(),
                                                                                 vars(unsafe_violence).values())))
    real = Cache(*(torch.cat([a, b]) if a is not None else None for a, b in
                   zip(vars(cache_along(axis[0] + axis[3], 40, 3)).values(), vars(cache_along(axis[0], 40, 4)).values())))
    labels = torch.tensor([[1.0, UNKNOWN]] * 40 + [[0.0, UNKNOWN]] * 40)
    set_prompt_probe(model, both, [0] * 100 + [1] * 100, benign, real, labels)
    lean = lambda cache: model.probe(cache.embedding.float(), cache.attention)   # noqa: E731
    nudity_real, nudity_synthetic = lean(cache_along(axis[0] + axis[3], 50, 5))[:, 0], lean(cache_along(axis[0] + axis[1], 50, 6))[:, 0]
    assert (nudity_real > 0).float().mean() > 0.9 and nudity_real.mean() > nudity_synthetic.mean() + 2
    violence, plain = lean(cache_along(axis[0] + axis[2], 50, 7))[:, 1], lean(cache_along(axis[0], 50, 8))[:, 1]
    assert (violence > 0).float().mean() > 0.9 and (plain < 0).float().mean() > 0.9


def test_progress_callback_can_stop_training(minilm):
    class Stop(Exception):
        pass

    def stop_at_ten(step, total, losses):
        if step == 10:
            raise Stop

    with pytest.raises(Stop):
        train_sanitizer(minilm, [NUDITY], TrainConfig(device="cpu", **TINY), progress=stop_at_ten)


def test_sdxl_training_learns_the_pooled_head():
    from embedding_sanitizer.encoders import random_clip_encoder

    encoder = random_clip_encoder("sdxl-clip-lg", layers=1, seed=0, device="cpu")
    # The whole corpus path on a CLIP family: pairs, benign and weak (real, prompt-level) prompts.
    small = dict(TINY, steps=30, pairs_per_concept=40, benign=60, weak_prompts=40, heldout_pairs_per_concept=10,
                 heldout_benign=10)
    model, summary = train_sanitizer(encoder, [NUDITY], TrainConfig(device="cpu", **small))
    assert model.config.encoder_family == "sdxl-clip-lg" and model.config.chunk_length == 77
    assert model.config.pooled_dim == 1280 and {"pooled", "weak"} <= set(summary["final_losses"])
    assert summary["data"]["weak"] == 40
    assert model.pooled_head.weight.abs().sum() > 0          # moved away from its zero start


@pytest.mark.parametrize("entry, fragment", [
    ({"name": "clowns", "terms": "clown", "anchors": ["juggler"]}, "terms must be a list of strings"),
    ({"name": "clowns", "terms": ["clown", 3], "anchors": ["juggler"]}, "terms must be a list of strings"),
    ({"name": "clowns", "terms": ["clown"], "anchors": None}, "anchors must be a list of strings"),
    ({"name": "clowns", "terms": ["clown"], "anchors": ["juggler"], "heldout_terms": None}, "heldout_terms must"),
    ({"name": 7, "terms": ["clown"], "anchors": ["juggler"]}, "name must be a string"),
    ({"name": None, "terms": ["clown"], "anchors": ["juggler"]}, "name must be a string"),
    ({"name": "c" * 100, "terms": ["clown"], "anchors": ["juggler"]}, "longer than 64 characters"),
    ("clowns", "is not an object"),
])
def test_a_concepts_file_of_the_wrong_shape_is_refused_in_one_line(tmp_path, entry, fragment):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"concepts": [entry]}))
    with pytest.raises(ValueError, match=fragment) as caught:
        load_concepts_file(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_key_given_twice_in_a_concepts_file_is_refused(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text('{"concepts": [{"name": "clowns", "terms": ["clown"], "anchors": ["juggler"], '
                    '"terms": ["mime"]}]}')
    with pytest.raises(ValueError, match="'terms' is given twice"):
        load_concepts_file(path)


@pytest.mark.parametrize("concepts, settings, fragment", [
    ([NUDITY, NUDITY], {}, "'nudity' is given twice"),
    ([], {}, "0 concepts"),
    ([NUDITY], {"steps": 0}, "steps must be a whole number of at least 1"),
    ([NUDITY], {"pairs_per_concept": 0}, "pairs_per_concept must be"),
    ([NUDITY], {"benign": -5}, "benign must be"),
    ([NUDITY], {"weak_prompts": -1}, "weak_prompts must be a whole number of at least 0"),
    ([NUDITY], {"width": 66, "heads": 4}, "multiple of heads"),
])
def test_training_refuses_what_it_would_fail_on_before_encoding_anything(concepts, settings, fragment):
    class NeverEncodes:
        def __getattr__(self, name):
            raise AssertionError(f"the encoder was used ({name}) before the settings were checked")

    with pytest.raises(ValueError, match=fragment):
        train_sanitizer(NeverEncodes(), concepts, TrainConfig(device="cpu", **{**TINY, **settings}))


def test_one_recipe_scaled_by_one_function():
    concepts = [NUDITY, VIOLENCE]
    recipe = TrainConfig()
    assert recipe.scaled(recipe.pairs_per_concept, concepts) == recipe      # the CLI's and the node's default
    trial = recipe.scaled(recipe.pairs_per_concept // 10, concepts)
    assert (trial.benign, trial.heldout_pairs_per_concept, trial.heldout_benign) == (800, 30, 100)
    assert trial.steps == recipe.steps and trial.weak_prompts < recipe.weak_prompts


HELDOUT = dict(auroc=0.95, tpr_at_1pct_fpr=0.7, threshold=0.5, unsafe_touched_share=0.75, benign_touched_share=0.01,
               benign_prompts=1000, benign_cosine_mean=0.999, unsafe_touched_share_by_concept={"nudity": 0.8, "gore": 0.7})


@pytest.mark.parametrize("change, warned", [
    ({}, None),
    ({"auroc": 0.55}, "close to chance"),
    ({"unsafe_touched_share_by_concept": {"nudity": 0.8, "gore": 0.1}}, "'gore' prompts were changed"),
    ({"benign_touched_share": 0.05}, "benign prompts were changed"),
])
def test_summary_says_in_sentences_what_to_do_when_figures_are_poor(change, warned):
    heldout = dict(HELDOUT, **change)
    warnings = training_warnings(heldout)
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0]
        assert "train longer" in warnings[0]
    summary = {"encoder": "random sd1-clip-l", "concepts": {"nudity": {}, "gore": {}}, "steps": 10, "train_seconds": 1.0,
               "device": "cpu", "config": {"seed": 3}, "heldout": heldout, "warnings": warnings}
    text = summary_text(summary)
    assert "nudity, gore" in text and "gore " in text.split("\n")[2]      # each concept's changed share
    assert text.endswith(warnings[-1]) if warnings else "Warning" not in text


def test_no_heldout_terms_is_said_not_hidden():
    assert "no held-out figures" in training_warnings({})[0]
