"""ComfyUI entry point of the Embedding Sanitizer pack.

ComfyUI imports this file as a package (the pack's folder under custom_nodes/)
and reads NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS and WEB_DIRECTORY.
Importing it outside ComfyUI (tests, A1111, plain Python) gives empty
mappings instead of an error.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))


def _import_engine():
    """Import the engine package `embedding_sanitizer` from this folder. The folder is on
    sys.path only while it loads: left there, its `nodes`, `scripts`, ... would shadow
    ComfyUI's own modules of those names."""
    sys.path.insert(0, _PACK_DIR)
    try:
        import embedding_sanitizer  # noqa: F401
    finally:
        sys.path.remove(_PACK_DIR)

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    import folder_paths  # noqa: F401  (only present inside ComfyUI)
except ImportError:
    folder_paths = None

if folder_paths is not None:
    from . import operator_failsafe
    try:
        _import_engine()
        # Relative import: ComfyUI has a top-level module called `nodes` of its own,
        # and ours must never shadow it.
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
    except Exception as exc:
        # ComfyUI logs this and samples on without the pack: with enforcement switched on, nothing may be sampled.
        operator_failsafe.fail_closed_if_switched_on(exc)
        raise

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
