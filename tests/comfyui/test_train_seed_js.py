"""web/js/train_seed.js, run by Node.js against a stand-in for the frontend's app module."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .comfy_env import REPO

CHECK = """
import { extension } from "./scripts/app.js";
import "./extensions/pack/js/train_seed.js";
const make = (comfyClass) => {
  const control = { name: "control_after_generate", value: "randomize",
                    options: { values: ["fixed", "increment", "decrement", "randomize"] } };
  return { comfyClass, control, widgets: [{ name: "seed", value: 0, linkedWidgets: [control] }] };
};
const train = make("EmbeddingSanitizerTrain"), sampler = make("KSampler");
extension().nodeCreated(train);
extension().nodeCreated(sampler);
extension().nodeCreated({ comfyClass: "EmbeddingSanitizerTrain" });   // no widgets yet: nothing to do
console.log(train.control.value, sampler.control.value);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_a_new_train_node_keeps_its_seed_fixed(tmp_path):
    # The file imports ../../../scripts/app.js, as the frontend serves it under /extensions/<pack>/js/.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(
        "let registered;\nexport const app = { registerExtension: (e) => { registered = e; } };\n"
        "export const extension = () => registered;\n")
    (tmp_path / "extensions" / "pack" / "js").mkdir(parents=True)
    shutil.copy(REPO / "web" / "js" / "train_seed.js", tmp_path / "extensions" / "pack" / "js")
    (tmp_path / "check.mjs").write_text(CHECK)
    out = subprocess.run(["node", str(tmp_path / "check.mjs")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fixed", "randomize"]
