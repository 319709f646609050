"""Operator mode end to end: real headless ComfyUI servers on the CPU with a random-weight SD 1.x
checkpoint of the real layout, a 64x64 image and one step.

A test-only node wraps the UNet call and saves every context it receives (the debug log of the
conds the model actually sees); another saves a CONDITIONING as the workflow produced it. The
assertions compare the two: the plain positive text never reaches the model, its sanitized form
does (equal to what the pack's node makes with the operator's weights), the negative arrives as
encoded. Every graph is posted straight to /prompt in API format.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import uuid
from pathlib import Path

import pytest

from .comfy_env import comfy_server, get, server_folders
from .conftest import ROOT, active_sanitizer
from .test_server import run

POSITIVE = "a photo of a nude woman holding a bloody knife"
NEGATIVE = "blurry, low quality, watermark"
MIDDLE = "a naked man covered in gore"
CKPT = "tiny-sd1.safetensors"
OPERATOR_FILE = "sd1-operator.safetensors"
THRESHOLD = 0.3            # the operator's (not the default), so the tests see it applied

PROBE_NODES = '''
import os

import folder_paths
import torch
from safetensors.torch import save_file


def _path(name):
    folder = os.path.join(folder_paths.get_output_directory(), "probe")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name + ".safetensors")


class UNetContextLog:
    """Test only: a MODEL whose every UNet call saves its cross-attention context."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "log"})}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, name):
        calls = [0]

        def wrapper(apply_model, args):
            context = args["c"]["c_crossattn"]
            save_file({"context": context.detach().float().cpu().contiguous(),
                       "cond_or_uncond": torch.tensor(list(args["cond_or_uncond"]))},
                      _path(f"{name}-call{calls[0]}"))
            calls[0] += 1
            return apply_model(args["input"], args["timestep"], **args["c"])

        patched = model.clone()
        patched.set_model_unet_function_wrapper(wrapper)
        return (patched,)


class ConditioningDump:
    """Test only: saves a CONDITIONING's first embedding as the workflow produced it."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "name": ("STRING", {"default": "dump"})}}
    RETURN_TYPES = ()
    FUNCTION = "dump"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def dump(self, conditioning, name):
        save_file({"embedding": conditioning[0][0].detach().float().cpu().contiguous()}, _path(name))
        return {}


NODE_CLASS_MAPPINGS = {"UNetContextLog": UNetContextLog, "ConditioningDump": ConditioningDump}
'''


# ----------------------------------------------------------------------------- servers

@pytest.fixture(scope="session")
def checkpoint(comfy_sd, tmp_path_factory):
    from .tiny_checkpoint import write_sd1_checkpoint
    return write_sd1_checkpoint(tmp_path_factory.mktemp("ckpt") / CKPT)


@pytest.fixture(scope="session")
def sanitizer_files_e2e(comfy_sd, tmp_path_factory):
    from embedding_sanitizer import save_sanitizer
    folder = tmp_path_factory.mktemp("operator_sanitizers")
    save_sanitizer(active_sanitizer(768, 0, "sd1-clip-l", seed=3), folder / OPERATOR_FILE, {})
    save_sanitizer(active_sanitizer(2048, 1280, "sdxl-clip-lg"), folder / "sdxl-operator.safetensors", {})
    return folder


def make_base(base: Path, checkpoint: Path, sanitizers: Path, pack: bool) -> Path:
    server_folders(base, {"checkpoints": "models/checkpoints", "sanitizers": "models/sanitizers"},
                   PROBE_NODES, pack=pack)
    (base / "models/checkpoints" / CKPT).symlink_to(checkpoint)
    shutil.copy(sanitizers / OPERATOR_FILE, base / "models/sanitizers" / OPERATOR_FILE)
    return base


def launched(base: Path, operator_config: Path | None = None):
    env = {"EMBEDDING_SANITIZER_OPERATOR_CONFIG": str(operator_config) if operator_config else ""}
    return comfy_server(ROOT, base, "/object_info/UNetContextLog", env)


def write_config(folder: Path, sanitizers: dict, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "operator.json"
    path.write_text(json.dumps({"sanitizers": sanitizers, **extra}))
    return path


@pytest.fixture(scope="module")
def enforced(checkpoint, sanitizer_files_e2e, tmp_path_factory):
    base = make_base(tmp_path_factory.mktemp("enforced"), checkpoint, sanitizer_files_e2e, pack=True)
    config = write_config(base / "operator_conf", {"sd1-clip-l": OPERATOR_FILE}, min_intensity=1.0,
                          threshold=THRESHOLD)
    shutil.copy(sanitizer_files_e2e / OPERATOR_FILE, config.parent / OPERATOR_FILE)
    with launched(base, config) as url:
        yield url, base


# ----------------------------------------------------------------------------- graphs

def base_graph(tag: str, positive: str = POSITIVE):
    """Checkpoint, the UNet context log, positive / negative CLIPTextEncode, their dumps, a latent."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "log": {"class_type": "UNetContextLog", "inputs": {"model": ["ckpt", 0], "name": tag}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": positive}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": NEGATIVE}},
        "dump_pos": {"class_type": "ConditioningDump", "inputs": {"conditioning": ["pos", 0], "name": f"{tag}-plain-pos"}},
        "dump_neg": {"class_type": "ConditioningDump", "inputs": {"conditioning": ["neg", 0], "name": f"{tag}-plain-neg"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def node_sanitized(graph, tag, source, intensity, name):
    """The pack's own nodes on `source`, and a dump of their output."""
    graph["san_loader"] = {"class_type": "EmbeddingSanitizerLoader", "inputs": {"sanitizer_name": OPERATOR_FILE}}
    graph[name] = {"class_type": "EmbeddingSanitizerApply", "inputs": {
        "conditioning": [source, 0], "sanitizer": ["san_loader", 0], "intensity": intensity, "threshold": THRESHOLD}}
    graph[f"dump_{name}"] = {"class_type": "ConditioningDump", "inputs": {"conditioning": [name, 0],
                                                                          "name": f"{tag}-{name}"}}
    return [name, 0]


def ksampler(graph, positive, seed):
    graph["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": ["log", 0], "seed": seed, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": positive, "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
    return save_output(graph)


def save_output(graph):
    """Decode and save the sampler's latent: an output node, without which nothing samples."""
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}}
    graph["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "op"}}
    return graph


def custom_advanced(graph, guider: dict, seed):
    graph["guider"] = guider
    graph["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    graph["ksel"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["sched"] = {"class_type": "BasicScheduler", "inputs": {"model": ["log", 0], "scheduler": "normal",
                                                                 "steps": 1, "denoise": 1.0}}
    graph["sampler"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ksel", 0], "sigmas": ["sched", 0],
        "latent_image": ["latent", 0]}}
    return save_output(graph)


# ----------------------------------------------------------------------------- reading the logs

def load(base: Path, name: str):
    from safetensors.torch import load_file
    return load_file(str(base / "output" / "probe" / f"{name}.safetensors"))


def seen_rows(base: Path, tag: str):
    """Every context row the UNet received for this graph, one (77, 768) tensor each."""
    rows = []
    for path in sorted((base / "output" / "probe").glob(f"{tag}-call*.safetensors")):
        from safetensors.torch import load_file
        context = load_file(str(path))["context"]
        rows.extend(context[i] for i in range(context.shape[0]))
    assert rows, f"the UNet was never called for {tag}"
    return rows


def reached(rows, embedding) -> bool:
    import torch
    return any(torch.allclose(row, embedding[0], atol=1e-4, rtol=1e-4) for row in rows)


def assert_success(entry):
    assert entry.get("status", {}).get("status_str", "success") == "success", entry.get("status")


def assert_sanitized_only_positive(base, tag, sanitized_names=("expected",), plain_names=("plain-pos",)):
    rows = seen_rows(base, tag)
    for name in plain_names:
        assert not reached(rows, load(base, f"{tag}-{name}")["embedding"]), f"{name} reached the model unsanitized"
    for name in sanitized_names:
        assert reached(rows, load(base, f"{tag}-{name}")["embedding"]), f"{name} did not reach the model"
    assert reached(rows, load(base, f"{tag}-plain-neg")["embedding"]), "the negative was changed"


def tag() -> str:
    return uuid.uuid4().hex[:8]


# ----------------------------------------------------------------------------- enforced server

@pytest.mark.slow
def test_startup_log_route_and_badge(enforced):
    url, base = enforced
    log = (base / "server.log").read_text()
    assert "operator enforcement is ON" in log and OPERATOR_FILE in log
    assert "every prompt is sanitized at comfy.samplers." in log
    state = get(url + "/embedding_sanitizer/operator")
    assert state["enforced"] is True and state["ready"] is True and state["min_intensity"] == 1.0
    assert state["threshold"] == THRESHOLD
    assert state["sanitizers"]["sd1-clip-l"]["file"] == OPERATOR_FILE and state["sanitizers"]["sd1-clip-l"]["loaded"]
    assert str(base) not in json.dumps(state)                   # no paths to any client
    assert any(e.endswith("/js/operator_badge.js") for e in get(url + "/extensions"))


@pytest.mark.slow
def test_plain_ksampler_is_sanitized_and_recorded(enforced):
    """No pack node at all: CLIPTextEncode -> KSampler -> SaveImage."""
    from PIL import Image
    url, base = enforced
    t = tag()
    graph = ksampler(base_graph(t), ["pos", 0], seed=1)
    node_sanitized(graph, t, "pos", 1.0, "expected")            # what the operator's weights make of it
    entry = run(url, graph)
    assert_success(entry)
    assert_sanitized_only_positive(base, t)
    record = entry["embedding_sanitizer"]
    assert record["enforced"] is True and record["min_intensity"] == 1.0
    done = [r for r in record["sanitized"] if r["node"] == "sampler"]
    assert [r["input"] for r in done] == ["positive"]
    assert done[0]["file"] == OPERATOR_FILE and done[0]["by"] == "operator"
    assert (done[0]["intensity"], done[0]["threshold"]) == (1.0, THRESHOLD)
    image = entry["outputs"]["save"]["images"][0]
    with Image.open(base / "output" / image["subfolder"] / image["filename"]) as png:
        saved = json.loads(png.text["embedding_sanitizer"])
    assert saved["enforced"] is True and saved["sanitizers"]["sd1-clip-l"]["file"] == OPERATOR_FILE
    assert [(r["node"], r["input"], r["file"]) for r in saved["sanitized"]] == [("sampler", "positive", OPERATOR_FILE)]


@pytest.mark.slow
@pytest.mark.parametrize("intensity", [0.0, 0.5])
def test_pack_nodes_below_the_minimum_are_overridden(enforced, intensity):
    url, base = enforced
    t = tag()
    graph = base_graph(t)
    weak = node_sanitized(graph, t, "pos", intensity, "weak")
    graph["expected_node"] = {"class_type": "EmbeddingSanitizerApply", "inputs": {
        "conditioning": ["pos", 0], "sanitizer": ["san_loader", 0], "intensity": 1.0, "threshold": THRESHOLD}}
    graph["dump_expected"] = {"class_type": "ConditioningDump", "inputs": {"conditioning": ["expected_node", 0],
                                                                          "name": f"{t}-expected"}}
    entry = run(url, ksampler(graph, weak, seed=2))
    assert_success(entry)
    assert_sanitized_only_positive(base, t, plain_names=("plain-pos", "weak") if intensity else ("plain-pos",))
    done = [r for r in entry["embedding_sanitizer"]["sanitized"] if r["node"] == "sampler"]
    assert done[0]["replaced_node_sanitizing"] is True and done[0]["intensity"] == 1.0


@pytest.mark.slow
def test_pack_nodes_at_or_above_the_minimum_are_not_sanitized_twice(enforced):
    url, base = enforced
    t = tag()
    graph = base_graph(t)
    strong = node_sanitized(graph, t, "pos", 2.0, "strong")
    entry = run(url, ksampler(graph, strong, seed=3))
    assert_success(entry)
    assert_sanitized_only_positive(base, t, sanitized_names=("strong",))
    done = [r for r in entry["embedding_sanitizer"]["sanitized"] if r["node"] == "sampler"]
    assert done[0]["by"] == "node" and done[0]["intensity"] == 2.0


@pytest.mark.slow
def test_ksampler_advanced_is_sanitized(enforced):
    url, base = enforced
    t = tag()
    graph = base_graph(t)
    node_sanitized(graph, t, "pos", 1.0, "expected")
    graph["sampler"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["log", 0], "add_noise": "enable", "noise_seed": 8, "steps": 1, "cfg": 7.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": ["latent", 0], "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    assert_success(run(url, save_output(graph)))
    assert_sanitized_only_positive(base, t)


@pytest.mark.slow
def test_sampler_custom_is_sanitized(enforced):
    url, base = enforced
    if "SamplerCustom" not in get(url + "/object_info"):
        pytest.skip("this ComfyUI has no SamplerCustom")
    t = tag()
    graph = base_graph(t)
    node_sanitized(graph, t, "pos", 1.0, "expected")
    graph["ksel"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["sched"] = {"class_type": "BasicScheduler", "inputs": {"model": ["log", 0], "scheduler": "normal",
                                                                 "steps": 1, "denoise": 1.0}}
    graph["sampler"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["log", 0], "add_noise": True, "noise_seed": 4, "cfg": 7.0, "positive": ["pos", 0],
        "negative": ["neg", 0], "sampler": ["ksel", 0], "sigmas": ["sched", 0], "latent_image": ["latent", 0]}}
    assert_success(run(url, save_output(graph)))
    assert_sanitized_only_positive(base, t)


def guider_graph(kind: str, t: str):
    graph = base_graph(t)
    node_sanitized(graph, t, "pos", 1.0, "expected")
    sanitized, plain = ["expected"], ["plain-pos"]
    if kind == "BasicGuider":
        guider = {"class_type": "BasicGuider", "inputs": {"model": ["log", 0], "conditioning": ["pos", 0]}}
        return graph, guider, sanitized, plain, False
    if kind == "CFGGuider":
        guider = {"class_type": "CFGGuider", "inputs": {"model": ["log", 0], "positive": ["pos", 0],
                                                        "negative": ["neg", 0], "cfg": 7.0}}
    elif kind == "DualCFGGuider":
        graph["mid"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": MIDDLE}}
        graph["dump_mid"] = {"class_type": "ConditioningDump", "inputs": {"conditioning": ["mid", 0], "name": f"{t}-plain-mid"}}
        graph["mid_expected"] = {"class_type": "EmbeddingSanitizerApply", "inputs": {
            "conditioning": ["mid", 0], "sanitizer": ["san_loader", 0], "intensity": 1.0, "threshold": THRESHOLD}}
        graph["dump_mid_expected"] = {"class_type": "ConditioningDump", "inputs": {
            "conditioning": ["mid_expected", 0], "name": f"{t}-mid-expected"}}
        guider = {"class_type": "DualCFGGuider", "inputs": {"model": ["log", 0], "cond1": ["pos", 0], "cond2": ["mid", 0],
                                                            "negative": ["neg", 0], "cfg_conds": 7.0,
                                                            "cfg_cond2_negative": 3.0, "style": "regular"}}
        sanitized, plain = ["expected", "mid-expected"], ["plain-pos", "plain-mid"]
    else:   # PerpNegGuider: its "empty" conditioning steers the image, so it is sanitized too
        graph["empty"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": MIDDLE}}
        graph["dump_empty"] = {"class_type": "ConditioningDump", "inputs": {"conditioning": ["empty", 0], "name": f"{t}-plain-empty"}}
        guider = {"class_type": "PerpNegGuider", "inputs": {"model": ["log", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                                                            "empty_conditioning": ["empty", 0], "cfg": 7.0, "neg_scale": 1.0}}
        plain = ["plain-pos", "plain-empty"]
    return graph, guider, sanitized, plain, True


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["BasicGuider", "CFGGuider", "DualCFGGuider", "PerpNegGuider"])
def test_sampler_custom_advanced_with_each_guider(enforced, kind):
    url, base = enforced
    info = get(url + "/object_info")
    if "SamplerCustomAdvanced" not in info or kind not in info:
        pytest.skip(f"this ComfyUI predates SamplerCustomAdvanced / {kind}")
    t = tag()
    graph, guider, sanitized, plain, has_negative = guider_graph(kind, t)
    if kind == "DualCFGGuider" and "style" not in info[kind]["input"]["required"]:
        del guider["inputs"]["style"]
    assert_success(run(url, custom_advanced(graph, guider, seed=5)))
    rows = seen_rows(base, t)
    for name in plain:
        assert not reached(rows, load(base, f"{t}-{name}")["embedding"]), f"{name} reached the model unsanitized"
    for name in sanitized:
        assert reached(rows, load(base, f"{t}-{name}")["embedding"]), f"{name} did not reach the model"
    if has_negative:
        assert reached(rows, load(base, f"{t}-plain-neg")["embedding"]), "the negative was changed"


# ----------------------------------------------------------------------------- refusals

@pytest.mark.slow
def test_a_broken_trained_file_is_refused_not_replaced_by_the_builtin(checkpoint, sanitizer_files_e2e, tmp_path):
    base = make_base(tmp_path / "srv", checkpoint, sanitizer_files_e2e, pack=True)
    (base / "conf").mkdir()
    shutil.copy(sanitizer_files_e2e / "sdxl-operator.safetensors", base / "conf")
    (base / "conf" / "broken.safetensors").write_bytes(b"\x80\x04not a sanitizer")
    config = write_config(base / "conf", {"sdxl-clip-lg": "sdxl-operator.safetensors",
                                          "sd1-clip-l": "broken.safetensors"})
    with launched(base, config) as url:
        state = get(url + "/embedding_sanitizer/operator")
        assert state["ready"] is False and state["sanitizers"]["sd1-clip-l"]["loaded"] is False
        assert state["sanitizers"]["sdxl-clip-lg"]["loaded"] is True
        t = tag()
        entry = run(url, ksampler(base_graph(t), ["pos", 0], seed=6))
        status = entry["status"]
        assert status["status_str"] == "error"
        error = [m for m in status["messages"] if m[0] == "execution_error"][0][1]
        assert error["node_id"] == "sampler"
        assert "the sd1-clip-l sanitizer did not load" in error["exception_message"]
        assert not list((base / "output" / "probe").glob(f"{t}-call*")), "the UNet ran"
        assert not list((base / "output").glob("op_*.png"))
        assert "NOT LOADED" in (base / "server.log").read_text()


# ----------------------------------------------------------------------------- off

def off_run(base: Path, url: str):
    graph = ksampler(base_graph("off"), ["pos", 0], seed=7)
    entry = run(url, graph)
    assert_success(entry)
    image = entry["outputs"]["save"]["images"][0]
    return entry, base / "output" / image["subfolder"] / image["filename"]


@pytest.mark.slow
def test_switch_off_equals_a_server_without_the_pack(checkpoint, sanitizer_files_e2e, tmp_path):
    import torch
    from PIL import Image
    results = {}
    for pack in (True, False):
        base = make_base(tmp_path / f"pack-{pack}", checkpoint, sanitizer_files_e2e, pack=pack)
        with launched(base) as url:
            entry, png_path = off_run(base, url)
            try:
                route = get(url + "/embedding_sanitizer/operator")
            except urllib.error.HTTPError as exc:
                route = exc.code
            with Image.open(png_path) as png:
                results[pack] = (seen_rows(base, "off"), png.tobytes(), dict(png.text), entry, route)
    (rows_a, pixels_a, text_a, entry_a, route_a), (rows_b, pixels_b, text_b, entry_b, route_b) = results[True], results[False]
    assert len(rows_a) == len(rows_b) and all(torch.equal(a, b) for a, b in zip(rows_a, rows_b))
    assert pixels_a == pixels_b
    assert text_a == text_b and "embedding_sanitizer" not in text_a
    assert "embedding_sanitizer" not in entry_a
    assert route_a == {"enforced": False} and route_b == 404
