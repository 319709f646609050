"""Check our nodes in the real frontend (PyPI comfyui-frontend-package) of a headless ComfyUI in
headless Chromium, and write the screenshots the README shows (docs/token_scores.png and
docs/token_scores_dark.png). Not a test; run by hand:

    python tools/comfyui/screenshot.py --comfyui /path/to/ComfyUI [--out-dir docs]

Needs a current ComfyUI checkout whose Python has the frontend package, chromium on PATH, and
aiohttp. Uses a random-weight CLIP-L and a random (not trained) sanitizer: the colours show the
display, not a real detection. Checks, and prints the measurements behind them:
- after a run, the token display is as tall as its content (no empty box), the node grows by it
  into empty canvas, and never over the node below it;
- the report and the display header speak of erased tokens only, in the user's words;
- the template browser shows each example workflow's title and description and its thumbnail;
- the node library's preview of our nodes shows no "undefined";
- the loader's label is not cut at the example workflows' width;
- the display stays out of saved workflows, and workflows saved by earlier versions still load.
Exits with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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
import cdp  # noqa: E402  (tools/cdp.py)
PROMPT = "a photo of a nude woman holding a bloody knife in a dark alley"
SANITIZER = "demo-sd15.safetensors"
EXAMPLE_SANITIZER = "built-in (any text encoder)"      # what the example workflows load
OUR_NODES = ("Load Embedding Sanitizer", "Sanitize Conditioning", "CLIP Text Encode (Sanitized)",
             "Train Embedding Sanitizer")
SAVED_WORKFLOWS = sorted((REPO / "tests" / "comfyui" / "data").glob("saved_*_workflow.json"))


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
torch.set_num_threads(1)
m = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
g = torch.Generator().manual_seed(0)
st = {{}}
for k, p in m.transformer.state_dict().items():
    st[k] = torch.eye(*p.shape) if k.endswith("text_projection.weight") else (torch.ones(p.shape) if "norm" in k and k.endswith("weight") else torch.randn(p.shape, generator=g) * 0.02)
save_file({{k: v.half().contiguous() for k, v in st.items()}}, {str(base / 'models/text_encoders/random-clip-l.safetensors')!r})
save_sanitizer(active_sanitizer(768, 0, "sd1-clip-l", seed=3, score_std=0.15, score_bias=-1.0), {str(base / 'models/sanitizers' / SANITIZER)!r}, {{}})
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def ui_workflow(below: bool = False, prompt: str = PROMPT):
    """UI-format graph: CLIPLoader -> CLIP Text Encode (Sanitized) -> Preview Any (report); with
    `below`, a CLIP Text Encode 30 canvas units under the sanitized one."""
    nodes = [
        {"id": 1, "type": "CLIPLoader", "pos": [20, 40], "size": [300, 100], "flags": {}, "order": 0, "mode": 0,
         "inputs": [], "outputs": [{"name": "CLIP", "type": "CLIP", "links": [1], "slot_index": 0}],
         "properties": {}, "widgets_values": ["random-clip-l.safetensors", "stable_diffusion", "default"]},
        {"id": 2, "type": "EmbeddingSanitizerLoader", "pos": [20, 200], "size": [300, 60], "flags": {}, "order": 1,
         "mode": 0, "inputs": [], "outputs": [{"name": "sanitizer", "type": "SANITIZER", "links": [2], "slot_index": 0}],
         "properties": {}, "widgets_values": [SANITIZER]},
        {"id": 3, "type": "EmbeddingSanitizerCLIPTextEncode", "pos": [350, 40], "size": [520, 240], "flags": {},
         "order": 2, "mode": 0,
         "inputs": [{"name": "clip", "type": "CLIP", "link": 1}, {"name": "sanitizer", "type": "SANITIZER", "link": 2}],
         "outputs": [{"name": "conditioning", "type": "CONDITIONING", "links": None, "slot_index": 0},
                     {"name": "report", "type": "STRING", "links": [3], "slot_index": 1}],
         "properties": {}, "widgets_values": [prompt, 1.0]},
        {"id": 4, "type": "PreviewAny", "pos": [890, 40], "size": [370, 200], "flags": {}, "order": 3, "mode": 0,
         "inputs": [{"name": "source", "type": "*", "link": 3}], "outputs": [], "properties": {}, "widgets_values": []},
    ]
    if below:
        nodes.append({"id": 5, "type": "CLIPTextEncode", "pos": [350, 400], "size": [520, 120], "flags": {}, "order": 4,
                      "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": None}],
                      "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": None}],
                      "properties": {}, "widgets_values": ["blurry"]})
    return {"last_node_id": len(nodes), "last_link_id": 3, "version": 0.4, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [10, 70]}},
            "nodes": nodes,
            "links": [[1, 1, 0, 3, 0, "CLIP"], [2, 2, 0, 3, 1, "SANITIZER"], [3, 3, 1, 4, 0, "STRING"]]}


# The encode node (3), its display and the node below it (5), in canvas units.
MEASURE_JS = """(() => {
  const node = app.graph.getNodeById(3), below = app.graph.getNodeById(5);
  const box = node.widgets.find((w) => w.name === "sanitizer_token_scores")?.element;
  return {height: node.size[1], bottom: node.pos[1] + node.size[1], below_top: below ? below.boundingRect[1] : null,
          box: box ? box.clientHeight : 0, content: box ? box.firstElementChild.offsetHeight : 0,
          prompt_box: node.widgets.find((w) => w.name === "text").computedHeight};
})()"""
DISPLAY_JS = "app.graph.getNodeById(3).widgets.find((w) => w.name === 'sanitizer_token_scores')?.element"

# Texts a node's widgets draw on the canvas (the frontend cuts a label with "…").
DRAWN_JS = """((node) => {
  const texts = [], fillText = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) { texts.push(String(text)); return fillText.call(this, text, ...rest); };
  const ctx = app.canvas.ctx;
  ctx.save();
  ctx.font = app.canvas.inner_text_font;          // as the canvas draws widgets
  try { node.drawWidgets(ctx, {lowQuality: false, editorAlpha: 1}); }
  finally { CanvasRenderingContext2D.prototype.fillText = fillText; ctx.restore(); }
  return texts;
})"""


class Session:
    def __init__(self, page, problems):
        self.call, self.js, self.problems = page.call, page.js, problems

    def check(self, ok, what):
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            self.problems.append(what)

    async def until(self, expr, what, timeout=300):
        for _ in range(timeout):
            if await self.js(expr):
                return
            await asyncio.sleep(1)
        raise TimeoutError(what)

    async def open_app(self, url, dark, height=560):
        await self.call("Emulation.setDeviceMetricsOverride", width=1320, height=height, deviceScaleFactor=1,
                        mobile=False)
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(2)
        await self.until("!!(window.app && window.app.graph && window.app.canvas)", "frontend did not start", 180)
        await asyncio.sleep(3)
        palette = "dark" if dark else "light"
        await self.js(f"""(async () => {{
            for (const [k, v] of [['Comfy.ColorPalette', '{palette}'], ['Comfy.Minimap.Visible', false]]) {{
                try {{ await app.extensionManager.setting.set(k, v); }} catch (e) {{}}
            }}
            document.querySelectorAll('.p-dialog-mask, .p-dialog').forEach(e => e.remove());
            return true; }})()""")

    async def load(self, workflow):
        await self.js(f"""(async () => {{
            await app.loadGraphData({json.dumps(workflow)});
            return true; }})()""")
        await asyncio.sleep(2)

    async def run(self):
        """Queue the loaded graph; wait for the encode node's (new) token display."""
        await self.js("(async () => { await app.queuePrompt(0, 1); return true; })()")
        await self.until(f"!!{DISPLAY_JS}?.querySelector('.es-tok')", "token scores never appeared")
        await asyncio.sleep(2)
        await self.js("document.querySelectorAll('.p-toast, .p-dialog-mask').forEach(e => e.remove()); "
                      "app.canvas.setDirty(true, true); true")
        await asyncio.sleep(1)


async def screenshot(s: Session, url: str, out: Path, dark: bool):
    """The README's picture; with the light theme, the checks of the display after a run."""
    await s.open_app(url, dark)
    await s.load(ui_workflow())
    before = await s.js("app.graph.getNodeById(3).size[1]")
    await s.run()
    shot = await s.call("Page.captureScreenshot", format="png")
    out.write_bytes(base64.b64decode(shot["data"]))
    print("wrote", out)
    if dark:
        return
    m = await s.js(MEASURE_JS)
    print(f"      encode node {before:.0f} -> {m['height']:.0f} tall; display {m['box']} px for {m['content']} px "
          f"of content; prompt box {m['prompt_box']:.0f}")
    s.check(abs(m["box"] - m["content"]) <= 1, "the display is as tall as its content")
    s.check(m["height"] >= before + m["content"] - 1, "the node grew by the display into empty canvas")
    saved = await s.js("JSON.stringify(app.graph.serialize().nodes.find(n => n.id === 3).widgets_values)")
    s.check(json.loads(saved) == [PROMPT, 1.0], f"widgets_values after the run are the prompt and intensity: {saved}")
    fresh = await s.js("""(() => { const n = LiteGraph.createNode('EmbeddingSanitizerApply'); app.graph.add(n);
        const v = JSON.stringify(n.serialize().widgets_values); app.graph.remove(n); return v; })()""")
    defaults = [spec[1]["default"] for name, spec in
                json.loads(cdp.wait_http(url + "object_info/EmbeddingSanitizerApply"))["EmbeddingSanitizerApply"]
                ["input"]["required"].items() if name in ("intensity", "threshold")]
    s.check(json.loads(fresh) == defaults, f"a new Sanitize Conditioning saves its intensity and threshold: {fresh}")
    await check_report(s)


async def check_report(s: Session):
    shown = await s.js(f"""(() => ({{
        head: {DISPLAY_JS}.querySelector('.es-head').textContent,
        struck: {DISPLAY_JS}.querySelectorAll('.es-erased').length,
        report: app.graph.getNodeById(4).widgets.map((w) => w.value).join('\\n')}}))()""")
    print("      display header:", shown["head"])
    print("      report:", shown["report"].replace("\n", " | ")[:200])
    words = shown["head"] + shown["report"]
    s.check("cond" not in words and "flagged" not in words, "no 'cond 0' or 'flagged' in the header or report")
    erased_line = next(line for line in shown["report"].splitlines() if line.startswith("erased:"))
    listed = 0 if erased_line == "erased: none" else erased_line.count(" (")
    s.check(listed == shown["struck"], f"the report's 'erased:' line lists the {shown['struck']} struck tokens ({listed})")


async def check_node_below(s: Session):
    await s.load(ui_workflow(below=True, prompt=PROMPT + ", at night"))
    before = await s.js(MEASURE_JS)
    await s.run()
    m = await s.js(MEASURE_JS)
    print(f"      with a node below (top at {m['below_top']:.0f}): encode node {before['height']:.0f} -> "
          f"{m['height']:.0f} tall, bottom {m['bottom']:.0f}; display {m['box']} px for {m['content']} px; "
          f"prompt box {before['prompt_box']:.0f} -> {m['prompt_box']:.0f}")
    s.check(m["bottom"] <= m["below_top"], "the grown node stays above the node below it")
    s.check(abs(m["box"] - m["content"]) <= 1, "the display still shows all its content")


async def check_templates(s: Session, url: str):
    await s.js("(async () => { await app.extensionManager.command.execute('Comfy.BrowseTemplates'); return true; })()")
    await s.until("document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length > 0",
                  "the template browser shows no templates", 60)
    await asyncio.sleep(3)
    cards = await s.js("""(async () => {
        for (const b of document.querySelectorAll('.p-dialog .pi-table')) b.closest('button')?.click();
        await new Promise((r) => setTimeout(r, 1500));
        const out = {};
        for (const c of document.querySelectorAll('[data-testid^="template-workflow-"]')) {
            c.scrollIntoView();      // thumbnails load when they come into view
            let img = null;
            for (let i = 0; i < 50 && !(img?.complete && img.naturalWidth > 0); i++) {
                await new Promise((r) => setTimeout(r, 100));
                img = c.querySelector('img');
            }
            out[c.dataset.testid.slice('template-workflow-'.length)] = {
                title: c.querySelector('h3')?.textContent.trim(), description: c.querySelector('p')?.textContent.trim(),
                thumbnail: !!(img?.complete && img.naturalWidth > 0)};
        }
        return out; })()""")
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        want = json.loads(path.read_text())["extra"]["template"]
        got = cards.get(path.stem, {})
        print(f"      {path.stem}: {got.get('title')!r} / {got.get('description')!r}, thumbnail {got.get('thumbnail')}")
        s.check(got.get("title") == want["title"] and got.get("description") == want["description"],
                f"the template card of {path.stem} shows its title and description")
        jpeg = cdp.wait_http(f"{url}api/workflow_templates/embedding-sanitizer/{path.stem}.jpg", 10)
        s.check(jpeg[:3] == b"\xff\xd8\xff" and got.get("thumbnail"), f"the thumbnail of {path.stem} shows")
    await s.js("document.querySelectorAll('.p-dialog-mask, .p-dialog').forEach(e => e.remove()); true")


async def check_node_library(s: Session):
    await s.js("""(async () => { await app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library');
        return true; })()""")
    await asyncio.sleep(2)
    for name in OUR_NODES:
        where = await s.js(f"""(async () => {{
            const input = document.querySelector('input[placeholder*="Search"]');
            input.focus(); input.value = {json.dumps(name)}; input.dispatchEvent(new Event('input', {{bubbles: true}}));
            await new Promise((r) => setTimeout(r, 1500));
            const label = [...document.querySelectorAll('.node-label')].find((e) => e.textContent.trim() === {json.dumps(name)});
            const r = label.getBoundingClientRect(); return [r.x + 10, r.y + r.height / 2]; }})()""")
        for x, y in ((5, 5), where):
            await s.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
        preview = await s.js("document.querySelector('._sb_node_preview')?.innerText ?? ''")
        rows = " | ".join(line for line in preview.splitlines()[2:] if line.strip() and line not in "◀▶")
        print(f"      preview of {name}: {rows[:160]}")
        s.check(bool(preview) and "undefined" not in preview, f"the node library's preview of {name} shows no 'undefined'")
    await s.js("""(async () => { await app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library');
        return true; })()""")


async def check_loader_label(s: Session):
    example = json.loads((REPO / "example_workflows" / "sd15_txt2img_sanitized.json").read_text())
    await s.load(example)
    drawn = await s.js(f"""(() => {{ const n = app.graph.nodes.find((n) => n.type === 'EmbeddingSanitizerLoader');
        const w = n.widgets[0], label = w.label, shown = {DRAWN_JS}(n);
        w.label = w.name; const plain = {DRAWN_JS}(n); w.label = label;
        return {{width: n.size[0], shown, plain}}; }})()""")
    print(f"      loader {drawn['width']:.0f} wide draws {drawn['shown']}; labelled by its input name: {drawn['plain']}")
    s.check("…" not in drawn["shown"] and EXAMPLE_SANITIZER in drawn["shown"],
            "the loader's label and file name are drawn whole at the example's width")


async def check_saved_workflows(s: Session):
    for path in SAVED_WORKFLOWS:
        data = json.loads(path.read_text())
        await s.load(data)
        ours = {n["id"]: n["widgets_values"] for n in data["nodes"] if n["type"].startswith("EmbeddingSanitizer")}
        loaded = json.loads(await s.js("JSON.stringify(Object.fromEntries(app.graph.serialize().nodes"
                                       ".filter((n) => n.type.startsWith('EmbeddingSanitizer'))"
                                       ".map((n) => [n.id, n.widgets_values])))"))
        s.check({int(k): v for k, v in loaded.items()} == ours, f"{path.name} loads with its widget values")


async def drive(cdp_port: int, url: str, out_dir: Path) -> list[str]:
    problems = []
    async with cdp.page(cdp_port) as page:
        s = Session(page, problems)
        await screenshot(s, url, out_dir / "token_scores_dark.png", dark=True)
        await screenshot(s, url, out_dir / "token_scores.png", dark=False)
        await s.open_app(url, dark=False, height=800)
        await check_node_below(s)
        await check_templates(s, url)
        await check_node_library(s)
        await check_loader_label(s)
        await check_saved_workflows(s)
    return problems


@contextlib.contextmanager
def comfy_frontend(comfyui: Path):
    """A headless ComfyUI with this pack, a random CLIP-L and sanitizer; yields its URL."""
    base = Path(tempfile.mkdtemp(prefix="es-shot-"))
    proc = None
    try:
        for sub in ("models/text_encoders", "models/sanitizers", "custom_nodes", "user", "input", "output", "temp"):
            (base / sub).mkdir(parents=True)
        (base / "custom_nodes/embedding-sanitizer").symlink_to(REPO, target_is_directory=True)
        make_models(base, comfyui)
        port = cdp.free_port()
        log = open(base / "server.log", "w")
        # Every run executes again (no cache), so each theme's screenshot shows a fresh display.
        proc = subprocess.Popen(
            [sys.executable, str(comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--base-directory", str(base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
             "--cache-none"],
            cwd=base, stdout=log, stderr=subprocess.STDOUT)
        cdp.wait_http(f"http://127.0.0.1:{port}/object_info/EmbeddingSanitizerCLIPTextEncode", 600)
        yield f"http://127.0.0.1:{port}/"
    finally:
        if proc is not None:
            cdp.stop(proc)
        if os.environ.get("KEEP") is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("kept", base)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True, type=Path)
    ap.add_argument("--out-dir", type=Path, default=REPO / "docs")
    a = ap.parse_args()
    with comfy_frontend(a.comfyui) as url, cdp.chromium() as cdp_port:
        problems = asyncio.run(drive(cdp_port, url, a.out_dir))
    if problems:
        print(f"{len(problems)} check(s) failed:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
