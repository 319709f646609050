"""example_workflows/*.json (UI format) use only existing nodes, with widget values that fit them."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from embedding_sanitizer.builtin import BUILTIN_NAME

from .comfy_env import REPO

WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
# Workflows saved by earlier versions of the pack: they must keep loading.
SAVED = sorted((Path(__file__).resolve().parent / "data").glob("saved_*_workflow.json"))
# Core nodes of ComfyUI 0.3.x that the March 2024 ComfyUI of CI lacks (or has with other widgets).
NEWER_NODES = {"FluxGuidance", "EmptySD3LatentImage", "DualCLIPLoader", "UNETLoader"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = {"seed", "noise_seed"}   # the frontend adds a "control after generate" value after these


def widget_spec(cls):
    """[(name, type or combo list, options)] of the inputs the frontend shows as widgets, in order."""
    spec = cls.INPUT_TYPES()
    out = []
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, (list, tuple)) or (kind in WIDGET_TYPES and not opts.get("forceInput")):
                out.append((name, kind, opts))
                if kind == "INT" and (name in SEED_NAMES or opts.get("control_after_generate")):
                    out.append((name + ":control", "CONTROL", {}))
    return out


def socket_inputs(cls):
    spec = cls.INPUT_TYPES()
    return {name: entry[0] for group in ("required", "optional") for name, entry in spec.get(group, {}).items()
            if not isinstance(entry[0], (list, tuple)) and (entry[0] not in WIDGET_TYPES or
                                                             (len(entry) > 1 and entry[1].get("forceInput")))}


def newer_core_nodes() -> dict:
    """ComfyUI 0.3.x's FluxGuidance / EmptySD3LatentImage live in comfy_extras (V3 node classes)."""
    found = {}
    for name in ("comfy_extras.nodes_flux", "comfy_extras.nodes_sd3"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
        for cls in vars(module).values():
            if isinstance(cls, type) and hasattr(cls, "define_schema") and cls.__module__ == name:
                try:
                    found[cls.define_schema().node_id] = cls
                except Exception:
                    continue
    return found


@pytest.fixture(scope="module")
def all_nodes(pack, comfy_sd):
    import nodes as comfy_nodes
    return {**newer_core_nodes(), **comfy_nodes.NODE_CLASS_MAPPINGS, **pack.NODE_CLASS_MAPPINGS}


def test_there_are_the_examples():
    names = {p.name for p in WORKFLOWS}
    assert {"sd15_txt2img_sanitized.json", "sdxl_txt2img_sanitized.json", "train_sanitizer.json",
            "flux_txt2img_sanitized.json", "sd35_txt2img_sanitized.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_a_thumbnail(path):
    """The template browser asks for <name>.jpg beside each workflow (tools/make_workflow_thumbnails.py)."""
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"run tools/make_workflow_thumbnails.py for {path.name}"
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"                 # a JPEG


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_a_title_and_description(path):
    """The template browser shows a pack's templates by file name only, as title and again as
    description; web/js/template_info.js shows these instead."""
    info = json.loads(path.read_text())["extra"]["template"]
    title, description = info["title"], info["description"]
    assert isinstance(title, str) and isinstance(description, str)
    assert title.strip() and title != path.stem
    assert description.strip() and description != path.stem.replace("_", " ")
    assert len(description) <= 60, "a template card shows two lines of description"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_a_note_on_what_it_does_and_how_to_train(path):
    """A first run opens a template with nothing trained: its Note (a core frontend node, one text
    widget) says what it does, that the built-in sanitizer needs no file, and how to train a precise
    one. It is the one text: no `extra.info` (which no frontend shows) repeats it."""
    data = json.loads(path.read_text())
    notes = [n for n in data["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and notes[0]["properties"] == {"text": ""}
    [text] = notes[0]["widgets_values"]
    assert "train" in text.lower() and "Load Embedding Sanitizer" in text
    assert "info" not in data["extra"]
    if path.name != "train_sanitizer.json":
        assert "built-in sanitizer, which needs no file" in text


@pytest.mark.parametrize("path", WORKFLOWS + SAVED, ids=lambda p: p.name)
def test_workflow_matches_node_definitions(path, all_nodes, pack, comfy_sd):
    data = json.loads(path.read_text())
    if not hasattr(comfy_sd, "CLIPType") or not hasattr(comfy_sd.CLIPType, "FLUX"):
        newer = sorted({n["type"] for n in data["nodes"]} & NEWER_NODES)
        if newer:
            pytest.skip(f"{path.name} uses {newer} of ComfyUI 0.3.x; run tools/comfyui/run_newer_comfyui.sh")
    data["nodes"] = [n for n in data["nodes"] if n["type"] not in FRONTEND_ONLY]
    nodes_by_id = {n["id"]: n for n in data["nodes"]}
    assert len(nodes_by_id) == len(data["nodes"])
    used_ours = False
    for node in data["nodes"]:
        assert node["type"] in all_nodes, f"{path.name}: unknown node {node['type']}"
        cls = all_nodes[node["type"]]
        used_ours |= node["type"] in pack.NODE_CLASS_MAPPINGS
        spec = widget_spec(cls)
        values = node.get("widgets_values", [])
        assert len(values) == len(spec), f"{path.name} {node['type']}: {len(values)} widget values, expects {[s[0] for s in spec]}"
        for (name, kind, opts), value in zip(spec, values):
            where = f"{path.name} {node['type']}.{name}"
            if kind == "CONTROL":
                assert value in ("fixed", "increment", "decrement", "randomize"), where
            elif isinstance(kind, (list, tuple)):
                assert isinstance(value, str), where
                # File dropdowns depend on the user's disk; fixed choices must match exactly.
                if node["type"] in pack.NODE_CLASS_MAPPINGS or name in ("sampler_name", "scheduler"):
                    if not name.endswith("_name"):
                        assert value in kind, f"{where}: {value!r} not in {kind}"
                    elif name == "sanitizer_name":
                        assert kind[0] == BUILTIN_NAME, where
                        if path.parent.name == "example_workflows":     # they work without a file
                            assert value == BUILTIN_NAME, where
                        else:                                           # a user's saved workflow
                            assert value == BUILTIN_NAME or value.endswith(".safetensors"), where
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), where
            elif kind == "STRING":
                assert isinstance(value, str), where
            else:
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                if kind == "INT":
                    assert float(value).is_integer(), where
                assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {value} out of range"
        # Every socket on the node is a real input of the class, with the right type.
        sockets = socket_inputs(cls)
        for inp in node.get("inputs", []):
            if "widget" in inp:
                continue
            assert sockets.get(inp["name"]) == inp["type"], f"{path.name} {node['type']}: input {inp['name']}"
        assert [o["type"] for o in node.get("outputs", [])] == list(cls.RETURN_TYPES), f"{path.name} {node['type']} outputs"
    assert used_ours, f"{path.name} does not use the sanitizer nodes"
    for link_id, src, src_slot, dst, dst_slot, kind in data["links"]:
        s, d = nodes_by_id[src], nodes_by_id[dst]
        assert s["outputs"][src_slot]["type"] == kind == d["inputs"][dst_slot]["type"], f"{path.name} link {link_id}"
        assert link_id in (s["outputs"][src_slot]["links"] or []) and d["inputs"][dst_slot]["link"] == link_id
    # Required sockets are all connected (the workflow can be queued as is).
    for node in data["nodes"]:
        required = node["type"] in all_nodes and all_nodes[node["type"]].INPUT_TYPES().get("required", {})
        for inp in node.get("inputs", []):
            if inp["name"] in required:
                assert inp["link"] is not None, f"{path.name} {node['type']}.{inp['name']} is not connected"
