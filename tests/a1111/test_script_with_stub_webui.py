"""The thin Script (scripts/sanitizer_script.py) driven through its hooks, with stand-ins
for the webui's `modules` and `gradio`, the way A1111 1.9+ / Forge call them."""

import types

import pytest
import torch

from embedding_sanitizer.hosts import a1111 as W

from .test_webui_adapter import (ClipTextEngine, ComposableScheduledPromptConditioning, MulticondLearnedConditioning,
                                 PromptParser, ScheduledPromptConditioning, active_model, sd1_cond)


class FakeP:
    cached_c = [None, None, None]       # class-wide, as in the webui

    def __init__(self, prompt):
        self.prompt, self.prompts, self.steps, self.cfg_scale = prompt, [prompt], 20, 7.0
        self.extra_generation_params, self.override_settings, self.comments = {}, {}, {}
        self.cached_c = FakeP.cached_c
        self.a, self.b = sd1_cond(seed=1), sd1_cond(seed=2)
        self.c = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
            [ScheduledPromptConditioning(10, self.a), ScheduledPromptConditioning(20, self.b)])]])
        self.neg = sd1_cond(seed=9)
        self.uc = [[ScheduledPromptConditioning(20, self.neg)]]
        self.sd_model = None

    def comment(self, text):
        self.comments[text] = 1


def run(host, p, enabled=True, intensity=1.0):
    script = host.mod.EmbeddingSanitizerScript()
    script.process(p, enabled, intensity)
    script.process_before_every_sampling(p, enabled, intensity, x=None, noise=None, c=p.c, uc=p.uc)
    script.process_before_every_sampling(p, enabled, intensity, x=None, noise=None, c=p.c, uc=p.uc)  # hires again
    return p


def test_folder_created_and_settings_registered(host):
    assert host.dir.is_dir()
    assert host.opts.embedding_sanitizer_enforce is False and host.opts.embedding_sanitizer_intensity == 1.0


def test_positive_sanitized_once_negative_untouched(host):
    p = run(host, FakeP("a [cat:dog:10]"))
    conds = [e.cond for e in p.c.batch[0][0].schedules]
    assert not torch.equal(conds[0], p.a) and not torch.equal(conds[1], p.b)
    assert p.uc[0][0].cond is p.neg
    assert p.cached_c is not FakeP.cached_c and FakeP.cached_c == [None, None, None]
    info = W.parse_infotext(p.extra_generation_params[W.INFOTEXT_KEY])
    assert info["weights"] == "sd1.safetensors" and info["intensity"] == 1.0 and info["erased_tokens"] == 154
    # second hook call (hires) did not sanitize again: values equal one application
    single = active_model().sanitize(p.a.unsqueeze(0)).embedding[0]
    assert torch.allclose(conds[0], single)


def test_toggle_off_does_nothing(host):
    p = run(host, FakeP("a cat"), enabled=False)
    assert p.c.batch[0][0].schedules[0].cond is p.a and W.INFOTEXT_KEY not in p.extra_generation_params
    assert p.cached_c is FakeP.cached_c


def test_enforced_ignores_toggle_and_intensity(host):
    host.opts.embedding_sanitizer_enforce = True
    p = run(host, FakeP("a cat"), enabled=False, intensity=0.0)
    assert not torch.equal(p.c.batch[0][0].schedules[0].cond, p.a)
    assert W.parse_infotext(p.extra_generation_params[W.INFOTEXT_KEY])["enforced"]


def test_override_settings_enable_without_script_args(host):
    p = FakeP("a cat")
    p.override_settings = {W.OPT_ENABLED: True}
    run(host, p, enabled=False)
    assert W.INFOTEXT_KEY in p.extra_generation_params


def test_mismatch_without_enforcement_warns_and_skips(host):
    host.opts.embedding_sanitizer_weights = "xl.safetensors"
    p = run(host, FakeP("a cat"))
    assert p.c.batch[0][0].schedules[0].cond is p.a
    assert any("sdxl-clip-lg" in c for c in p.comments) and W.INFOTEXT_KEY not in p.extra_generation_params


def enforce_at_startup(host, monkeypatch, **options):
    startup = {W.OPT_ENFORCE: True, **options}
    monkeypatch.setattr(host.mod, "OPERATOR", W.operator_settings(startup))
    for key, value in startup.items():
        setattr(host.opts, key, value)


def test_mismatch_with_enforcement_refuses(host, monkeypatch):
    enforce_at_startup(host, monkeypatch, **{W.OPT_WEIGHTS: "xl.safetensors"})
    p = run(host, FakeP("a cat"))
    with pytest.raises(W.RefusedGeneration, match="refused"):
        list(p.c.batch)


def test_missing_weights_with_enforcement_refuses(host, monkeypatch):
    enforce_at_startup(host, monkeypatch, **{W.OPT_WEIGHTS: "gone.safetensors"})
    p = run(host, FakeP("a cat"))
    with pytest.raises(W.RefusedGeneration):
        p.c.batch[0]


def test_error_during_sanitizing_with_enforcement_fails_closed(host):
    host.opts.embedding_sanitizer_enforce = True
    p = FakeP("a cat")
    p.c.batch[0][0].schedules[0] = ScheduledPromptConditioning(20, torch.zeros(5, 768))   # bad shape
    script = host.mod.EmbeddingSanitizerScript()
    script.process(p, True, 1.0)
    with pytest.raises(Exception):
        script.process_before_every_sampling(p, True, 1.0, c=p.c, uc=p.uc)   # the runner would swallow this
    with pytest.raises(W.RefusedGeneration):
        list(p.c.batch)


def test_paste_restores_options(host):
    params = {W.INFOTEXT_KEY: "sd1.safetensors, intensity 0.5, threshold 0.2, erased tokens 1"}
    host.callbacks["pasted"]("", params)
    assert params["Embedding Sanitizer weights"] == "sd1.safetensors"
    assert params["Embedding Sanitizer threshold"] == 0.2


def test_old_webui_without_sampling_hook_uses_process_batch_and_before_hr(host, monkeypatch):
    monkeypatch.setattr(host.mod, "HAS_SAMPLING_HOOK", False)
    p = FakeP("a cat")
    built = []
    p.setup_conds = lambda: built.append(1)
    p.hr_c = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, sd1_cond(seed=4))])]])
    hr_original = p.hr_c.batch[0][0].schedules[0].cond
    script = host.mod.EmbeddingSanitizerScript()
    script.process(p, True, 1.0)
    script.process_batch(p, True, 1.0, batch_number=0, prompts=p.prompts, seeds=[1], subseeds=[1])
    assert built == [1] and not torch.equal(p.c.batch[0][0].schedules[0].cond, p.a)
    script.before_hr(p, True, 1.0)
    assert not torch.equal(p.hr_c.batch[0][0].schedules[0].cond, hr_original)
    assert p.uc[0][0].cond is p.neg


def test_enforcement_at_startup_survives_the_option_being_switched_off(host, monkeypatch):
    monkeypatch.setattr(host.mod, "OPERATOR", W.operator_settings({W.OPT_ENFORCE: True}))
    host.opts.embedding_sanitizer_enforce = False           # e.g. POST /sdapi/v1/options on Forge
    p = run(host, FakeP("a cat"), enabled=False, intensity=0.0)
    assert W.parse_infotext(p.extra_generation_params[W.INFOTEXT_KEY])["enforced"]


def test_enforced_but_process_hook_failed_fails_closed(host):
    host.opts.embedding_sanitizer_enforce = True
    p = FakeP("a cat")           # process() never ran (the runner swallowed its exception)
    host.mod.EmbeddingSanitizerScript().process_before_every_sampling(p, True, 1.0, c=p.c, uc=p.uc)
    with pytest.raises(W.RefusedGeneration):
        list(p.c.batch)


class FakeComponent:
    made = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.clicks = args, kwargs, []
        FakeComponent.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def click(self, fn, inputs, outputs):
        self.clicks.append((fn, inputs, outputs))


@pytest.mark.parametrize("with_input_accordion", [True, False], ids=["1.7+/Forge", "1.6"])
def test_ui_wires_the_toggle_slider_and_per_page_display(host, monkeypatch, with_input_accordion):
    fake_gr = types.SimpleNamespace(**{n: type(n, (FakeComponent,), {}) for n in
                                       ("Accordion", "Checkbox", "Slider", "HTML", "Textbox", "Button")},
                                    update=lambda **k: k)
    monkeypatch.setattr(host.mod, "gr", fake_gr)
    monkeypatch.setattr(host.mod, "InputAccordion", type("InputAccordion", (FakeComponent,), {})
                        if with_input_accordion else None)
    FakeComponent.made = []
    script = host.mod.EmbeddingSanitizerScript()
    enabled, intensity = script.ui(is_img2img=False)
    kinds = {type(c).__name__: c for c in FakeComponent.made}
    assert type(enabled).__name__ == ("InputAccordion" if with_input_accordion else "Checkbox")
    assert enabled.kwargs.get("value", enabled.args[0] if enabled.args else None) is False
    assert intensity.kwargs["maximum"] == 4.0 and intensity.kwargs["value"] == 1.0 and intensity.kwargs["info"]
    assert kinds["Textbox"].kwargs["elem_classes"] == ["es-hidden"]
    [(fn, inputs, outputs)] = kinds["Button"].clicks
    assert inputs == [kinds["Textbox"]] and outputs == [kinds["HTML"]]
    assert "not sanitized" in fn('{"info": "{\\"prompt\\": \\"a\\", \\"extra_generation_params\\": {}}", "log": ""}')
    assert [f[0] for f in script.infotext_fields] == [enabled, intensity]


def test_settings_are_explained_and_filed_under_stable_diffusion(host):
    infos = host.opts.infos
    assert all(info.category_id == "sd" for info in infos.values())
    assert "score" in infos[W.OPT_THRESHOLD].comment and "intensity" in infos[W.OPT_INTENSITY].comment.lower()
    assert infos[W.OPT_ENFORCE].kw["restrict_api"] and infos[W.OPT_ENFORCE_INTENSITY].kw["restrict_api"]


def test_disguised_words_are_read_plainly_through_the_webui_encoder(host, monkeypatch):
    """The positive prompt's disguised span is scored as the webui's encoder reads it plainly; the
    negative prompt and the rest of the rows keep the conds' own reading."""
    from embedding_sanitizer.disguise import plain_reading

    p = FakeP("a photo of a n4k3d woman")
    p.c = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, p.a)])]])
    encoded = webui_text_reading(monkeypatch, p)
    engine, get_learned_conditioning = p.sd_model.cond_stage_model, p.sd_model.get_learned_conditioning
    run(host, p)
    assert encoded == ["a photo of a naked woman"]          # the plain text, once; never the negative
    result = p._embedding_sanitizer["ledger"].results[0][1]
    model = host.mod.load("sd1.safetensors", "cpu")
    reader = W.WebuiTextReader(get_learned_conditioning, engine.tokenize_line, {engine.id_start, engine.id_end})
    reading = plain_reading(model, reader, [p.prompt], 77)
    read = reading.scores
    own = model.sanitize(p.a.unsqueeze(0)).scores
    span = reading.replace[0].nonzero().flatten()        # "n4k3d"; "naked woman" also raises "woman"
    assert len(span) >= 1 and not torch.equal(read[0, span], own[0, span])
    torch.testing.assert_close(result.scores[0, span], read[0, span])
    outside = ~reading.rows[0]
    torch.testing.assert_close(result.scores[0, outside], own[0, outside])
    assert p.uc[0][0].cond is p.neg
    # The token display reads the same schedule texts.
    shown = host.mod.DISPLAYS.get(p.prompt, p.extra_generation_params[W.INFOTEXT_KEY])
    assert shown is not None and "a photo of a n4k3d woman" in shown


# ------------------------------------------------------------------ every sampling step (on_cfg_denoiser)

def step(host, p, text_cond, text_uncond):
    """One sampling step as the webui's CFGDenoiser hands it to on_cfg_denoiser; returns the text
    conditioning the model then reads."""
    params = types.SimpleNamespace(text_cond=text_cond, text_uncond=text_uncond, denoiser=types.SimpleNamespace(p=p))
    host.callbacks["cfg_denoiser"](params)
    return params.text_cond


def first_step_conds(c):
    """The step-0 text conditioning the webui reconstructs from a (Multicond) conditioning."""
    return torch.stack([c.batch[0][0].schedules[0].cond])


def refused(text_cond) -> bool:
    try:
        text_cond.shape
    except W.RefusedGeneration as e:
        return "refused" in str(e)
    return False


def test_refiner_switch_to_unsanitized_conds_is_refused(host):
    host.opts.embedding_sanitizer_enforce = True
    p = run(host, FakeP("a cat"))
    sanitized = first_step_conds(p.c)
    assert step(host, p, sanitized, torch.stack([p.neg])) is sanitized        # the sanitized conds pass
    # apply_refiner reloads the model and calls p.setup_conds(): new, raw conds, and no script hook
    p.c = FakeP("a cat").c
    raw = first_step_conds(p.c)
    assert not torch.equal(raw, sanitized)
    assert refused(step(host, p, raw, torch.stack([p.neg])))


def test_step_check_accepts_padding_and_batches_of_sanitized_conds(host):
    host.opts.embedding_sanitizer_enforce = True
    p = run(host, FakeP("a cat"))
    # padded to a longer AND part elsewhere in the batch: the cond, then its last row repeated
    padded = [torch.cat([e.cond, e.cond[-1:].expand(77, -1)]) for e in p.c.batch[0][0].schedules]
    both = torch.stack(padded)
    assert not refused(step(host, p, both, torch.stack([p.neg, p.neg])))
    tampered = both.clone()
    tampered[1, -1] += 1                                           # padding that is not the cond's last row
    assert refused(step(host, p, tampered, torch.stack([p.neg, p.neg])))


def test_without_enforcement_the_step_check_does_nothing(host):
    p = FakeP("a cat")
    raw = first_step_conds(p.c)
    assert step(host, p, raw, torch.stack([p.neg])) is raw


def test_without_enforcement_a_switch_to_unsanitized_conds_is_reported_once(host, capsys):
    p = run(host, FakeP("a cat"))
    sanitized = first_step_conds(p.c)
    assert step(host, p, sanitized, torch.stack([p.neg])) is sanitized
    assert "NOT sanitized" not in capsys.readouterr().err
    raw = first_step_conds(FakeP("a cat").c)                     # a refiner switch: raw conds, no hook
    for _ in range(3):
        assert step(host, p, raw, torch.stack([p.neg])) is raw    # not enforced: the generation goes on
    warnings = [line for line in capsys.readouterr().err.splitlines() if "NOT sanitized" in line]
    assert len(warnings) == 1 and "refiner" in warnings[0]
    assert any("steps from here on were NOT sanitized" in text for text in p.comments)


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_negative_below_cfg_1_is_sanitized(host, cfg_scale):
    host.opts.embedding_sanitizer_enforce = True
    p = FakeP("a cat")
    p.cfg_scale = cfg_scale
    run(host, p)
    negative = p.uc[0][0].cond
    assert not torch.equal(negative, p.neg)
    assert torch.allclose(negative, active_model().sanitize(p.neg.unsqueeze(0)).embedding[0])
    assert FakeP.cached_c == [None, None, None]
    assert not refused(step(host, p, first_step_conds(p.c), torch.stack([negative])))
    assert refused(step(host, p, first_step_conds(p.c), torch.stack([p.neg])))   # raw negative at CFG 0.5: refused


def test_negative_at_cfg_1_is_left_alone_and_passes_the_step_check(host):
    host.opts.embedding_sanitizer_enforce = True
    p = FakeP("a cat")
    p.cfg_scale = 1.0
    run(host, p)
    assert p.uc[0][0].cond is p.neg
    assert not refused(step(host, p, first_step_conds(p.c), torch.stack([p.neg])))


def test_training_preview_without_scripts_is_refused_while_enforced(host):
    # textual_inversion / hypernetwork previews build a processing object with no scripts:
    # no hook of ours runs, but every sampling step still passes on_cfg_denoiser.
    host.opts.embedding_sanitizer_enforce = True
    p = FakeP("a nude woman")
    assert refused(step(host, p, first_step_conds(p.c), torch.stack([p.neg])))


def test_webui_without_denoiser_in_the_step_params_checks_the_last_processed_generation(host):
    host.opts.embedding_sanitizer_enforce = True
    p = run(host, FakeP("a cat"))
    sanitized = first_step_conds(p.c)
    for conds, refuses in ((sanitized, False), (first_step_conds(FakeP("a cat").c), True)):
        params = types.SimpleNamespace(text_cond=conds, text_uncond=torch.stack([p.neg]))     # A1111 1.6
        host.callbacks["cfg_denoiser"](params)
        assert refused(params.text_cond) is refuses


def webui_text_reading(monkeypatch, p):
    """p's model as the stub webui's: CLIP's tokenizer, and an 'encoder' whose output depends on the text."""
    import contextlib
    import sys
    encoded = []

    def get_learned_conditioning(texts):
        encoded.extend(texts)
        return torch.stack([sd1_cond(seed=len(t)) for t in texts])

    monkeypatch.setattr(sys.modules["modules"], "prompt_parser", PromptParser, raising=False)
    monkeypatch.setattr(sys.modules["modules"], "devices", types.SimpleNamespace(autocast=contextlib.nullcontext),
                        raising=False)
    p.sd_model = types.SimpleNamespace(cond_stage_model=ClipTextEngine(),
                                       get_learned_conditioning=get_learned_conditioning)
    return encoded


def test_an_empty_folder_sanitizes_with_the_builtin_sanitizer(host, monkeypatch):
    from embedding_sanitizer.builtin import BUILTIN_NAME
    for file in host.dir.iterdir():
        file.unlink()
    p = FakeP("a nude woman on a beach")
    p.c = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, p.a)])]])
    encoded = webui_text_reading(monkeypatch, p)
    run(host, p)
    assert encoded == ["a clothed woman on a beach"]         # the anchor text, once
    assert not torch.equal(p.c.batch[0][0].schedules[0].cond, p.a) and p.uc[0][0].cond is p.neg
    assert p.extra_generation_params[W.INFOTEXT_KEY].startswith(f"{BUILTIN_NAME}, intensity 1")
    # Without the prompt's text it has nothing to read: said, and refused while enforced.
    p = run(host, FakeP("a nude woman on a beach"))
    assert p.c.batch[0][0].schedules[0].cond is p.a
    assert any("reads the prompt's text" in c and "NOT sanitized" in c for c in p.comments)
    enforce_at_startup(host, monkeypatch)
    p, script = FakeP("a nude woman on a beach"), host.mod.EmbeddingSanitizerScript()
    script.process(p, True, 1.0)
    with pytest.raises(Exception, match="reads the prompt's text"):
        script.process_before_every_sampling(p, True, 1.0, c=p.c, uc=p.uc)   # the runner would swallow this
    with pytest.raises(W.RefusedGeneration, match="reads the prompt's text"):
        list(p.c.batch)


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_the_builtin_sanitizer_reads_a_negative_below_cfg_1_by_its_own_text(host, monkeypatch, cfg_scale):
    for file in host.dir.iterdir():
        file.unlink()
    host.opts.embedding_sanitizer_enforce = True
    p = FakeP("a cat")
    p.negative_prompts, p.cfg_scale = ["a nude woman on a beach"], cfg_scale
    p.c = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, p.a)])]])
    encoded = webui_text_reading(monkeypatch, p)
    run(host, p)
    assert encoded == ["a clothed woman on a beach"]         # the negative's anchor text; "a cat" flags nothing
    assert not torch.equal(p.uc[0][0].cond, p.neg) and torch.equal(p.c.batch[0][0].schedules[0].cond, p.a)
