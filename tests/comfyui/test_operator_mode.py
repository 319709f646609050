"""Operator mode inside a real ComfyUI, in-process: the switch, the choke point of this ComfyUI's
layout (CFGGuider.inner_set_conds, or comfy.samplers.sample before guiders), and fail-closed refusals.
The end-to-end server runs are in test_operator_server.py."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest
import torch

from .conftest import active_sanitizer

PROMPT = "a photo of a nude woman holding a bloody knife"


@pytest.fixture(scope="module")
def operator_mode(pack):
    return sys.modules[f"{pack.__name__}.nodes.operator_mode"]


@pytest.fixture(scope="module")
def failsafe(pack):
    """Where the switch is (operator_failsafe.py: it must work even when the rest cannot load)."""
    return sys.modules[f"{pack.__name__}.operator_failsafe"]


def operator_config(folder, family: str, embed_dim: int, pooled_dim: int, seed: int, name: str):
    """An operator configuration in `folder` naming one active random sanitizer, `name`.safetensors."""
    from embedding_sanitizer import save_sanitizer
    save_sanitizer(active_sanitizer(embed_dim, pooled_dim, family, seed=seed), folder / f"{name}.safetensors", {})
    path = folder / ("operator.json" if name == "sd1" else f"operator-{name}.json")
    path.write_text(json.dumps({"sanitizers": {family: f"{name}.safetensors"}, "min_intensity": 1.0}))
    return path


@pytest.fixture()
def config(tmp_path):
    return operator_config(tmp_path, "sd1-clip-l", 768, 0, 5, "sd1")


def base_model(class_name: str):
    """A stand-in for comfy's BaseModel: operator mode reads only the class of its model_config."""
    import comfy.supported_models
    config_class = getattr(comfy.supported_models, class_name)
    return types.SimpleNamespace(model_config=object.__new__(config_class))


def converted(conditioning):
    """CONDITIONING as this ComfyUI's samplers hold it."""
    try:
        from comfy.sampler_helpers import convert_cond
    except ImportError:
        from comfy.sample import convert_cond
    return convert_cond(conditioning)


def encode(clip_text_encode, clip, text):
    return clip_text_encode.encode(clip, text)[0]


def wrapped(obj, name, operator_mode) -> bool:
    return hasattr(getattr(obj, name), operator_mode.WRAPPED)


def test_switch_off_installs_nothing(pack, operator_mode, failsafe, monkeypatch):
    import comfy.samplers
    import execution
    import nodes as comfy_nodes
    assert sys.modules[f"{pack.__name__}.nodes"].OPERATOR_MODE is None
    assert not wrapped(comfy.samplers, "sample", operator_mode)
    if hasattr(comfy.samplers, "CFGGuider"):
        assert not wrapped(comfy.samplers.CFGGuider, "inner_set_conds", operator_mode)
    assert not wrapped(execution.PromptQueue, "task_done", operator_mode)
    assert not wrapped(comfy_nodes.SaveImage, "save_images", operator_mode)
    monkeypatch.delenv(failsafe.ENV_VAR, raising=False)
    assert operator_mode.setup() is None


def test_config_location_env_var_then_user_directory(failsafe, monkeypatch, tmp_path):
    import folder_paths
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.delenv(failsafe.ENV_VAR, raising=False)
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(user), raising=False)
    assert failsafe.config_location() is None
    (user / failsafe.CONFIG_NAME).write_text("{}")
    assert failsafe.config_location() == user / failsafe.CONFIG_NAME
    monkeypatch.setenv(failsafe.ENV_VAR, str(tmp_path / "elsewhere.json"))
    assert failsafe.config_location() == tmp_path / "elsewhere.json"   # set but missing: still enforced


def test_no_known_choke_point_refuses_to_start(operator_mode, failsafe, config, monkeypatch):
    import comfy.samplers
    monkeypatch.setenv(failsafe.ENV_VAR, str(config))
    monkeypatch.delattr(comfy.samplers, "sample")
    if hasattr(comfy.samplers, "CFGGuider"):
        monkeypatch.delattr(comfy.samplers.CFGGuider, "inner_set_conds")
    with pytest.raises(SystemExit, match="refusing to start"):
        operator_mode.setup()


def test_choke_point_sanitizes_all_but_the_negative(operator_mode, config, sd1_clip, clip_text_encode, monkeypatch):
    import comfy.samplers
    enforcer = operator_mode.Enforcer(config)
    positive = encode(clip_text_encode, sd1_clip, PROMPT)
    negative = encode(clip_text_encode, sd1_clip, "blurry")
    plain_positive = positive[0][0].clone()
    model = base_model("SD15")
    if hasattr(comfy.samplers, "CFGGuider"):          # ComfyUI with guiders
        guider_class = comfy.samplers.CFGGuider
        monkeypatch.setattr(guider_class, "inner_set_conds", guider_class.inner_set_conds)   # restored after
        assert operator_mode.install_choke_point(enforcer, comfy.samplers).endswith("inner_set_conds")
        guider = guider_class(types.SimpleNamespace(model=model, model_options={}))
        guider.inner_set_conds({"positive": positive, "middle": positive, "negative": negative})
        got_positive, got_middle = guider.original_conds["positive"], guider.original_conds["middle"]
        got_negative = guider.original_conds["negative"]
    else:                                             # ComfyUI 2024: comfy.samplers.sample
        seen = {}

        def sample(model, noise, positive, negative, cfg, device, sampler, sigmas, **kwargs):
            seen.update(positive=positive, negative=negative)

        monkeypatch.setattr(comfy.samplers, "sample", sample)
        assert operator_mode.install_choke_point(enforcer, comfy.samplers) == "comfy.samplers.sample"
        comfy.samplers.sample(model, None, converted(positive), converted(negative), 7.0, "cpu", None, None)
        got_positive, got_middle, got_negative = seen["positive"], seen["positive"], seen["negative"]
    for entries in (got_positive, got_middle):
        assert not torch.equal(entries[0]["cross_attn"], plain_positive)
        assert entries[0]["embedding_sanitizer"].by == "operator"
        crossattn = entries[0]["model_conds"].get("c_crossattn")
        if crossattn is not None:                     # 2024 ComfyUI fills it before sampling
            assert crossattn.cond is entries[0]["cross_attn"]
    assert got_negative[0]["cross_attn"] is negative[0][0] and "embedding_sanitizer" not in got_negative[0]
    assert torch.equal(positive[0][0], plain_positive)        # the workflow's tensor is never edited
    assert "embedding_sanitizer" not in positive[0][1]
    assert [r["input"] for r in enforcer.prompt_record(None)["sanitized"]] == (
        ["positive", "middle"] if hasattr(comfy.samplers, "CFGGuider") else ["positive"])


def test_result_equals_the_pack_node_with_the_operators_file(operator_mode, config, nodes, sd1_clip,
                                                            clip_text_encode):
    from embedding_sanitizer import load_sanitizer
    from embedding_sanitizer.model import DEFAULT_THRESHOLD
    enforcer = operator_mode.Enforcer(config)
    positive = encode(clip_text_encode, sd1_clip, PROMPT)
    [entry] = enforcer.enforce(base_model("SD15"), "positive", converted(positive))
    node = nodes["EmbeddingSanitizerApply"]()
    sanitizer = load_sanitizer(config.parent / "sd1.safetensors")
    expected = node.sanitize(positive, sanitizer, 1.0, DEFAULT_THRESHOLD)["result"][0]
    assert torch.equal(entry["cross_attn"], expected[0][0])
    # Already sanitized by the node with the operator's weights at the minimum: passed on untouched.
    [again] = enforcer.enforce(base_model("SD15"), "positive", converted(expected))
    assert again["cross_attn"] is expected[0][0]


@pytest.mark.parametrize("case, fragment", [
    ("family", "has no sanitizer for this model (SDXL"),
    ("no embedding", "no text embedding"),
    ("wrong width", "check that the model's text encoder"),
    ("broken config", "configuration is unusable"),
    ("broken file", "did not load"),
    ("pinned digest", "did not load; check its file and sha256"),
])
def test_refusals(operator_mode, config, sd1_clip, clip_text_encode, case, fragment, caplog):
    entries = converted(encode(clip_text_encode, sd1_clip, PROMPT))
    model = base_model("SD15")
    if case == "family":
        model = base_model("SDXL")
    elif case == "no embedding":
        entries = converted([[None, {}]])
    elif case == "wrong width":
        entries = converted([[torch.randn(1, 77, 1024), {}]])
    elif case == "broken config":
        config.write_text("{")
    elif case == "broken file":
        (config.parent / "sd1.safetensors").write_bytes(b"\x80\x04pickle")
    elif case == "pinned digest":
        config.write_text(json.dumps({"sanitizers": {"sd1-clip-l": {"file": "sd1.safetensors", "sha256": "0" * 64}}}))
    enforcer = operator_mode.Enforcer(config)
    with pytest.raises(operator_mode.SanitizingRefused, match="refused to sample") as refused:
        enforcer.enforce(model, "positive", entries)
    assert fragment in str(refused.value)
    # Every client reads the refusal: the paths and digests are for the server log only.
    told = str(refused.value)
    assert str(config.parent) not in told and "0" * 16 not in told and not re.search(r"[0-9a-f]{16}", told)
    if case in ("broken config", "broken file", "pinned digest"):
        assert str(config.parent) in caplog.text or "0" * 64 in caplog.text


def test_state_never_holds_paths(operator_mode, config):
    state = operator_mode.Enforcer(config).state()
    assert state["sanitizers"]["sd1-clip-l"]["file"] == "sd1.safetensors" and state["ready"] is True
    assert str(config.parent) not in json.dumps(state)
    config.write_text("{")
    broken = operator_mode.Enforcer(config).state()
    assert broken["enforced"] is True and broken["ready"] is False and str(config.parent) not in json.dumps(broken)


def test_sha256_pin_refuses_a_replaced_file(operator_mode, config):
    data = json.loads(config.read_text())
    data["sanitizers"]["sd1-clip-l"] = {"file": "sd1.safetensors", "sha256": "0" * 64}
    config.write_text(json.dumps(data))
    enforcer = operator_mode.Enforcer(config)
    assert "changed or replaced" in enforcer.load_errors["sd1-clip-l"]


def test_disguised_words_are_read_plainly_with_the_text_clip_text_encode_made(operator_mode, nodes, sd1_clip,
                                                                             monkeypatch, tmp_path):
    """The sampler's conds carry no text: CLIP Text Encode tells the enforcer which text made them."""
    import nodes as comfy_nodes
    from embedding_sanitizer import load_sanitizer, save_sanitizer
    from embedding_sanitizer.model import DEFAULT_THRESHOLD
    # Scores short of 0 and 1, so that reading "n u d e" as "nude" changes them.
    save_sanitizer(active_sanitizer(768, 0, "sd1-clip-l", score_std=0.05), tmp_path / "sd1.safetensors", {})
    config = tmp_path / "operator.json"
    config.write_text(json.dumps({"sanitizers": {"sd1-clip-l": "sd1.safetensors"}, "min_intensity": 1.0}))
    monkeypatch.setattr(comfy_nodes.CLIPTextEncode, "encode", comfy_nodes.CLIPTextEncode.encode)   # restored after
    enforcer = operator_mode.Enforcer(config)
    operator_mode.install_text_memory(enforcer, comfy_nodes)
    text = "a photo of a n u d e woman"
    positive = comfy_nodes.CLIPTextEncode().encode(sd1_clip, text)[0]
    [entry] = enforcer.enforce(base_model("SD15"), "positive", converted(positive))
    node, sanitizer = nodes["EmbeddingSanitizerApply"](), load_sanitizer(config.parent / "sd1.safetensors")
    read = node.sanitize(positive, sanitizer, 1.0, DEFAULT_THRESHOLD, clip=sd1_clip, text=text)["result"][0]
    unread = node.sanitize(positive, sanitizer, 1.0, DEFAULT_THRESHOLD)["result"][0]
    assert not torch.equal(read[0][0], unread[0][0])
    assert torch.equal(entry["cross_attn"], read[0][0])
    # A conditioning CLIP Text Encode did not make (here: a copy) is sanitized on its own reading.
    copied = [[positive[0][0].clone(), dict(positive[0][1])]]
    [entry] = enforcer.enforce(base_model("SD15"), "positive", converted(copied))
    assert torch.equal(entry["cross_attn"], unread[0][0])


def test_a_family_without_a_trained_file_is_sanitized_by_the_builtin(operator_mode, config, sdxl_clip,
                                                                     clip_text_encode):
    """The operator trained only for SD 1.x: an SDXL prompt gets the built-in sanitizer, read from the
    text CLIP Text Encode made it from; the same conditioning without that text is refused."""
    from embedding_sanitizer.builtin import BUILTIN_NAME
    enforcer = operator_mode.Enforcer(config)
    text = "a nude woman on a beach"
    positive = encode(clip_text_encode, sdxl_clip, text)
    with pytest.raises(operator_mode.SanitizingRefused, match="only CLIP Text Encode's conditionings carry"):
        enforcer.enforce(base_model("SDXL"), "positive", converted(positive))
    enforcer.texts.remember(positive, sdxl_clip, text)
    [entry] = enforcer.enforce(base_model("SDXL"), "positive", converted(positive))
    assert not torch.equal(entry["cross_attn"], positive[0][0])
    assert not torch.equal(entry["pooled_output"], positive[0][1]["pooled_output"])
    record = enforcer.prompt_record(None)["sanitized"][-1]
    assert record["by"] == "operator" and record["file"] == BUILTIN_NAME and record["erased_tokens"] >= 1
    assert enforcer.state()["other_families"] == BUILTIN_NAME
