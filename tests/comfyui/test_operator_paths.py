"""Operator mode on the paths that skip the guider's choke point, in the vendored ComfyUI: a
negative below CFG 1, PerpNeg's own empty conditioning, GLIGEN's box texts, and configuration
files that used to make the pack fail to import (ComfyUI then samples with no enforcement); with a
ComfyUI that has guiders (COMFYUI_ROOT), an SDXL negative below CFG 1 and DualCFGGuider's negative.
What the model is evaluated with is compared with the raw encoding."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from .comfy_env import load_pack
from .test_operator_mode import (PROMPT, base_model, config, converted, encode, failsafe,  # noqa: F401 (fixtures)
                                 operator_config, operator_mode)

UNSAFE_NEGATIVE = "a nude woman covered in blood"


@pytest.fixture()
def restored_comfy(monkeypatch):
    """Every ComfyUI attribute operator mode wraps, put back after the test."""
    import comfy.samplers
    import execution
    import nodes as comfy_nodes
    for name in ("sample", "sampling_function", "calc_cond_batch", "calc_cond_uncond_batch"):
        if hasattr(comfy.samplers, name):
            monkeypatch.setattr(comfy.samplers, name, getattr(comfy.samplers, name))
    if hasattr(comfy.samplers, "CFGGuider"):
        for name in ("inner_set_conds", "sample"):
            monkeypatch.setattr(comfy.samplers.CFGGuider, name, getattr(comfy.samplers.CFGGuider, name))
    monkeypatch.setattr(execution.PromptQueue, "task_done", execution.PromptQueue.task_done)
    monkeypatch.setattr(comfy_nodes.SaveImage, "save_images", comfy_nodes.SaveImage.save_images)
    monkeypatch.setattr(comfy_nodes.CLIPTextEncode, "encode", comfy_nodes.CLIPTextEncode.encode)
    return comfy.samplers


class RecordingModel:
    """A stand-in for comfy's BaseModel that records the text embedding every evaluation gets."""

    def __init__(self):
        self.model_config = base_model("SD15").model_config
        self.seen = []
        # ComfyUI 0.3.x asks the model's patcher to prepare every step
        self.current_patcher = types.SimpleNamespace(prepare_state=lambda timestep: None, apply_hooks=lambda hooks: {})

    def memory_required(self, shape, **kwargs):
        return 0

    def extra_conds(self, **kwargs):
        import comfy.conds
        return {"c_crossattn": comfy.conds.CONDCrossAttn(kwargs["cross_attn"])}

    def apply_model(self, x, timestep, c_crossattn=None, **kwargs):
        self.seen.extend(c_crossattn.unbind(0))
        return torch.zeros_like(x)


def for_the_model(samplers, model, conditioning, kind):
    """A CONDITIONING as a sampler hands it to the model: converted and encoded for it."""
    x = torch.zeros(1, 4, 8, 8)
    return samplers.encode_model_conds(model.extra_conds, converted(conditioning), x, "cpu", kind)


def reached(model, embedding) -> bool:
    return any(seen.shape == embedding[0].shape and torch.equal(seen, embedding[0]) for seen in model.seen)


@pytest.fixture()
def guarded(operator_mode, config, restored_comfy):
    enforcer = operator_mode.Enforcer(config)
    operator_mode.install_model_guard(enforcer, restored_comfy)
    return enforcer


def sample_step(samplers, model, positive, negative, cfg, model_options=None):
    with torch.no_grad():
        samplers.sampling_function(model, torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), negative, positive, cfg,
                                   model_options=model_options or {})


@pytest.mark.parametrize("cfg", [0.0, 0.5])
def test_negative_below_cfg_1_is_sanitized_as_a_positive(guarded, restored_comfy, sd1_clip, clip_text_encode, cfg):
    model = RecordingModel()
    negative = encode(clip_text_encode, sd1_clip, UNSAFE_NEGATIVE)
    positive = [[e["cross_attn"], e] for e in guarded.enforce(model, "positive", converted(
        encode(clip_text_encode, sd1_clip, "a cat")))]
    sample_step(restored_comfy, model, for_the_model(restored_comfy, model, positive, "positive"),
                for_the_model(restored_comfy, model, negative, "negative"), cfg)
    assert len(model.seen) == 2 and not reached(model, negative[0][0])
    sanitized = guarded.enforce(model, "negative", converted(negative))[0]["cross_attn"]
    assert reached(model, sanitized) and torch.equal(negative[0][0], negative[0][0].clone())


def test_negative_at_cfg_1_or_more_stays_as_it_is(guarded, restored_comfy, sd1_clip, clip_text_encode):
    model = RecordingModel()
    negative = encode(clip_text_encode, sd1_clip, UNSAFE_NEGATIVE)
    raw_positive = encode(clip_text_encode, sd1_clip, PROMPT)
    sample_step(restored_comfy, model, for_the_model(restored_comfy, model, raw_positive, "positive"),
                for_the_model(restored_comfy, model, negative, "negative"), 7.0)
    assert reached(model, negative[0][0])                   # the negative is the model's as encoded
    assert not reached(model, raw_positive[0][0])           # a positive that skipped the choke point is not


# ------------------------------------------------------------------ guiders (ComfyUI since spring 2024)

class RecordingSDXL(RecordingModel):
    """An SDXL model stand-in: like SDXL's BaseModel, it encodes the pooled output into "y" before sampling."""

    def __init__(self):
        super().__init__()
        self.model_config = base_model("SDXL").model_config

    def extra_conds(self, **kwargs):
        import comfy.conds
        return {**super().extra_conds(**kwargs), "y": comfy.conds.CONDRegular(kwargs["pooled_output"])}


@pytest.fixture()
def sdxl_config(tmp_path):
    return operator_config(tmp_path, "sdxl-clip-lg", 2048, 1280, 6, "sdxl")


@pytest.fixture()
def guiders(operator_mode, sdxl_config, restored_comfy, monkeypatch):
    """An enforcer with the choke point and the guard installed, and a guider's sample() that runs
    its real predict_noise once on a recording SDXL model (ComfyUI's own sample() needs a real
    ModelPatcher): what sampling hands the model, after the guider's conds are encoded for it."""
    samplers = restored_comfy
    if not hasattr(samplers, "CFGGuider"):
        pytest.skip("this ComfyUI predates guiders (CFGGuider); run tools/comfyui/run_newer_comfyui.sh")
    model = RecordingSDXL()

    def sample(self, *args, **kwargs):
        x = torch.zeros(1, 4, 8, 8)
        self.inner_model = model
        self.conds = {key: samplers.encode_model_conds(model.extra_conds, [e.copy() for e in entries], x, "cpu", key)
                      for key, entries in self.original_conds.items()}
        with torch.no_grad():
            return self.predict_noise(x, torch.tensor([1.0]), model_options={})

    monkeypatch.setattr(samplers.CFGGuider, "sample", sample)
    enforcer = operator_mode.Enforcer(sdxl_config)
    operator_mode.install_choke_point(enforcer, samplers)
    operator_mode.install_model_guard(enforcer, samplers)
    return types.SimpleNamespace(enforcer=enforcer, model=model, patcher=types.SimpleNamespace(model=model, model_options={}))


def sdxl_conditioning(seed):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 2048, generator=generator), {"pooled_output": torch.randn(1, 1280, generator=generator)}]]


def dual_cfg_guider(patcher, cfg_conds, cfg_cond2_negative, nested):
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG
    guider = Guider_DualCFG(patcher)
    guider.set_conds(sdxl_conditioning(1), sdxl_conditioning(2), sdxl_conditioning(3))
    try:
        guider.set_cfg(cfg_conds, cfg_cond2_negative, nested=nested)
    except TypeError:                    # ComfyUI before the nested style
        guider.set_cfg(cfg_conds, cfg_cond2_negative)
    return guider


@pytest.mark.parametrize("cfg", [0.0, 0.5])
def test_sdxl_negative_below_cfg_1_through_a_guider_is_sanitized(guiders, restored_comfy, cfg):
    guider = restored_comfy.CFGGuider(guiders.patcher)
    positive, negative = sdxl_conditioning(1), sdxl_conditioning(3)
    guider.set_conds(positive, negative)       # as comfy.samplers.sample does: the conds, then the scale
    guider.set_cfg(cfg)
    guider.sample(None, None, None, None)
    sanitized = guiders.enforcer.enforce(guiders.model, "negative", converted(negative))[0]["cross_attn"]
    assert len(guiders.model.seen) == 2
    assert reached(guiders.model, sanitized) and not reached(guiders.model, negative[0][0])
    assert guider.original_conds["negative"][0]["cross_attn"] is negative[0][0]    # the guider keeps its own


def test_sdxl_negative_at_cfg_1_or_more_through_a_guider_stays_as_it_is(guiders, restored_comfy):
    guider = restored_comfy.CFGGuider(guiders.patcher)
    negative = sdxl_conditioning(3)
    guider.set_conds(sdxl_conditioning(1), negative)
    guider.set_cfg(4.0)
    guider.sample(None, None, None, None)
    assert reached(guiders.model, negative[0][0])


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("cfg_cond2_negative, negative_counts", [(0.0, True), (0.5, True), (1.0, False), (3.0, False)])
def test_dual_cfg_guider_negative_is_sanitized_only_below_its_scale_1(guiders, nested, cfg_cond2_negative,
                                                                      negative_counts):
    # image = negative + cfg_cond2_negative * (rest - negative): the negative steers toward itself below 1
    guider = dual_cfg_guider(guiders.patcher, 7.0, cfg_cond2_negative, nested)
    guider.sample(None, None, None, None)
    negative = sdxl_conditioning(3)[0][0]
    middle = sdxl_conditioning(2)[0][0]
    assert not reached(guiders.model, middle)            # cond2 is a positive: always sanitized
    if cfg_cond2_negative == 1.0 and not nested:
        assert len(guiders.model.seen) == 2              # ComfyUI leaves the negative out at exactly 1
    else:
        assert reached(guiders.model, negative) is not negative_counts


@pytest.mark.parametrize("scales, negative_counts", [({"cfg": 0.5}, True), ({"cfg": 7.0}, False), ({"cfg": "x"}, True),
                                                     ({"cfg": 7.0, "cfg2": 0.0}, True), ({"cfg": 0.5, "cfg2": 3.0}, False)])
def test_the_guider_rule_on_a_stand_in_guider(operator_mode, config, sd1_clip, clip_text_encode, scales, negative_counts):
    """The rule without a ComfyUI that has guiders (CI's vendored one predates them): a guider's
    negative is sanitized when its sampling starts if its scale (cfg2 where it has one, else cfg)
    is below 1, and otherwise reaches its own calc_cond_batch call as it is."""
    enforcer = operator_mode.Enforcer(config)
    model = base_model("SD15")
    received = []

    class Guider:           # the parts of comfy.samplers.CFGGuider that operator mode relies on
        def __init__(self):
            self.model_patcher, self.original_conds = types.SimpleNamespace(model=model), {}

        def inner_set_conds(self, conds):
            self.original_conds = {key: converted(value) for key, value in conds.items()}

        def sample(self):
            self.conds = {key: [entry.copy() for entry in value] for key, value in self.original_conds.items()}
            samplers.calc_cond_batch(model, [self.conds["negative"], self.conds["positive"]])

    samplers = types.SimpleNamespace(CFGGuider=Guider, sampling_function=lambda *args, **kwargs: None,
                                     calc_cond_batch=lambda model, conds, *args: received.extend(conds))
    operator_mode.install_choke_point(enforcer, samplers)
    operator_mode.install_model_guard(enforcer, samplers)
    guider = samplers.CFGGuider()
    negative = encode(clip_text_encode, sd1_clip, UNSAFE_NEGATIVE)
    guider.inner_set_conds({"positive": encode(clip_text_encode, sd1_clip, "a cat"), "negative": negative})
    vars(guider).update(scales)
    guider.sample()
    [got_negative], [got_positive] = received
    assert got_positive["embedding_sanitizer"].by == "operator"
    assert (got_negative["cross_attn"] is negative[0][0]) is not negative_counts
    if negative_counts:
        assert got_negative["embedding_sanitizer"].by == "operator"
    assert guider.original_conds["negative"][0]["cross_attn"] is negative[0][0]     # the guider keeps its own


def test_perpneg_empty_conditioning_is_sanitized(guarded, restored_comfy, sd1_clip, clip_text_encode):
    from comfy_extras.nodes_perpneg import PerpNeg
    model = RecordingModel()
    empty = encode(clip_text_encode, sd1_clip, PROMPT)      # what a user may put in PerpNeg's "empty" input

    class Patcher:
        def clone(self):
            return self

        def set_model_sampler_cfg_function(self, function, *args):
            self.cfg_function = function

    if hasattr(PerpNeg, "patch"):
        patched = PerpNeg().patch(Patcher(), empty, 1.0)[0]
    else:                                                   # ComfyUI 0.3.x: a V3 node
        patched = PerpNeg.execute(Patcher(), empty, 1.0).result[0]
    positive = [[e["cross_attn"], e] for e in guarded.enforce(model, "positive", converted(
        encode(clip_text_encode, sd1_clip, "a cat")))]
    negative = encode(clip_text_encode, sd1_clip, "blurry")
    sample_step(restored_comfy, model, for_the_model(restored_comfy, model, positive, "positive"),
                for_the_model(restored_comfy, model, negative, "negative"), 7.0,
                {"sampler_cfg_function": patched.cfg_function})
    assert len(model.seen) == 3 and not reached(model, empty[0][0])
    sanitized = guarded.enforce(model, "perpneg", converted(empty))[0]["cross_attn"]
    assert reached(model, sanitized)


def test_gligen_box_text_is_refused(guarded, operator_mode, restored_comfy, sd1_clip, clip_text_encode):
    model = RecordingModel()
    positive = guarded.enforce(model, "positive", converted(encode(clip_text_encode, sd1_clip, "a cat")))
    box_text = torch.zeros(1, 768)
    with_box = [[e["cross_attn"], {**e, "gligen": ("position", object(), [(box_text, 8, 8, 0, 0)])}]
                for e in positive]
    negative = encode(clip_text_encode, sd1_clip, "blurry")
    with pytest.raises(operator_mode.SanitizingRefused, match="GLIGEN"):
        sample_step(restored_comfy, model, for_the_model(restored_comfy, model, with_box, "positive"),
                    for_the_model(restored_comfy, model, negative, "negative"), 7.0)
    assert model.seen == []


HOSTILE_CONFIGS = {
    "latin-1": json.dumps({"sanitizers": {"sd1-clip-l": "sanitizer-é.safetensors"}}).replace("\\u00e9", "é")
                                                                                    .encode("latin-1"),
    "utf-16": json.dumps({"sanitizers": {"sd1-clip-l": "sd1.safetensors"}}).encode("utf-16"),
    "400 digits": b'{"sanitizers": {"sd1-clip-l": "sd1.safetensors"}, "min_intensity": 1' + b"0" * 400 + b"}",
    "5000 digits": b'{"sanitizers": {"sd1-clip-l": "sd1.safetensors"}, "min_intensity": 1' + b"0" * 5000 + b"}",
    "100000 brackets": b"[" * 100_000 + b"]" * 100_000,
    "too large": b'{"concepts": ["' + b"x" * 100_000 + b'"]}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
def test_hostile_config_loads_the_pack_and_refuses_every_prompt(name, tmp_path, monkeypatch, restored_comfy, failsafe):
    path = tmp_path / "operator.json"
    path.write_bytes(HOSTILE_CONFIGS[name])
    monkeypatch.setenv(failsafe.ENV_VAR, str(path))
    pack = load_pack(f"embedding_sanitizer_pack_hostile_{abs(hash(name))}")
    enforcer = sys.modules[f"{pack.__name__}.nodes"].OPERATOR_MODE
    assert "EmbeddingSanitizerApply" in pack.NODE_CLASS_MAPPINGS and enforcer is not None and enforcer.error
    assert enforcer.state() == {"enforced": True, "ready": False, "problem": enforcer.state()["problem"]}
    assert str(tmp_path) not in json.dumps(enforcer.state())
    model = base_model("SD15")
    model.model, model.model_options = model, {}           # its own patcher, as ComfyUI 0.3.x's CFGGuider needs
    with pytest.raises(Exception, match="refused to sample") as refused:
        restored_comfy.sample(model, None, [], [], 7.0, "cpu", None, None)
    assert str(tmp_path) not in str(refused.value)        # the reason, with the path, is in the log only


def test_config_with_a_byte_order_mark_is_read(tmp_path):
    from embedding_sanitizer.hosts.comfy_operator import read_operator_config
    path = tmp_path / "operator.json"
    path.write_bytes(json.dumps({"sanitizers": {"sd1-clip-l": "x.safetensors"}}).encode("utf-8-sig"))
    assert read_operator_config(path).sanitizers["sd1-clip-l"].path == tmp_path / "x.safetensors"


def test_pack_that_fails_to_import_refuses_every_generation(tmp_path, monkeypatch, restored_comfy, failsafe):
    name = "embedding_sanitizer_pack_broken"
    monkeypatch.setenv(failsafe.ENV_VAR, str(tmp_path / "operator.json"))
    monkeypatch.setitem(sys.modules, f"{name}.nodes", None)          # the pack's nodes fail to import
    with pytest.raises(ImportError):
        load_pack(name)
    its_failsafe = sys.modules[f"{name}.operator_failsafe"]
    with pytest.raises(RuntimeError, match="refused to sample") as refused:
        restored_comfy.sample(base_model("SD15"), None, [], [], 7.0, "cpu", None, None)
    assert str(tmp_path) not in str(refused.value)
    with pytest.raises(RuntimeError, match="refused to sample"):
        (getattr(restored_comfy, "calc_cond_batch", None) or restored_comfy.calc_cond_uncond_batch)()
    assert its_failsafe._published["state"]()["ready"] is False


def test_missing_user_directory_file_overrides_nothing_and_system_file_wins(failsafe, monkeypatch, tmp_path):
    import folder_paths
    monkeypatch.delenv(failsafe.ENV_VAR, raising=False)
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path), raising=False)
    system = tmp_path / "etc" / "operator.json"
    monkeypatch.setattr(failsafe, "SYSTEM_CONFIG", system)
    assert failsafe.config_location() is None
    system.parent.mkdir()
    system.write_text("{}")
    (tmp_path / failsafe.CONFIG_NAME).write_text("{}")
    assert failsafe.config_location() == system
