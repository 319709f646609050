"""Issue 10, classes 1, 2 and 6: malformed requests and options, driven through a runner
that swallows hook exceptions as the webui's ScriptRunner does, then a sampler that reads
the positive conditioning. Under enforcement every case must end refused or sanitized,
never unsanitized; without it, a bad value falls back to its default with a visible note."""

import math

import pytest
import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig, save_sanitizer
from embedding_sanitizer.hosts import a1111 as W

from .test_script_with_stub_webui import FakeP

# string, None, list, dict, NaN, +/-inf, huge, negative
BAD_VALUES = ["abc", None, [1], {}, float("nan"), math.inf, -math.inf, 1e308, 10 ** 400, -5]
ARGS = {"enabled": 0, "intensity": 1}
OPTIONS = [W.OPT_ENABLED, W.OPT_INTENSITY, W.OPT_THRESHOLD, W.OPT_CONCEPTS, W.OPT_WEIGHTS, W.OPT_ENFORCE,
           W.OPT_ENFORCE_INTENSITY]
RESTRICTED = {W.OPT_ENFORCE, W.OPT_ENFORCE_INTENSITY}      # restrict_api: override_settings cannot set them


def swallow(hook, *args, **kwargs):
    try:
        hook(*args, **kwargs)
    except Exception as exc:        # modules/scripts.py ScriptRunner: errors.report(...), then go on
        return exc


def generate(host, p, args=(True, 1.0), sampling_hook=True, monkeypatch=None):
    """One generation as the webui runs it; returns 'refused', 'sanitized' or 'unsanitized'."""
    for key, value in p.override_settings.items():       # processing.process_images: opts.set(is_api=True)
        if key not in RESTRICTED:
            setattr(host.opts, key, value)
    if not sampling_hook:
        monkeypatch.setattr(host.mod, "HAS_SAMPLING_HOOK", False)
        p.setup_conds = lambda: None
    script = host.mod.EmbeddingSanitizerScript()
    swallow(script.process, p, *args)
    swallow(script.process_batch, p, *args, batch_number=0, prompts=p.prompts, seeds=[1], subseeds=[1])
    if sampling_hook:
        for _ in range(2):                                # first pass, hires pass
            swallow(script.process_before_every_sampling, p, *args, x=None, noise=None, c=p.c, uc=p.uc)
    try:                                                  # the sampler reads the conds
        conds = [e.cond for composables in p.c.batch for comp in composables for e in comp.schedules]
    except W.RefusedGeneration:
        return "refused"
    originals = (p.a, p.b)
    if any(c is o or torch.equal(c, o) for c in conds for o in originals):
        return "unsanitized"
    assert p.uc[0][0].cond is p.neg
    return "sanitized"


def enforce(host, monkeypatch, **startup):
    startup = {W.OPT_ENFORCE: True, W.OPT_WEIGHTS: "sd1.safetensors", **startup}
    monkeypatch.setattr(host.mod, "OPERATOR", W.operator_settings(startup))
    for key, value in startup.items():
        setattr(host.opts, key, value)


def reset(host):
    for key, info in host.opts.infos.items():
        setattr(host.opts, key, info.default)


def unsanitized_cases(host, monkeypatch, cases):
    """Run every (label, args, override_settings, saved options) case on both hook paths under
    enforcement; return the labels of those that produced an unsanitized image."""
    failures = []
    for label, args, overrides, saved in cases:
        for sampling_hook in (True, False):
            reset(host)
            enforce(host, monkeypatch)
            monkeypatch.setattr(host.mod, "HAS_SAMPLING_HOOK", sampling_hook)
            for key, value in saved.items():
                setattr(host.opts, key, value)
            p = FakeP("a cat")
            p.override_settings = dict(overrides)
            if generate(host, p, args, sampling_hook, monkeypatch) not in ("refused", "sanitized"):
                failures.append((label, "1.9+" if sampling_hook else "1.6-1.8"))
    return failures


@pytest.mark.parametrize("arg", ARGS)
def test_enforced_bad_script_args_never_give_an_unsanitized_image(host, monkeypatch, arg):
    cases = []
    for value in BAD_VALUES:
        args = [True, 1.0]
        args[ARGS[arg]] = value
        cases.append((repr(value), args, {}, {}))
    assert unsanitized_cases(host, monkeypatch, cases) == []


@pytest.mark.parametrize("key", OPTIONS)
def test_enforced_bad_options_never_give_an_unsanitized_image(host, monkeypatch, key):
    # override_settings of a request, and the same value saved by POST /sdapi/v1/options
    # (Forge ignores restrict_api) or a hand-edited config.json
    cases = [(f"override {value!r}", (False, 0.0), {key: value}, {}) for value in BAD_VALUES]
    cases += [(f"saved {value!r}", (False, 0.0), {}, {key: value}) for value in BAD_VALUES]
    assert unsanitized_cases(host, monkeypatch, cases) == []


def test_enforced_bad_values_are_refused_with_a_reason(host, monkeypatch):
    enforce(host, monkeypatch)
    p = FakeP("a cat")
    assert generate(host, p, (True, "abc")) == "refused"
    with pytest.raises(W.RefusedGeneration, match="intensity must be a number.*enforcement is on"):
        list(p.c.batch)


def test_enforced_run_survives_an_unreadable_options_object(host, monkeypatch):
    enforce(host, monkeypatch)

    def broken(key):
        raise RuntimeError("settings file damaged")
    monkeypatch.setattr(host.mod, "opt", broken)
    assert generate(host, FakeP("a cat")) in ("refused", "sanitized")


def weak_sanitizer(path):
    """A valid SD 1.x file that changes nothing (an untrained one)."""
    save_sanitizer(EmbeddingSanitizer(SanitizerConfig(embed_dim=768, chunk_length=77, width=32, heads=2, layers=1,
                                                      encoder_family="sd1-clip-l")), path, {"note": "weak"})


@pytest.mark.parametrize("how", ["override_settings", "saved option"])
def test_enforced_weights_concepts_and_floor_are_pinned(host, monkeypatch, how):
    weak_sanitizer(host.dir / "aaa-weak.safetensors")
    enforce(host, monkeypatch, **{W.OPT_ENFORCE_INTENSITY: 2.0})
    p = FakeP("a cat")
    changes = {W.OPT_WEIGHTS: "aaa-weak.safetensors", W.OPT_CONCEPTS: "violence", W.OPT_THRESHOLD: 0.99,
               W.OPT_ENFORCE_INTENSITY: 0.05, W.OPT_INTENSITY: 0.1}
    if how == "override_settings":
        p.override_settings = changes
    else:
        for key, value in changes.items():
            setattr(host.opts, key, value)
    assert generate(host, p, (False, 0.1)) == "sanitized"
    info = W.parse_infotext(p.extra_generation_params[W.INFOTEXT_KEY])
    assert info == {"weights": "sd1.safetensors", "intensity": 2.0, "threshold": W.DEFAULT_THRESHOLD, "concepts": None,
                    "erased_tokens": 154, "enforced": True}


def test_enforced_with_the_operators_concepts_and_a_stronger_request(host, monkeypatch):
    enforce(host, monkeypatch, **{W.OPT_CONCEPTS: "nudity"})
    p = FakeP("a cat")
    assert generate(host, p, (False, 3.0)) == "sanitized"
    info = W.parse_infotext(p.extra_generation_params[W.INFOTEXT_KEY])
    assert info["concepts"] == ("nudity",) and info["intensity"] == 3.0 and info["enforced"]


@pytest.mark.parametrize("concepts", ["nudityy", ["nudity", 3], 7])
def test_enforced_with_unusable_operator_concepts_refuses(host, monkeypatch, concepts):
    enforce(host, monkeypatch, **{W.OPT_CONCEPTS: concepts})
    assert generate(host, FakeP("a cat")) == "refused"


# ----------------------------------------------------------------------------- not enforced

@pytest.mark.parametrize("key, valid", [(W.OPT_INTENSITY, ()), (W.OPT_THRESHOLD, ()), (W.OPT_CONCEPTS, ("", None)),
                                        (W.OPT_WEIGHTS, ("",))])
def test_bad_values_without_enforcement_fall_back_to_defaults_with_a_note(host, key, valid):
    for value in BAD_VALUES:
        reset(host)
        p = FakeP("a cat")
        p.override_settings = {key: value}
        outcome = generate(host, p)
        noted = any("instead" in c for c in p.comments)
        if key == W.OPT_WEIGHTS and value == "abc":     # a valid name of a missing file: skipped, and said
            assert outcome == "unsanitized" and any("NOT sanitized" in c for c in p.comments)
            continue
        assert (outcome, value) == ("sanitized", value)
        assert noted != (value in valid), value


@pytest.mark.parametrize("args", [(True, value) for value in BAD_VALUES if value is not None]
                         + [(value, 1.0) for value in BAD_VALUES if value is not None], ids=repr)
def test_bad_script_args_without_enforcement_fall_back_and_say_so(host, args):
    p = FakeP("a cat")
    outcome = generate(host, p, args)
    assert any("requested" in c and "instead" in c for c in p.comments)
    # a bad toggle falls back to the 'sanitize by default' setting (off), a bad intensity to 1.0
    assert outcome == ("sanitized" if args[0] is True else "unsanitized")


def test_unknown_concept_is_reported_and_every_concept_erased(host):
    host.opts.embedding_sanitizer_concepts = "nudityy"
    p = FakeP("a cat")
    assert generate(host, p) == "sanitized"
    assert any("unknown concept(s) 'nudityy'" in c for c in p.comments)
    assert W.parse_infotext(p.extra_generation_params[W.INFOTEXT_KEY])["concepts"] is None


def test_concepts_are_stripped_and_a_string_is_not_split_into_letters(host):
    host.opts.embedding_sanitizer_concepts = " nudity , "
    p = FakeP("a cat")
    assert generate(host, p) == "sanitized" and not p.comments
    assert W.parse_infotext(p.extra_generation_params[W.INFOTEXT_KEY])["concepts"] == ("nudity",)


def test_failure_while_sanitizing_without_enforcement_is_said(host):
    p = FakeP("a cat")
    p.c.batch[0][0].schedules[0] = p.c.batch[0][0].schedules[0]._replace(cond=torch.zeros(5, 768))
    p.a = torch.zeros(5, 768)
    generate(host, p)
    assert any("NOT sanitized" in c for c in p.comments)


def test_enforced_with_weights_that_overflow_is_refused_not_called_enforced(host, monkeypatch):
    # finite weights so large that the scores come out NaN: must not pass as "enforced"
    from embedding_sanitizer import load_sanitizer
    model = load_sanitizer(host.dir / "sd1.safetensors")
    with torch.no_grad():
        model.project.weight.fill_(3e38)
    save_sanitizer(model, host.dir / "overflow.safetensors", {"note": "hostile"})
    enforce(host, monkeypatch, **{W.OPT_WEIGHTS: "overflow.safetensors"})
    p = FakeP("a cat")
    assert generate(host, p) == "refused"
    assert W.INFOTEXT_KEY not in p.extra_generation_params
    with pytest.raises(W.RefusedGeneration, match="NaN or infinite"):
        list(p.c.batch)


def test_a_hostile_weight_file_name_reaches_the_page_only_escaped(host):
    name = "<img src=x onerror=alert(1)>.safetensors"
    p = FakeP("a cat")
    p.override_settings = {W.OPT_WEIGHTS: name}
    assert generate(host, p) == "unsanitized"
    [comment] = [c for c in p.comments if "no weight file" in c]     # plain text: the webui escapes comments
    shown = W.display_html(W.DisplayStore(), f'{{"info": "", "log": {__import__("json").dumps(comment)}}}')
    assert "<img" not in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown
