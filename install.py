"""Installs what this extension needs and the host lacks. Shared by both hosts:

- AUTOMATIC1111 / Forge run it at startup (Extensions tab install and every launch);
  `import launch` works there, so the webui's own helpers install into the webui's venv.
- ComfyUI-Manager runs it after installing requirements.txt: nothing is left to do, so
  it only reports what is missing (it never touches torch, which every host brings).
"""

import importlib.util
import os
import sys

# (import name, pip requirement); torch is deliberately absent: hosts ship their own.
REQUIREMENTS = [("safetensors", "safetensors"), ("numpy", "numpy"),
                ("transformers", "transformers"), ("tqdm", "tqdm")]


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
        return 0
    todo = missing(lambda name: importlib.util.find_spec(name) is not None)
    if todo:
        print(f"Embedding Sanitizer: missing {', '.join(todo)}; install requirements.txt "
              f"({os.path.join(os.path.dirname(os.path.abspath(__file__)), 'requirements.txt')})",
              file=sys.stderr)
    return 0


if __name__ == "__main__" or "launch" in sys.modules:
    main()
