"""Check the Embedding Sanitizer accordion in a real browser against a running webui (A1111 or
Forge, started with its UI and --api by run_in_webui.sh's "browser" phase), and write the
screenshots the README shows. Not a test; run by hand (needs chromium on PATH and aiohttp):

    python tools/a1111/screenshot.py http://127.0.0.1:7899 [--out-dir docs]

With random weights (checkpoint and sanitizer) the colours show the display, not a real
detection. Checks, in light and dark theme: the toggle shows on the collapsed accordion;
after a sanitized generation the accordion says so with that prompt's tokens; after a
generation with the toggle off it says "not sanitized" and the old tokens are gone; a
mismatching sanitizer's warning reaches the accordion, escaped, in red.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cdp  # noqa: E402  (tools/cdp.py)

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a photo of a nude woman holding a bloody knife"
ACCORDION = "#embedding_sanitizer_txt2img"


def set_option(url, key, value):
    req = urllib.request.Request(url + "/sdapi/v1/options", json.dumps({key: value}).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=60).read()


async def drive(cdp_port: int, url: str, out_dir: Path, dark: bool) -> list[str]:
    problems = []
    async with cdp.page(cdp_port) as page:
        call, js = page.call, page.js

        async def until(expr, what, timeout=600):
            for _ in range(timeout):
                if await js(expr):
                    return
                await asyncio.sleep(1)
            raise TimeoutError(what)

        async def shot(name):
            box = await js(f"""(() => {{ const r = gradioApp().querySelector('{ACCORDION}').getBoundingClientRect();
                return [r.x, r.y, r.width, r.height]; }})()""")
            x, y, w, h = box
            data = await call("Page.captureScreenshot", format="png",
                              clip={"x": max(0, x - 8), "y": max(0, y - 8), "width": w + 16, "height": h + 16,
                                    "scale": 1})
            path = out_dir / f"{name}{'_dark' if dark else ''}.png"
            path.write_bytes(base64.b64decode(data["data"]))
            print("wrote", path)

        def check(ok, what):
            print(("PASS " if ok else "FAIL ") + what, flush=True)
            if not ok:
                problems.append(what)

        display = f"(gradioApp().querySelector('{ACCORDION}_tokens') || {{}}).innerText || ''"

        async def generate(expect, what):
            await js(f"gradioApp().querySelector('{ACCORDION}_tokens').dataset.before = {display}; true")
            await js("gradioApp().querySelector('#txt2img_generate').click(); true")
            await until(f"({display}).includes({json.dumps(expect)})", what)

        await call("Emulation.setDeviceMetricsOverride", width=1400, height=1100, deviceScaleFactor=1, mobile=False)
        await call("Page.enable")
        await call("Page.navigate", url=url + ("/?__theme=dark" if dark else "/"))
        await until(f"typeof gradioApp === 'function' && !!gradioApp().querySelector('{ACCORDION}')",
                    "the accordion appears", 300)
        await asyncio.sleep(3)
        await js(f"""(() => {{ const t = gradioApp().querySelector('#txt2img_prompt textarea');
            t.value = {json.dumps(PROMPT)}; updateInput(t);
            // tiny, fast generations: the checkpoint is random and the CPU slow
            for (const [id, v] of [['steps', 1], ['width', 64], ['height', 64]]) {{
                const box = gradioApp().querySelector(`#txt2img_${{id}} input[type=number]`);
                if (box) {{ box.value = v; updateInput(box); }}
            }}
            return true; }})()""")
        header_box = f"gradioApp().querySelector('{ACCORDION} .input-accordion-checkbox')"
        check(await js(f"!!{header_box}"), "the on/off box is in the accordion's header")
        await shot("a1111_accordion_collapsed")
        await js(f"{header_box}.click(); true")
        await js(f"""(() => {{ const a = gradioApp().querySelector('{ACCORDION}');
            if (!a.querySelector('{ACCORDION}_intensity') || a.querySelector('{ACCORDION}_intensity').offsetParent === null)
                a.querySelector('.label-wrap').click(); return true; }})()""")
        await asyncio.sleep(1)

        await generate("Sanitized:", "a sanitized generation is shown")
        text = await js(display)
        check("erased tokens" in text and "knife" in text, "sanitized: status and this prompt's tokens")
        struck = await js(f"""(() => {{ const e = gradioApp().querySelector('{ACCORDION}_tokens .es-erased');
            if (!e) return 'none erased';
            return getComputedStyle(e.querySelector('.es-text')).textDecorationLine + '|' +
                   getComputedStyle(e.querySelector('sub')).textDecorationLine; }})()""")
        print("   erased token / its score decoration:", struck)
        await shot("a1111_accordion")

        await js(f"{header_box}.click(); true")                      # toggle off
        await generate("not sanitized", "a generation with the toggle off is shown as such")
        text = await js(display)
        check("knife" not in text and "toggle was off" in text, "toggle off: the earlier tokens are gone")

        set_option(url, "embedding_sanitizer_weights", "test-sdxl.safetensors")
        try:
            await js(f"{header_box}.click(); true")                  # toggle on again
            await generate("sdxl-clip-lg sanitizer", "the mismatch warning reaches the accordion")
            colour = await js(f"getComputedStyle(gradioApp().querySelector('{ACCORDION}_tokens .es-warning')).color")
            rgb = [int(v) for v in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3]]
            check(rgb[0] > 180 and rgb[1] < 140 and rgb[2] < 140, f"the warning is red ({colour})")
            await shot("a1111_accordion_warning")
        finally:
            set_option(url, "embedding_sanitizer_weights", "test-sd1-active.safetensors")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--out-dir", type=Path, default=REPO / "docs")
    a = ap.parse_args()
    cdp.wait_http(a.url + "/sdapi/v1/sd-models", 300)
    problems = []
    for dark in (False, True):
        with cdp.chromium() as port:
            problems += asyncio.run(drive(port, a.url.rstrip("/"), a.out_dir, dark))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
