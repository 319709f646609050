"""Draws example_workflows/<name>.jpg, the thumbnail ComfyUI's template browser shows for each
example workflow (without it the browser asks for the file and gets a 404).

    python tools/make_workflow_thumbnails.py

Each thumbnail is the workflow's own graph, drawn from its JSON: node boxes where the workflow
places them, titled as in ComfyUI, links coloured by type, this pack's nodes highlighted, and each
loader's file (the checkpoint, the sanitizer) under its title, so the thumbnail shows what the
workflow loads. Run it again whenever a workflow changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OURS = "EmbeddingSanitizer"
TITLE_BAR = 30
LINK_COLOURS = {"MODEL": "#b39ddb", "CLIP": "#ffd54f", "VAE": "#ef9a9a", "CONDITIONING": "#ffab91",
                "LATENT": "#f48fb1", "IMAGE": "#80cbc4", "SANITIZER": "#4fc3f7"}
DISPLAY = {"EmbeddingSanitizerLoader": "Load Embedding Sanitizer", "EmbeddingSanitizerApply": "Sanitize Conditioning",
           "EmbeddingSanitizerCLIPTextEncode": "CLIP Text Encode (Sanitized)",
           "EmbeddingSanitizerTrain": "Train Embedding Sanitizer"}


def draw(workflow: dict, out: Path) -> None:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    left = min(n["pos"][0] for n in nodes.values()) - 40
    top = min(n["pos"][1] for n in nodes.values()) - TITLE_BAR - 40
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + 40
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values()) + 40
    # The template browser shows thumbnails about 4:3; the graph is centred in that frame.
    width, height = right - left, bottom - top
    if width / height > 4 / 3:
        pad = (width * 3 / 4 - height) / 2
        top, bottom = top - pad, bottom + pad
    else:
        pad = (height * 4 / 3 - width) / 2
        left, right = left - pad, right + pad
    fig = plt.figure(figsize=(4, 3), dpi=128)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.axis("off")
    fig.patch.set_facecolor("#202020")
    for _, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        a, b = nodes[src], nodes[dst]
        x0, y0 = a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 20 * src_slot
        x1, y1 = b["pos"][0], b["pos"][1] + 14 + 20 * dst_slot
        ax.plot([x0, (x0 + x1) / 2, (x0 + x1) / 2, x1], [y0, y0, y1, y1], color=LINK_COLOURS.get(kind, "#9e9e9e"),
                linewidth=1.4, solid_capstyle="round", zorder=1)
    for node in nodes.values():
        x, y = node["pos"]
        w, h = node["size"]
        ours = node["type"].startswith(OURS)
        ax.add_patch(FancyBboxPatch((x, y - TITLE_BAR), w, h + TITLE_BAR, boxstyle="round,pad=0,rounding_size=8",
                                    facecolor="#353535", edgecolor="#4fc3f7" if ours else "#555555",
                                    linewidth=2.0 if ours else 0.8, zorder=2))
        ax.add_patch(FancyBboxPatch((x, y - TITLE_BAR), w, TITLE_BAR, boxstyle="round,pad=0,rounding_size=8",
                                    facecolor="#1f5f7a" if ours else "#2b2b2b", edgecolor="none", zorder=3))
        title = node.get("title") or DISPLAY.get(node["type"], node["type"])
        ax.text(x + 10, y - TITLE_BAR / 2, title, color="#eeeeee", fontsize=4.2, va="center", zorder=4,
                clip_on=True)
        if "Loader" in node["type"] and node.get("widgets_values"):
            loaded = ax.text(x + 10, y + 16, str(node["widgets_values"][0]), color="#bdbdbd", fontsize=3.6,
                             va="center", zorder=4, clip_on=True)
            room = ax.transData.transform((x + w - 10, 0))[0] - ax.transData.transform((x + 10, 0))[0]
            drawn = loaded.get_window_extent(fig.canvas.get_renderer()).width
            if drawn > room:         # smaller, so that the whole file name fits in the box
                loaded.set_fontsize(3.6 * 0.85 * room / drawn)
    fig.savefig(out, format="jpg", facecolor=fig.get_facecolor(), pil_kwargs={"quality": 88})
    plt.close(fig)


def main() -> None:
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        out = path.with_suffix(".jpg")
        draw(json.loads(path.read_text()), out)
        print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
