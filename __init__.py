"""ComfyUI entry point of the Embedding Sanitizer pack.

ComfyUI imports this file as a package (the pack's folder under custom_nodes/)
and reads NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS and WEB_DIRECTORY.
Importing it outside ComfyUI (tests, A1111, plain Python) gives empty
mappings instead of an error.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    # The engine is the top-level package `sanitizer` inside this folder.
    sys.path.append(_PACK_DIR)

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    import folder_paths  # noqa: F401  (only present inside ComfyUI)
except ImportError:
    folder_paths = None

if folder_paths is not None:
    # Relative import: ComfyUI has a top-level module called `nodes` of its own,
    # and ours must never shadow it.
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
