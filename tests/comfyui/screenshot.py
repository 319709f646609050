"""Make docs/token_scores.png: a real run of our nodes in a headless ComfyUI, shown by the real
frontend (PyPI comfyui-frontend-package) in headless Chromium. Not a test; run by hand:

    python tests/comfyui/screenshot.py --comfyui /path/to/ComfyUI --out docs/token_scores.png [--dark]

Needs a current ComfyUI checkout whose Python has the frontend package, chromium on PATH, and
aiohttp. Uses a random-weight CLIP-L and a random (not trained) sanitizer: the colours show the
display, not a real detection.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
import cdp  # noqa: E402  (tests/cdp.py)
PROMPT = "a photo of a nude woman holding a bloody knife in a dark alley"


def make_models(base: Path, comfy_root: Path):
    """Random CLIP-L (ComfyUI's own class) and a random sanitizer whose scores vary by token."""
    code = f"""
import sys; sys.path.insert(0, {str(comfy_root)!r}); sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
from comfy.cli_args import args; args.cpu = True
import torch, comfy.sd1_clip
from safetensors.torch import save_file
from embedding_sanitizer import save_sanitizer
from comfyui.conftest import active_sanitizer
torch.set_grad_enabled(False)
m = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
g = torch.Generator().manual_seed(0)
st = {{}}
for k, p in m.transformer.state_dict().items():
    st[k] = torch.eye(*p.shape) if k.endswith("text_projection.weight") else (torch.ones(p.shape) if "norm" in k and k.endswith("weight") else torch.randn(p.shape, generator=g) * 0.02)
save_file({{k: v.half().contiguous() for k, v in st.items()}}, {str(base / 'models/text_encoders/random-clip-l.safetensors')!r})
save_sanitizer(active_sanitizer(768, 0, "sd1-clip-l", seed=3, score_std=0.15, score_bias=-1.0), {str(base / 'models/sanitizers/demo-sd15.safetensors')!r}, {{}})
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def ui_workflow():
    """UI-format graph: CLIPLoader -> CLIP Text Encode (Sanitized) -> Preview Any (report)."""
    return {
        "last_node_id": 4, "last_link_id": 3, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "CLIPLoader", "pos": [20, 40], "size": [300, 100], "flags": {}, "order": 0, "mode": 0,
             "inputs": [], "outputs": [{"name": "CLIP", "type": "CLIP", "links": [1], "slot_index": 0}],
             "properties": {}, "widgets_values": ["random-clip-l.safetensors", "stable_diffusion", "default"]},
            {"id": 2, "type": "EmbeddingSanitizerLoader", "pos": [20, 200], "size": [300, 60], "flags": {}, "order": 1,
             "mode": 0, "inputs": [], "outputs": [{"name": "sanitizer", "type": "SANITIZER", "links": [2], "slot_index": 0}],
             "properties": {}, "widgets_values": ["demo-sd15.safetensors"]},
            {"id": 3, "type": "EmbeddingSanitizerCLIPTextEncode", "pos": [350, 40], "size": [520, 300], "flags": {},
             "order": 2, "mode": 0,
             "inputs": [{"name": "clip", "type": "CLIP", "link": 1}, {"name": "sanitizer", "type": "SANITIZER", "link": 2}],
             "outputs": [{"name": "conditioning", "type": "CONDITIONING", "links": None, "slot_index": 0},
                         {"name": "report", "type": "STRING", "links": [3], "slot_index": 1}],
             "properties": {}, "widgets_values": [PROMPT, 1.0]},
            {"id": 4, "type": "PreviewAny", "pos": [900, 40], "size": [380, 200], "flags": {}, "order": 3, "mode": 0,
             "inputs": [{"name": "source", "type": "*", "link": 3}], "outputs": [], "properties": {}, "widgets_values": []},
        ],
        "links": [[1, 1, 0, 3, 0, "CLIP"], [2, 2, 0, 3, 1, "SANITIZER"], [3, 3, 1, 4, 0, "STRING"]],
    }


async def drive(cdp_port: int, url: str, out: Path, dark: bool):
    async with cdp.page(cdp_port) as page:
        call, js = page.call, page.js

        await call("Emulation.setDeviceMetricsOverride", width=1320, height=560, deviceScaleFactor=1, mobile=False)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        for _ in range(120):
            await asyncio.sleep(1)
            if await js("!!(window.app && window.app.graph && window.app.canvas)"):
                break
        else:
            raise TimeoutError("frontend did not start")
        await asyncio.sleep(3)
        palette = "dark" if dark else "light"
        await js(f"""(async () => {{
            for (const [k, v] of [['Comfy.ColorPalette', '{palette}'], ['Comfy.Minimap.Visible', false]]) {{
                try {{ await app.extensionManager.setting.set(k, v); }} catch (e) {{}}
            }}
            document.querySelectorAll('.p-dialog-mask, .p-dialog').forEach(e => e.remove());
            await app.loadGraphData({json.dumps(ui_workflow())});
            app.canvas.ds.offset = [10, 60]; app.canvas.ds.scale = 1.0; app.canvas.setDirty(true, true);
            return true; }})()""")
        await asyncio.sleep(2)
        await js("app.queuePrompt(0, 1)")
        for _ in range(180):
            await asyncio.sleep(1)
            if await js("!!document.querySelector('.es-tokens .es-tok')"):
                break
        else:
            raise TimeoutError("token scores never appeared")
        await asyncio.sleep(2)
        await js("document.querySelectorAll('.p-toast, .p-dialog-mask').forEach(e => e.remove()); app.canvas.setDirty(true, true); true")
        await asyncio.sleep(1)
        shot = await call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        # The display must stay out of the saved workflow, and a fresh node must not break.
        saved = await js("JSON.stringify(app.graph.serialize().nodes.find(n => n.id === 3).widgets_values)")
        print("widgets_values after the run:", saved)
        assert json.loads(saved) == [PROMPT, 1.0], saved
        fresh = await js("""(() => { const n = LiteGraph.createNode('EmbeddingSanitizerApply'); app.graph.add(n);
            const v = JSON.stringify(n.serialize().widgets_values); app.graph.remove(n); return v; })()""")
        print("fresh Sanitize Conditioning widgets_values:", fresh)
        assert json.loads(fresh) == [1.0, 0.0], fresh
        print("tokens shown:", await js("[...document.querySelectorAll('.es-tokens .es-tok')].map(e => e.firstChild.textContent).join(' ')"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "token_scores.png")
    ap.add_argument("--dark", action="store_true")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="es-shot-"))
    procs = []
    try:
        for sub in ("models/text_encoders", "models/sanitizers", "custom_nodes", "user", "input", "output", "temp"):
            (base / sub).mkdir(parents=True)
        (base / "custom_nodes/embedding-sanitizer").symlink_to(REPO, target_is_directory=True)
        make_models(base, a.comfyui)
        port = cdp.free_port()
        log = open(base / "server.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, str(a.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--base-directory", str(base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
            cwd=base, stdout=log, stderr=subprocess.STDOUT))
        cdp.wait_http(f"http://127.0.0.1:{port}/object_info/EmbeddingSanitizerCLIPTextEncode")
        with cdp.chromium() as cdp_port:
            asyncio.run(drive(cdp_port, f"http://127.0.0.1:{port}/", a.out, a.dark))
        print("wrote", a.out)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
