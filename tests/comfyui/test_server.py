"""End to end: a headless ComfyUI server on 127.0.0.1 runs an API-format workflow with our nodes.

CLIPLoader loads a random-weight CLIP-L (ComfyUI's own SD 1.x classes, saved as a safetensors file in
a temporary models folder), CLIPTextEncode encodes, our nodes sanitize, and a test-only output node
records the conditioning. We assert on /history, including our node's token scores.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from embedding_sanitizer.builtin import BUILTIN_NAME
from embedding_sanitizer.model import DEFAULT_THRESHOLD

from .comfy_env import comfy_server, get, server_folders
from .conftest import ROOT, active_sanitizer

PROMPT = "a photo of a nude woman holding a bloody knife"

PROBE_NODE = '''
import hashlib

class ConditioningProbe:
    """Test-only output node: reports what a CONDITIONING holds."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}
    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def probe(self, conditioning):
        t, extras = conditioning[0][0], conditioning[0][1]
        digest = hashlib.sha256(t.float().cpu().numpy().tobytes()).hexdigest()
        return {"ui": {"shape": list(t.shape), "dtype": [str(t.dtype)], "digest": [digest],
                       "keys": sorted(extras.keys())}}

NODE_CLASS_MAPPINGS = {"ConditioningProbe": ConditioningProbe}
'''


def post(url, data):
    req = urllib.request.Request(url, json.dumps(data).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def write_random_clip_l(path: Path, comfy_sd):
    """A full-size CLIP-L text encoder with random weights, from ComfyUI's own SDClipModel."""
    import comfy.sd1_clip
    import torch
    from safetensors.torch import save_file
    with torch.no_grad():
        model = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
        g = torch.Generator().manual_seed(0)
        state = {}
        for name, p in model.transformer.state_dict().items():
            if name.endswith("text_projection.weight"):
                state[name] = torch.eye(*p.shape)
            elif "norm" in name and name.endswith("weight"):
                state[name] = torch.ones(p.shape)
            else:
                state[name] = torch.randn(p.shape, generator=g) * 0.02
        save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))


@pytest.fixture(scope="module")
def server(comfy_sd, tmp_path_factory):
    from embedding_sanitizer import save_sanitizer
    base = tmp_path_factory.mktemp("comfy_base")
    server_folders(base, {"clip": "models/clip", "text_encoders": "models/clip",
                          "sanitizers": "models/sanitizers"}, PROBE_NODE)
    write_random_clip_l(base / "models/clip/random-clip-l.safetensors", comfy_sd)
    save_sanitizer(active_sanitizer(768, 0, "sd1-clip-l"), base / "models/sanitizers/sd1-e2e.safetensors", {})
    with comfy_server(ROOT, base, "/object_info/EmbeddingSanitizerApply") as url:
        yield url, base


def workflow(text=PROMPT, intensity=1.0):
    return {
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "random-clip-l.safetensors", "type": "stable_diffusion"}},
        "2": {"class_type": "EmbeddingSanitizerLoader", "inputs": {"sanitizer_name": "sd1-e2e.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": text}},
        "4": {"class_type": "EmbeddingSanitizerApply", "inputs": {
            "conditioning": ["3", 0], "sanitizer": ["2", 0], "intensity": intensity, "threshold": DEFAULT_THRESHOLD,
            "clip": ["1", 0], "text": text}},
        "5": {"class_type": "EmbeddingSanitizerCLIPTextEncode", "inputs": {
            "clip": ["1", 0], "text": text, "sanitizer": ["2", 0], "intensity": intensity}},
        "6": {"class_type": "ConditioningProbe", "inputs": {"conditioning": ["3", 0]}},
        "7": {"class_type": "ConditioningProbe", "inputs": {"conditioning": ["4", 0]}},
        "8": {"class_type": "ConditioningProbe", "inputs": {"conditioning": ["5", 0]}},
    }


def run(url, graph, timeout=300):
    status, body = post(url + "/prompt", {"prompt": graph, "client_id": "embedding-sanitizer-test"})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = get(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("outputs") is not None \
                and (history[prompt_id].get("status", {}).get("completed", True) or
                     history[prompt_id].get("status", {}).get("status_str") == "error"):
            return history[prompt_id]
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout}s")


@pytest.mark.slow
def test_server_runs_our_nodes(server):
    url, base = server
    info = get(url + "/object_info/EmbeddingSanitizerApply")["EmbeddingSanitizerApply"]
    assert info["category"] == "conditioning/sanitizer" and info["display_name"] == "Sanitize Conditioning"
    loader = get(url + "/object_info/EmbeddingSanitizerLoader")["EmbeddingSanitizerLoader"]
    assert loader["input"]["required"]["sanitizer_name"][0] == [BUILTIN_NAME, "sd1-e2e.safetensors"]
    served = get(url + "/extensions")
    assert any(e.endswith("/js/token_scores.js") for e in served) and any(e.endswith("/js/train_seed.js") for e in served)

    entry = run(url, workflow())
    assert entry.get("status", {}).get("status_str", "success") == "success", entry.get("status")
    out = entry["outputs"]
    scores = out["4"]["token_scores"][0]
    assert [t["token"] for t in scores["tokens"]] == PROMPT.split()
    assert scores["labelled"] is True and 0.0 <= scores["prompt_score"] <= 1.0
    which, first = out["4"]["text"][0].splitlines()[:2]
    assert which.startswith("sanitizer: trained for") and first.startswith("prompt score")     # no "cond 0" jargon
    assert [t["token"] for t in out["5"]["token_scores"][0]["tokens"]] == PROMPT.split()
    plain, sanitized, encoded = out["6"], out["7"], out["8"]
    assert plain["shape"] == sanitized["shape"] == encoded["shape"] == [1, 77, 768]
    assert sorted(plain["keys"] + ["embedding_sanitizer"]) == sanitized["keys"]   # every key kept, + the record
    assert plain["digest"] != sanitized["digest"]                 # the embedding was sanitized
    assert sanitized["digest"] == encoded["digest"]               # the one-node encoder agrees


@pytest.mark.slow
def test_server_refuses_out_of_range_intensity(server):
    url, _ = server
    status, body = post(url + "/prompt", {"prompt": workflow(intensity=9.0)})
    # 2024 ComfyUI answers 200 and runs the still-valid outputs; newer ones may answer 400.
    assert status in (200, 400), body
    errors = body["node_errors"]
    assert {"4", "5"} <= set(errors), errors
    for node in ("4", "5"):
        assert errors[node]["errors"][0]["type"] == "value_bigger_than_max"
        assert errors[node]["class_type"].startswith("EmbeddingSanitizer")
